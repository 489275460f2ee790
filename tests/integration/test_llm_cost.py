"""The LLM step's contract: structured output with its auto-downgrade, fallback
models, usage summed per message, campaign budgets; against the fake OpenRouter on 127.0.0.1
and a real Postgres."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from listener.commands.stats import collect_stats, render
from listener.errors import HoldBackError
from listener.jobs import StoreParts
from listener.providers.base import Usage
from listener.providers.llm import STRUCTURED_MEMORY_SECONDS, OpenRouterLLM
from listener.queue.store import Store
from listener.settings import Settings, load_settings
from listener.testing import FakeProviders, Reply, http_settings, serve_fakes
from tests.daemon_harness import fast_settings, running
from tests.helpers import await_until, enqueue, make_campaign, make_leads, statuses

Conn = psycopg.Connection[Any]

COST = 0.0001  # the fake's default usage.cost per call
PARAMETERS_404 = {
    "error": {
        "code": 404,
        "message": "No endpoints found that can handle the requested parameters.",
    }
}
PARAMETERS_400 = {
    "error": {"code": 400, "message": "response_format json_schema is not supported by this model"}
}


def completion(
    text: str, *, model: str = "openai/gpt-4o-mini", cost: float = COST, error: bool = False
) -> dict[str, Any]:
    """An OpenRouter chat completion body, with usage (an `error` choice when asked)."""
    choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
    if error:
        choice = {"error": {"code": 502, "message": "upstream failed"}, "finish_reason": "error"}
    return {
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "cost": cost},
    }


def llm_settings(fakes: FakeProviders, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **http_settings(fakes),
        "quick_retries": 0,
        "quick_retry_base": "1ms",
        "quick_retry_max": "5ms",
    }
    values.update(overrides)
    return load_settings(**values)


async def ask(llm: OpenRouterLLM, model: str = "openai/gpt-4o-mini", **kwargs: Any) -> Any:
    user = json.dumps({"lead": {"name": "Ana"}})
    return await llm.generate(model=model, system="be brief", user=user, **kwargs)


def message_rows(db: Conn) -> list[dict[str, Any]]:
    cur = db.cursor(row_factory=dict_row)
    return cur.execute(
        "SELECT status, attempts, wait_reason, model, model_fallback, prompt_tokens,"
        " completion_tokens, cost_usd::float8 AS cost_usd, content FROM campaign_messages"
    ).fetchall()


def spent(db: Conn, campaign: Any) -> float:
    row = db.execute(
        "SELECT spent_usd::float8 FROM campaigns WHERE id = %s", (campaign,)
    ).fetchone()
    assert row is not None
    return float(row[0])


# ------------------------------------------------------------------------------------------
# The request and the reply
# ------------------------------------------------------------------------------------------


async def test_the_request_asks_for_structured_parts_fallbacks_and_usage() -> None:
    async with serve_fakes() as fakes:
        fakes.answer_model = "anthropic/claude-3.5-haiku"
        llm = OpenRouterLLM(llm_settings(fakes, max_parts=3, fallback_models="ignored/here"))
        seen: list[Usage] = []
        try:
            reply = await ask(
                llm,
                fallbacks=("anthropic/claude-3.5-haiku", "openai/gpt-4o-mini", "meta/llama"),
                on_usage=seen.append,
            )
        finally:
            await llm.aclose()
    body = fakes.llm_requests[0]["body"]
    assert body["model"] == "openai/gpt-4o-mini"
    # The primary first, then the fallbacks in order (the primary not twice).
    assert body["models"] == ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "meta/llama"]
    assert body["usage"] == {"include": True}
    assert body["provider"] == {"require_parameters": True}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "whatsapp_messages",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    "messages": {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": 1,
                        "maxItems": 3,
                    }
                },
                "required": ["messages"],
                "additionalProperties": False,
            },
        },
    }
    assert reply.structured is True
    assert reply.model == "anthropic/claude-3.5-haiku"
    assert json.loads(reply.text) == {"messages": ["Olá Ana, parte 1."]}
    assert seen == [Usage(120, 30, COST, 1, "anthropic/claude-3.5-haiku")]


async def test_without_fallbacks_there_is_no_models_array_and_off_sends_no_schema() -> None:
    async with serve_fakes() as fakes:
        llm = OpenRouterLLM(llm_settings(fakes, structured_output="off"))
        try:
            reply = await ask(llm)
        finally:
            await llm.aclose()
    body = fakes.llm_requests[0]["body"]
    assert "models" not in body
    assert "response_format" not in body and "provider" not in body
    assert body["usage"] == {"include": True}
    assert reply.structured is False


@pytest.mark.parametrize("refusal", [(404, PARAMETERS_404), (400, PARAMETERS_400)])
async def test_a_model_refusing_the_parameters_is_asked_without_them_for_an_hour(
    refusal: tuple[int, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    status, body = refusal
    clock = [1000.0]
    async with serve_fakes() as fakes:
        fakes.llm_script.append(Reply(status=status, body=body))
        llm = OpenRouterLLM(llm_settings(fakes), clock=lambda: clock[0])
        try:
            with caplog.at_level(logging.WARNING, logger="listener.providers.llm"):
                first = await ask(llm)
            # Asked at once without response_format; the split parser takes the reply.
            assert first.structured is False
            asked = [r["body"] for r in fakes.llm_requests]
            assert [("response_format" in b, "provider" in b) for b in asked] == [
                (True, True),
                (False, False),
            ]
            assert [r.message for r in caplog.records if "structured" in r.message]
            # Remembered for that model only.
            second = await ask(llm)
            other = await ask(llm, model="anthropic/claude-3.5-haiku")
            assert second.structured is False and other.structured is True
            assert "response_format" not in fakes.llm_requests[2]["body"]
            assert "response_format" in fakes.llm_requests[3]["body"]
            # Until the hour is over.
            clock[0] += STRUCTURED_MEMORY_SECONDS - 1
            assert (await ask(llm)).structured is False
            clock[0] += 1
            assert (await ask(llm)).structured is True
            assert "response_format" in fakes.llm_requests[-1]["body"]
        finally:
            await llm.aclose()


async def test_with_structured_output_on_a_refusal_holds_back_instead() -> None:
    async with serve_fakes() as fakes:
        fakes.llm_script.append(Reply(status=404, body=PARAMETERS_404))
        llm = OpenRouterLLM(llm_settings(fakes, structured_output="on"))
        try:
            with pytest.raises(HoldBackError):
                await ask(llm)
        finally:
            await llm.aclose()
    assert len(fakes.llm_requests) == 1


async def test_a_400_about_something_else_is_not_a_downgrade() -> None:
    async with serve_fakes() as fakes:
        bad = {"error": {"code": 400, "message": "Invalid API key format"}}
        fakes.llm_script.append(Reply(status=400, body=bad))
        llm = OpenRouterLLM(llm_settings(fakes))
        try:
            with pytest.raises(HoldBackError):
                await ask(llm)
            assert llm.structured("openai/gpt-4o-mini") is True
        finally:
            await llm.aclose()
    assert len(fakes.llm_requests) == 1


# ------------------------------------------------------------------------------------------
# Through the pipeline: what is stored per message
# ------------------------------------------------------------------------------------------


async def test_a_reply_claiming_json_that_does_not_parse_is_asked_again_never_sent(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    broken = '{"messages": ["Oi Ana, tudo'
    async with serve_fakes() as fakes:
        # quick_retries=1: asked twice, both cut short -> failed, nothing sent.
        fakes.llm_script.extend(Reply(body=completion(broken)) for _ in range(2))
        async with running(db_url, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("failed") == 1)
    assert fakes.accepted() == []
    assert len(fakes.llm_requests) == 2
    (row,) = message_rows(db)
    assert row["cost_usd"] == pytest.approx(2 * COST)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (240, 60)
    last_error = db.execute("SELECT last_error FROM campaign_messages").fetchone()
    assert last_error is not None and "does not parse" in last_error[0]
    assert spent(db, campaign) == pytest.approx(2 * COST)


async def test_an_unparsable_reply_then_a_good_one_sends_the_good_one_and_bills_both(
    db_url: str, db: Conn
) -> None:
    campaign = make_campaign(db, fallback_models=["anthropic/claude-3.5-haiku"])
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        fakes.llm_script.append(Reply(body=completion('```json\n{"messages": ["Oi')))
        fakes.llm_script.append(
            Reply(
                body=completion(
                    '{"messages": ["Oi Ana!", "Tudo bem?"]}', model="anthropic/claude-3.5-haiku"
                )
            )
        )
        async with running(db_url, **http_settings(fakes)) as daemon:
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 1)
            metrics = daemon.metrics
    assert [s["text"] for s in fakes.accepted()] == ["Oi Ana!", "Tudo bem?"]
    (row,) = message_rows(db)
    assert row["model"] == "anthropic/claude-3.5-haiku" and row["model_fallback"] is True
    assert row["cost_usd"] == pytest.approx(2 * COST)
    assert fakes.llm_requests[0]["body"]["models"] == [
        "openai/gpt-4o-mini",
        "anthropic/claude-3.5-haiku",
    ]
    # /metrics: cost and tokens by the model that answered.
    sample = metrics.registry.get_sample_value
    assert sample(
        "listener_llm_cost_usd_total", {"model": "anthropic/claude-3.5-haiku"}
    ) == pytest.approx(COST)
    assert sample("listener_llm_cost_usd_total", {"model": "openai/gpt-4o-mini"}) == pytest.approx(
        COST
    )
    assert sample(
        "listener_llm_tokens_total", {"model": "anthropic/claude-3.5-haiku", "kind": "prompt"}
    ) == pytest.approx(120)
    assert sample(
        "listener_llm_calls_total", {"model": "anthropic/claude-3.5-haiku", "fallback": "true"}
    ) == pytest.approx(1)


async def test_cost_is_summed_across_a_retry(db_url: str, db: Conn) -> None:
    campaign = make_campaign(db)
    leads = make_leads(db, 1)
    async with serve_fakes() as fakes:
        # Attempt 1: a billed 200 that failed inside (choices[0].error) -> the retry ladder.
        # Attempt 2: a good answer.
        fakes.llm_script.append(Reply(body=completion("", error=True, cost=0.0003)))
        fakes.llm_script.append(Reply(body=completion('{"messages": ["Oi Ana!"]}')))
        async with running(db_url, quick_retries=0, **http_settings(fakes)):
            enqueue(db, campaign, leads)
            await await_until(lambda: statuses(db).get("sent") == 1)
    (row,) = message_rows(db)
    assert row["attempts"] == 2
    assert row["cost_usd"] == pytest.approx(0.0003 + COST)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (240, 60)
    assert row["model"] == "openai/gpt-4o-mini" and row["model_fallback"] is False
    assert spent(db, campaign) == pytest.approx(0.0003 + COST)
    figures = await collect_stats(db_url, timedelta(hours=1))
    (spend,) = figures.spend
    assert spend.cost_usd == pytest.approx(0.0003 + COST)
    assert (spend.written, spend.sent, spend.fallback_answers) == (1, 1, 0)
    assert spend.per_sent == pytest.approx(0.0003 + COST)
    assert [(m.model, m.messages) for m in figures.models] == [("openai/gpt-4o-mini", 1)]
    text = render(figures)
    assert "LLM spend per campaign" in text and "$0.000400" in text


async def test_parts_stored_again_after_a_lost_answer_add_their_usage_once(
    db_url: str, db: Conn
) -> None:
    """A guarded write whose answer was lost runs again (queue/store.py); the second store of the
    same parts must not bill the message or the campaign twice."""
    campaign = make_campaign(db)
    enqueue(db, campaign, make_leads(db, 1))
    settings = fast_settings(worker_id="listener-a")
    async with AsyncConnectionPool(db_url, open=False, kwargs={"autocommit": True}) as pool:
        await pool.open()
        store = Store(pool, settings)
        (job,) = (await store.claim(1)).jobs
        item = StoreParts(job.id, "Oi", ["Oi"], Usage(100, 20, 0.002, 2, "a/model", False))
        for _ in range(2):
            assert await store.writes.store([item]) == {job.id}
    (row,) = message_rows(db)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (100, 20)
    assert row["cost_usd"] == pytest.approx(0.002)
    assert spent(db, campaign) == pytest.approx(0.002)


# ------------------------------------------------------------------------------------------
# Budgets
# ------------------------------------------------------------------------------------------


async def test_a_budget_reached_mid_campaign_holds_the_rest_and_raising_it_releases_them(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    campaign = make_campaign(db, budget_usd=3 * COST)
    leads = make_leads(db, 12)
    async with serve_fakes() as fakes:
        with caplog.at_level(logging.INFO):
            async with running(
                db_url, concurrency=1, claim_batch=1, **http_settings(fakes)
            ) as daemon:
                enqueue(db, campaign, leads[:10])
                await await_until(
                    lambda: (
                        statuses(db).get("sent", 0)
                        + sum(r["wait_reason"] == "budget" for r in message_rows(db))
                        == 10
                    )
                )
                held = [r for r in message_rows(db) if r["wait_reason"] == "budget"]
                sent = statuses(db).get("sent", 0)
                # Spend reached the budget; what went past it is bounded by the messages
                # in flight (one listener: at most twice its concurrency held).
                high_water = 2 * daemon.settings.concurrency
                assert 3 <= sent <= 3 + high_water
                assert spent(db, campaign) == pytest.approx(sent * COST)
                assert len(held) == 10 - sent
                # Waiting for the budget spends no attempt and calls nothing.
                assert all(r["attempts"] == 0 and r["cost_usd"] == 0 for r in held)
                assert len(fakes.llm_requests) == sent
                # Messages with content still go.
                enqueue(db, campaign, leads[10:], content="Oi, tudo bem?")
                await await_until(lambda: statuses(db).get("sent", 0) == sent + 2)
                # Raising the budget wakes the rest (the trigger's NOTIFY; their own
                # recheck is an hour away).
                db.execute("UPDATE campaigns SET budget_usd = 1 WHERE id = %s", (campaign,))
                await await_until(lambda: statuses(db).get("sent", 0) == 12)
    assert spent(db, campaign) == pytest.approx(10 * COST)
    # Logged once for the campaign, not once per message held.
    reached = [r for r in caplog.records if getattr(r, "action", "") == "campaign_budget_reached"]
    assert len(reached) == 1
    assert not [r for r in caplog.records if getattr(r, "reason", "") == "budget"]


async def test_two_listeners_overspend_by_no_more_than_the_messages_in_flight(
    db_url: str, db: Conn
) -> None:
    budget = 5 * COST
    campaign = make_campaign(db, budget_usd=budget)
    leads = make_leads(db, 40)
    async with serve_fakes() as fakes:
        fakes.llm_delay = 0.01
        settings = {**http_settings(fakes), "concurrency": 2}
        async with (
            running(db_url, worker_id="listener-a", **settings) as first,
            running(db_url, worker_id="listener-b", **settings),
        ):
            enqueue(db, campaign, leads)
            await await_until(
                lambda: all(
                    r["status"] == "sent" or r["wait_reason"] == "budget" for r in message_rows(db)
                ),
                timeout=60,
            )
            in_flight = 2 * (2 * first.settings.concurrency)
    rows = message_rows(db)
    sent = sum(r["status"] == "sent" for r in rows)
    total = spent(db, campaign)
    assert total == pytest.approx(sent * COST)
    assert budget <= total + 1e-12
    assert total <= budget + in_flight * COST + 1e-12
    assert sum(r["wait_reason"] == "budget" for r in rows) == 40 - sent
    assert len(fakes.llm_requests) == sent

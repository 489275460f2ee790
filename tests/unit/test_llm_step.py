"""Pure parts of the LLM step: what counts as broken JSON, which model is a
fallback, the budget's wait, usage sums and the settings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from listener.errors import ConfigurationError
from listener.flow import MustWait
from listener.jobs import Job
from listener.providers.base import Usage
from listener.queue.outcomes import BUDGET_RECHECK, budget_wait, outcome
from listener.queue.writing import is_fallback, json_problem
from listener.settings import load_settings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def job(budget: float | None, spent: float) -> Job:
    return Job.of(
        id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        lead_id=uuid.uuid4(),
        attempts=1,
        content=None,
        parts=None,
        parts_sent=0,
        scheduled_at=NOW,
        campaign_prompt=None,
        campaign_model=None,
        campaign_instance=None,
        campaign_status="active",
        campaign_budget=budget,
        campaign_spent=spent,
    )


@pytest.mark.parametrize(
    "text",
    [
        '{"messages": ["Oi Ana, tudo',
        '```json\n{"messages": ["Oi"',
        'Aqui está:\n```json\n{"messages": [1, 2]}\n```',
        '{"text": "Oi Ana"}',
        "[1, 2",
    ],
)
def test_text_claiming_json_that_is_not_a_list_of_messages_is_refused(text: str) -> None:
    assert json_problem(text, required=False) is not None


@pytest.mark.parametrize(
    "text",
    [
        '{"messages": ["Oi Ana", "Tudo bem?"]}',
        '["Oi Ana", "Tudo bem?"]',
        'Aqui:\n```json\n{"messages": ["Oi"]}\n```',
        "Oi Ana!\n\nTudo bem?",
        "Oi Ana ||| tudo bem",
    ],
)
def test_plain_text_and_good_json_pass(text: str) -> None:
    assert json_problem(text, required=False) is None


def test_structured_replies_must_be_the_messages_object() -> None:
    assert json_problem('{"messages": ["Oi"]}', required=True) is None
    assert json_problem("Oi Ana!", required=True) is not None
    assert json_problem('["Oi"]', required=True) is not None


def test_which_model_is_a_fallback() -> None:
    fallbacks = ("anthropic/claude-3.5-haiku", "meta/llama-3.1-8b")
    assert not is_fallback("openai/gpt-4o-mini", "openai/gpt-4o-mini", fallbacks)
    assert not is_fallback("openai/gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini", fallbacks)
    assert is_fallback("anthropic/claude-3.5-haiku", "openai/gpt-4o-mini", fallbacks)
    assert is_fallback("meta/llama-3.1-8b-instruct", "openai/gpt-4o-mini", fallbacks)
    assert not is_fallback("openai/gpt-4o-mini", "openai/gpt-4o-mini:free", fallbacks)


def test_a_spent_budget_defers_without_spending_an_attempt() -> None:
    settings = load_settings(llm="sandbox", sender="sandbox")
    assert budget_wait(job(None, 5.0), NOW) is None
    assert budget_wait(job(1.0, 0.99), NOW) is None
    wait = budget_wait(job(1.0, 1.0), NOW)
    assert wait is not None and wait.reason == "budget" and wait.until == NOW + BUDGET_RECHECK
    result = outcome(MustWait(wait), job(1.0, 1.0), settings, NOW)
    assert result.name == "deferred"
    assert (result.finish.status, result.finish.refund, result.finish.wait_reason) == (
        "pending",
        1,
        "budget",
    )
    assert result.finish.scheduled_at == NOW + timedelta(hours=1)


def test_usage_adds_up_and_keeps_the_last_model_that_answered() -> None:
    first = Usage(100, 20, 0.001, 1, "a/model", False)
    second = Usage(0, 0, 0.0, 1, None, None)  # a billed call whose answer named no model
    third = Usage(50, 10, 0.0005, 1, "b/model", True)
    total = first + second + third
    assert (total.prompt_tokens, total.completion_tokens, total.calls) == (150, 30, 3)
    assert total.cost_usd == pytest.approx(0.0015)
    assert (total.model, total.fallback) == ("b/model", True)
    assert (first + second).model == "a/model"


def test_fallback_models_and_structured_output_settings() -> None:
    settings = load_settings(
        llm="sandbox",
        sender="sandbox",
        fallback_models=" anthropic/claude-3.5-haiku, ,meta/llama ",
        structured_output="OFF",
    )
    assert settings.fallback_models == ("anthropic/claude-3.5-haiku", "meta/llama")
    assert settings.structured_output == "off"
    assert load_settings(llm="sandbox", sender="sandbox").structured_output == "auto"
    with pytest.raises(ConfigurationError, match=r"structured_output|STRUCTURED_OUTPUT"):
        load_settings(llm="sandbox", sender="sandbox", structured_output="maybe")

"""The HTTP providers against a real HTTP server on 127.0.0.1 (aiohttp), nothing patched.

The fake server (listener/testing) plays OpenRouter and Evolution: each test scripts its replies
and then checks what the provider raised or returned and what the server saw (paths, headers,
bodies, counts).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from listener.errors import (
    EmptyReplyError,
    HoldBackError,
    InstanceClosedError,
    InstanceMissingError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
    UncertainDeliveryError,
)
from listener.phones import mask_phone
from listener.providers._http import parse_retry_after, redact
from listener.providers.base import SentPart
from listener.providers.llm import OpenRouterLLM
from listener.providers.sender import EvolutionSender
from listener.settings import Settings, load_settings
from listener.testing import FakeProviders, Reply, completion, serve_fakes
from listener.text import clean_text

LLM_KEY = "k-secret"
EVO_KEY = "evo-secret"
NUMBER = "5511987654321"


def make_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "llm": "openrouter",
        "sender": "evolution",
        "openrouter_api_key": LLM_KEY,
        "openrouter_base_url": url,
        "evolution_api_url": url,
        "evolution_api_key": EVO_KEY,
        "evolution_instance": "inst",
        "quick_retries": 2,
        "quick_retry_base": "1ms",
        "quick_retry_max": "5ms",
    }
    values.update(overrides)
    return load_settings(**values)


def assert_no_secret(error: BaseException) -> None:
    for text in (str(error), repr(error), *map(str, error.args)):
        assert LLM_KEY not in text
        assert EVO_KEY not in text


@pytest.fixture
async def server() -> AsyncIterator[FakeProviders]:
    """The fake providers answering every request with a completion until a test scripts
    otherwise; a handler whose client hung up is cancelled (read timeouts, trickles)."""
    async with serve_fakes(cancel_on_hangup=True) as fake:
        fake.script(Reply(body=completion("hello")))
        yield fake


@pytest.fixture
async def llm(server: FakeProviders) -> AsyncIterator[OpenRouterLLM]:
    client = OpenRouterLLM(make_settings(server.url))
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def sender(server: FakeProviders) -> AsyncIterator[EvolutionSender]:
    client = EvolutionSender(make_settings(server.url))
    try:
        yield client
    finally:
        await client.aclose()


async def generate(llm: OpenRouterLLM) -> str:
    reply = await llm.generate(model="openai/gpt-4o-mini", system="be brief", user="hi")
    return reply.text


async def send(sender: EvolutionSender, instance: str = "inst") -> SentPart:
    return await sender.send_text(instance=instance, number=NUMBER, text="olá")


# --- OpenRouter ----------------------------------------------------------------------------


async def test_llm_sends_the_documented_request_and_returns_the_text(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(body=completion("Oi, tudo bem?")))

    assert await generate(llm) == "Oi, tudo bem?"

    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", "/chat/completions")
    assert seen.headers["Authorization"] == f"Bearer {LLM_KEY}"
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.body["model"] == "openai/gpt-4o-mini"
    assert seen.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


async def test_llm_base_url_with_a_path_is_kept(server: FakeProviders) -> None:
    client = OpenRouterLLM(make_settings(server.url + "/api/v1/"))
    try:
        assert await generate(client) == "hello"
    finally:
        await client.aclose()
    assert server.seen[0].path == "/api/v1/chat/completions"


async def test_llm_429_is_rate_limited_with_retry_after_and_not_retried(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(
        Reply(429, {"error": {"code": 429, "message": "slow down"}}, headers={"Retry-After": "7"})
    )

    with pytest.raises(RateLimitedError) as caught:
        await generate(llm)

    assert caught.value.retry_after == 7
    assert caught.value.status == 429
    assert "429" in str(caught.value) and "slow down" in str(caught.value)
    assert len(server.seen) == 1
    assert_no_secret(caught.value)


async def test_llm_429_retry_after_as_http_date(server: FakeProviders, llm: OpenRouterLLM) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    server.script(Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": when}))

    with pytest.raises(RateLimitedError) as caught:
        await generate(llm)

    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


async def test_llm_429_without_retry_after(server: FakeProviders, llm: OpenRouterLLM) -> None:
    server.script(Reply(429, {"error": {"message": "slow down"}}))

    with pytest.raises(RateLimitedError) as caught:
        await generate(llm)

    assert caught.value.retry_after is None


async def test_llm_503_then_200_succeeds_after_a_quick_retry(
    server: FakeProviders, llm: OpenRouterLLM, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(Reply(503, {"error": {"message": "overloaded"}}), Reply(body=completion("ok")))

    with caplog.at_level(logging.WARNING, logger="listener.providers._http"):
        assert await generate(llm) == "ok"

    assert len(server.seen) == 2
    [record] = [r for r in caplog.records if getattr(r, "action", None) == "provider_quick_retry"]
    assert record.__dict__["provider"] == "openrouter"
    assert record.__dict__["status"] == 503
    assert LLM_KEY not in caplog.text


async def test_llm_503_forever_is_transient_after_all_quick_retries(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(503, {"error": {"message": "overloaded"}}))

    with pytest.raises(TransientProviderError) as caught:
        await generate(llm)

    assert len(server.seen) == 1 + 2
    assert caught.value.status == 503
    assert "503" in str(caught.value) and "overloaded" in str(caught.value)


async def test_llm_without_quick_retries_calls_once(server: FakeProviders) -> None:
    server.script(Reply(502, text="bad gateway"))
    client = OpenRouterLLM(make_settings(server.url, quick_retries=0))
    try:
        with pytest.raises(TransientProviderError):
            await generate(client)
    finally:
        await client.aclose()
    assert len(server.seen) == 1


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
async def test_llm_408_and_5xx_are_transient(
    server: FakeProviders, llm: OpenRouterLLM, status: int
) -> None:
    server.script(Reply(status, text="nope"))

    with pytest.raises(TransientProviderError) as caught:
        await generate(llm)

    assert caught.value.status == status
    assert len(server.seen) == 3


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"choices": [{"error": {"code": 502, "message": "upstream died"}, "message": {}}]},
            id="choice-error",
        ),
        pytest.param(completion("partial", finish_reason="error"), id="finish-reason-error"),
        pytest.param(completion(""), id="empty-content"),
        pytest.param(completion("  \n "), id="blank-content"),
        pytest.param(completion(None), id="null-content"),
        pytest.param({"choices": []}, id="no-choices"),
        pytest.param({"id": "x"}, id="missing-choices"),
        pytest.param({"error": {"message": "boom", "code": 500}}, id="error-object"),
    ],
)
async def test_llm_failures_inside_a_200_are_transient_and_retried(
    server: FakeProviders, llm: OpenRouterLLM, body: Any
) -> None:
    server.script(Reply(200, body), Reply(200, completion("second time lucky")))

    assert await generate(llm) == "second time lucky"
    assert len(server.seen) == 2


async def test_llm_failure_inside_a_200_forever_is_transient(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(200, {"choices": [{"error": {"message": "upstream died"}}]}))

    with pytest.raises(TransientProviderError) as caught:
        await generate(llm)

    assert "upstream died" in str(caught.value)
    assert len(server.seen) == 3


async def test_llm_invalid_json_in_a_200_is_transient(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(200, text="<html>gateway</html>"))

    with pytest.raises(TransientProviderError):
        await generate(llm)

    assert len(server.seen) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_llm_client_errors_hold_back_without_retry(
    server: FakeProviders, llm: OpenRouterLLM, status: int
) -> None:
    server.script(Reply(status, {"error": {"code": status, "message": "no " * 400}}))

    with pytest.raises(HoldBackError) as caught:
        await generate(llm)

    assert caught.value.status == status
    assert str(status) in str(caught.value)
    assert len(str(caught.value)) < 400
    assert len(server.seen) == 1
    assert_no_secret(caught.value)


async def test_llm_402_in_flight_budget_is_rate_limited(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(
        Reply(
            402,
            {
                "error": {
                    "code": 402,
                    "message": "Payment required",
                    "metadata": {"reason": "in-flight budget exhausted"},
                }
            },
            headers={"Retry-After": "3"},
        )
    )

    with pytest.raises(RateLimitedError) as caught:
        await generate(llm)

    assert caught.value.retry_after == 3
    assert caught.value.status == 402
    assert len(server.seen) == 1


async def test_llm_402_budget_metadata_without_retry_after_is_rate_limited(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(402, {"error": {"message": "wait", "metadata": {"in_flight_limit": 10}}}))

    with pytest.raises(RateLimitedError) as caught:
        await generate(llm)

    assert caught.value.retry_after is None


async def test_llm_plain_402_holds_back(server: FakeProviders, llm: OpenRouterLLM) -> None:
    server.script(Reply(402, {"error": {"code": 402, "message": "Insufficient credits"}}))

    with pytest.raises(HoldBackError) as caught:
        await generate(llm)

    assert "Insufficient credits" in str(caught.value)
    assert len(server.seen) == 1


async def test_llm_402_out_of_credits_holds_back_even_with_retry_after(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    # Only error.metadata makes a 402 a budget wait; a Retry-After alone does not.
    server.script(
        Reply(
            402,
            {"error": {"code": 402, "message": "Insufficient credits"}},
            headers={"Retry-After": "60"},
        )
    )

    with pytest.raises(HoldBackError):
        await generate(llm)


async def test_llm_read_timeout_is_transient(server: FakeProviders) -> None:
    # The timeout (which bounds the request's write too) is far from both the answer's delay
    # and a loaded machine's scheduling: at 50 ms a third request was once cut off before the
    # fake server had read it, and the count below saw 2.
    server.script(Reply(body=completion("too late"), delay=5))
    client = OpenRouterLLM(make_settings(server.url, llm_timeout="500ms"))
    try:
        with pytest.raises(TransientProviderError) as caught:
            await asyncio.wait_for(generate(client), timeout=30)
    finally:
        await client.aclose()
    assert "timed out" in str(caught.value)
    for _ in range(100):  # the server notes a request as it reads it, on its own task
        if len(server.seen) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(server.seen) == 3


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_llm_connection_refused_is_transient() -> None:
    client = OpenRouterLLM(make_settings(closed_port_url()))
    try:
        with pytest.raises(TransientProviderError) as caught:
            await generate(client)
    finally:
        await client.aclose()
    assert caught.value.status is None
    assert_no_secret(caught.value)


async def test_llm_key_echoed_by_the_provider_is_redacted(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(401, {"error": {"message": f"key {LLM_KEY} is not valid"}}))

    with pytest.raises(HoldBackError) as caught:
        await generate(llm)

    assert_no_secret(caught.value)
    assert "not valid" in str(caught.value)


async def test_llm_key_cut_by_truncation_leaves_no_fragment(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    # The key straddles the truncation point of the error text.
    server.script(Reply(403, {"error": {"message": "x" * 290 + LLM_KEY + "y" * 50}}))

    with pytest.raises(HoldBackError) as caught:
        await generate(llm)

    assert "k-sec" not in str(caught.value)


async def test_scrubbing_never_changes_how_a_reply_is_read(server: FakeProviders) -> None:
    # A one-letter key occurs everywhere in a body; the reply must still parse, whole.
    server.script(Reply(body=completion("here we are")))
    client = OpenRouterLLM(make_settings(server.url, openrouter_api_key="e"))
    try:
        assert await generate(client) == "here we are"
    finally:
        await client.aclose()


# --- Evolution -----------------------------------------------------------------------------


async def test_sender_sends_the_documented_request_and_stores_key_id(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(201, {"key": {"id": "3EB0ABC", "fromMe": True}, "status": "PENDING"}))

    assert await send(sender) == SentPart(provider_message_id="3EB0ABC")

    [seen] = server.seen
    assert (seen.method, seen.path) == ("POST", "/message/sendText/inst")
    assert seen.headers["apikey"] == EVO_KEY
    assert "Authorization" not in seen.headers
    assert seen.body == {"number": NUMBER, "text": "olá"}


async def test_sender_200_with_key_id_succeeds(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(200, {"key": {"id": "ID-200"}}))

    assert (await send(sender)).provider_message_id == "ID-200"


async def test_sender_adds_delay_and_quotes_the_instance(server: FakeProviders) -> None:
    server.script(Reply(201, {"key": {"id": "x"}}))
    client = EvolutionSender(make_settings(server.url, evolution_delay_ms=1200))
    try:
        await send(client, instance="my inst/1")
    finally:
        await client.aclose()

    [seen] = server.seen
    assert seen.raw_path == "/message/sendText/my%20inst%2F1"
    assert seen.body == {"number": NUMBER, "text": "olá", "delay": 1200}


async def test_sender_2xx_without_key_id_is_accepted_and_not_sent_again(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(200, {"status": "ok"}))

    sent = await send(sender)

    assert sent.provider_message_id == ""
    assert len(server.seen) == 1


async def test_sender_number_not_on_whatsapp_is_permanent_without_retry(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(
        Reply(
            400,
            {
                "status": 400,
                "error": "Bad Request",
                "response": {
                    "message": [
                        {"exists": False, "jid": f"{NUMBER}@s.whatsapp.net", "number": NUMBER}
                    ]
                },
            },
        )
    )

    with pytest.raises(PermanentProviderError) as caught:
        await send(sender)

    assert str(caught.value) == "number is not on WhatsApp"
    assert caught.value.status == 400
    assert len(server.seen) == 1


async def test_sender_other_400_fails_the_attempt_with_the_message_and_masked_number(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    # Only `exists: false` is permanent; another 400 fails this attempt (the retry ladder),
    # neither failing the message at once nor holding back the whole listener.
    server.script(
        Reply(
            400,
            {
                "status": 400,
                "error": "Bad Request",
                "response": {"message": [f"text is required for {NUMBER}"]},
            },
        )
    )

    with pytest.raises(ProviderError) as caught:
        await send(sender)

    assert type(caught.value) is ProviderError
    text = str(caught.value)
    assert "400" in text and "text is required" in text
    assert NUMBER not in text and mask_phone(NUMBER) in text
    assert len(server.seen) == 1


async def test_sender_missing_instance_is_that_instances_problem(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(404, {"status": 404, "error": "nope", "response": {}}))

    with pytest.raises(InstanceMissingError) as caught:
        await send(sender)

    assert "instance not found" in str(caught.value)
    assert len(server.seen) == 1
    assert_no_secret(caught.value)


@pytest.mark.parametrize(("status", "words"), [(401, "credentials"), (403, "credentials")])
async def test_sender_auth_refused_holds_back(
    server: FakeProviders, sender: EvolutionSender, status: int, words: str
) -> None:
    server.script(Reply(status, {"status": status, "error": "nope", "response": {}}))

    with pytest.raises(HoldBackError) as caught:
        await send(sender)

    assert words in str(caught.value)
    assert len(server.seen) == 1
    assert_no_secret(caught.value)


async def test_sender_429_is_rate_limited_without_retry(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(429, {"error": "Too Many Requests"}, headers={"Retry-After": "7"}))

    with pytest.raises(RateLimitedError) as caught:
        await send(sender)

    assert caught.value.retry_after == 7
    assert len(server.seen) == 1


async def test_sender_500_then_201_succeeds_after_a_quick_retry(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(500, {"error": "Internal Server Error"}), Reply(201, {"key": {"id": "k2"}}))

    assert (await send(sender)).provider_message_id == "k2"
    assert len(server.seen) == 2


@pytest.mark.parametrize("status", [400, 500])
async def test_sender_connection_closed_is_the_instance_not_the_message(
    server: FakeProviders, sender: EvolutionSender, status: int
) -> None:
    # Evolution 2.3.7 answers 500 (older versions 400) for an instance that is not connected:
    # held at once, no quick retry (docs/design.md, "Providers on the wire").
    body = {"status": status, "error": "Internal Server Error"}
    server.script(Reply(status, {**body, "response": {"message": "Connection Closed"}}))

    with pytest.raises(InstanceClosedError):
        await send(sender)

    assert len(server.seen) == 1


async def test_sender_other_type_errors_are_not_read_as_an_instance_not_ready(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    # Only the properties Evolution reads off a missing client or instance mean "not ready"
    # (what a real Evolution showed); any other TypeError is a 500 like another, retried.
    message = "Cannot read properties of undefined (reading 'conversation')"
    server.script(
        Reply(500, {"status": 500, "response": {"message": message}}),
        Reply(201, {"key": {"id": "k2"}}),
    )

    assert (await send(sender)).provider_message_id == "k2"


@pytest.mark.parametrize("status", [408, 502, 503])
async def test_sender_408_and_5xx_forever_are_transient(
    server: FakeProviders, sender: EvolutionSender, status: int
) -> None:
    server.script(Reply(status, text="down"))

    with pytest.raises(TransientProviderError):
        await send(sender)

    assert len(server.seen) == 3


async def test_sender_read_timeout_is_uncertain_and_not_sent_again_at_once(
    server: FakeProviders,
) -> None:
    # The timeout, which bounds the request's write too, is far from a loaded machine's
    # scheduling (as in the LLM's read-timeout test) and from the answer's delay.
    server.script(Reply(201, {"key": {"id": "late"}}, delay=5))
    client = EvolutionSender(make_settings(server.url, send_timeout="500ms"))
    try:
        with pytest.raises(UncertainDeliveryError) as caught:
            await asyncio.wait_for(send(client), timeout=30)
    finally:
        await client.aclose()
    assert "may have been delivered" in str(caught.value)
    await asyncio.sleep(0.5)  # a second request, were there one, would have arrived by now
    assert len(server.seen) == 1  # no quick retry: it may have been delivered


async def test_sender_read_timeout_includes_the_typing_delay(server: FakeProviders) -> None:
    # Evolution sleeps `delay` ms inside the request; 300 ms is past send_timeout alone.
    server.script(Reply(201, {"key": {"id": "typed"}}, delay=0.3))
    client = EvolutionSender(
        make_settings(server.url, send_timeout="200ms", evolution_delay_ms=1000)
    )
    try:
        assert (await send(client)).provider_message_id == "typed"
    finally:
        await client.aclose()


async def test_sender_connection_refused_is_transient() -> None:
    client = EvolutionSender(make_settings(closed_port_url()))
    try:
        with pytest.raises(TransientProviderError) as caught:
            await send(client)
    finally:
        await client.aclose()
    assert_no_secret(caught.value)
    assert NUMBER not in str(caught.value)
    assert "may have been delivered" not in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        {"instance": {"instanceName": "inst", "state": "open"}},
        {"state": "open"},
    ],
)
async def test_connection_state_is_parsed(
    server: FakeProviders, sender: EvolutionSender, body: Any
) -> None:
    server.script(Reply(200, body))

    assert await sender.connection_state("inst") == "open"

    [seen] = server.seen
    assert (seen.method, seen.path) == ("GET", "/instance/connectionState/inst")
    assert seen.headers["apikey"] == EVO_KEY


async def test_connection_state_errors_use_the_same_classes(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(404, {"status": 404, "error": "Not Found"}))
    with pytest.raises(InstanceMissingError):
        await sender.connection_state("gone")

    server.script(Reply(401, {"status": 401, "error": "Unauthorized"}))
    with pytest.raises(HoldBackError) as caught:
        await sender.connection_state("inst")
    assert_no_secret(caught.value)

    server.script(Reply(200, {"instance": {}}))
    with pytest.raises(TransientProviderError):
        await sender.connection_state("inst")

    # Evolution leaves `state` out for an instance it has not loaded: not ready.
    server.script(Reply(200, {"instance": {"instanceName": "inst"}}))
    assert await sender.connection_state("inst") == "close"


async def test_errors_never_carry_api_keys(server: FakeProviders) -> None:
    """Every class of failure, both providers: the key is not in the error's text."""
    settings = make_settings(server.url)
    llm = OpenRouterLLM(settings)
    sender = EvolutionSender(settings)
    echo = {"error": {"message": f"{LLM_KEY} {EVO_KEY}"}, "response": {"message": EVO_KEY}}
    errors: list[ProviderError] = []
    try:
        for status in (400, 401, 402, 403, 404, 408, 429, 500, 503):
            server.script(Reply(status, echo))
            for call in (generate(llm), send(sender)):
                with pytest.raises(ProviderError) as caught:
                    await call
                errors.append(caught.value)
    finally:
        await llm.aclose()
        await sender.aclose()
    assert len(errors) == 18
    for error in errors:
        assert_no_secret(error)


# --- Whole-call deadlines ------------------------------------------------------------------
# The fake trickles a byte every 0.5 s, so a read timeout of 1 s (a gap between bytes) never
# fires; only a deadline on the whole call ends these. Bounds are far from the timings.


async def test_llm_trickling_answer_ends_at_the_whole_call_deadline(server: FakeProviders) -> None:
    server.script(Reply(trickle=0.5))
    client = OpenRouterLLM(make_settings(server.url, llm_timeout="1s", quick_retries=1))
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as caught:
            await asyncio.wait_for(generate(client), timeout=15)
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started
    assert "timed out" in str(caught.value) and "LISTENER_LLM_TIMEOUT" in str(caught.value)
    assert len(server.seen) == 2  # transient: the quick retry applies
    assert 1.9 <= elapsed < 6


async def test_sender_trickling_answer_is_uncertain_at_the_whole_send_deadline(
    server: FakeProviders,
) -> None:
    server.script(Reply(201, trickle=0.5))
    client = EvolutionSender(make_settings(server.url, send_timeout="1s"))
    started = time.monotonic()
    try:
        with pytest.raises(UncertainDeliveryError) as caught:
            await asyncio.wait_for(send(client), timeout=15)
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started
    assert "may have been delivered" in str(caught.value)
    assert "LISTENER_SEND_TIMEOUT" in str(caught.value)
    assert len(server.seen) == 1  # no quick retry: it may have been delivered
    assert 0.9 <= elapsed < 5


async def test_sender_whole_send_deadline_includes_the_typing_delay(server: FakeProviders) -> None:
    server.script(Reply(201, trickle=0.2))
    client = EvolutionSender(
        make_settings(server.url, send_timeout="500ms", evolution_delay_ms=1000)
    )
    started = time.monotonic()
    try:
        with pytest.raises(UncertainDeliveryError) as caught:
            await asyncio.wait_for(send(client), timeout=15)
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started
    assert "1.5s" in str(caught.value) and "LISTENER_EVOLUTION_DELAY_MS" in str(caught.value)
    assert 1.4 <= elapsed < 5.5


async def test_connection_state_trickling_answer_is_transient_at_the_deadline(
    server: FakeProviders,
) -> None:
    server.script(Reply(200, trickle=0.5))
    client = EvolutionSender(make_settings(server.url, send_timeout="1s"))
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as caught:
            await asyncio.wait_for(client.connection_state("inst"), timeout=15)
    finally:
        await client.aclose()
    assert "timed out" in str(caught.value)
    assert time.monotonic() - started < 5


@pytest.fixture
def unaccepted_url() -> Iterator[str]:
    """A port whose listener never accepts and whose backlog is full: the kernel drops new
    connection attempts, so a call stalls before any connection is made."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        host, port = listener.getsockname()
        with socket.create_connection((host, port), timeout=5):  # fills the backlog
            yield f"http://{host}:{port}"


async def test_sender_deadline_before_any_connection_is_not_uncertain(
    unaccepted_url: str,
) -> None:
    # The connect timeout is long; the send's deadline passes while still connecting, so
    # nothing can have been delivered: an ordinary transient failure, quickly retried.
    settings = make_settings(
        unaccepted_url, send_timeout="1s", connect_timeout="30s", quick_retries=1
    )
    client = EvolutionSender(settings)
    started = time.monotonic()
    try:
        with pytest.raises(TransientProviderError) as caught:
            await asyncio.wait_for(send(client), timeout=15)
    finally:
        await client.aclose()
    assert "nothing was sent" in str(caught.value)
    assert 1.9 <= time.monotonic() - started < 6


# --- Odd bytes from providers --------------------------------------------------------------
# Postgres `text` refuses NUL and psycopg cannot encode a lone surrogate: neither may leave a
# provider in a reply, an id or an error; bytes that are not UTF-8 must not blind the reading.

ESCAPES = b"bad\\u0000 \\udc80 end"  # JSON escapes of a NUL and of a lone surrogate
INVALID = b"bad \xff end"  # a byte that is not UTF-8


def assert_clean(text: str) -> None:
    assert "\x00" not in text
    assert clean_text(text) == text
    text.encode("utf-8")  # every character has a UTF-8 form


async def test_llm_reply_with_nul_and_lone_surrogate_escapes_comes_out_clean(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(
        Reply(raw=b'{"choices":[{"message":{"content":"Oi\\u0000 Jo\\ud800ao \\ud83d\\ude00"}}]}')
    )

    assert await generate(llm) == "Oi Jo\ufffdao \U0001f600"


async def test_llm_reply_of_nul_bytes_only_is_empty(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(body=completion("\x00 \x00")))

    with pytest.raises(EmptyReplyError):
        await generate(llm)

    assert len(server.seen) == 3


async def test_llm_reply_with_invalid_utf8_keeps_its_text(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(raw=b'{"choices":[{"message":{"content":"Ol\xe1, tudo bem? \xff"}}]}'))

    assert await generate(llm) == "Ol\ufffd, tudo bem? \ufffd"
    assert len(server.seen) == 1


@pytest.mark.parametrize("odd", [ESCAPES, INVALID], ids=["escapes", "invalid-utf8"])
@pytest.mark.parametrize(
    ("status", "error_class"),
    [(401, HoldBackError), (429, RateLimitedError), (500, TransientProviderError)],
)
async def test_llm_error_text_with_odd_bytes_is_clean_and_still_classified(
    server: FakeProviders,
    llm: OpenRouterLLM,
    status: int,
    error_class: type[ProviderError],
    odd: bytes,
) -> None:
    server.script(Reply(status, raw=b'{"error":{"code":1,"message":"' + odd + b'"}}'))

    with pytest.raises(error_class) as caught:
        await generate(llm)

    assert_clean(str(caught.value))
    assert str(caught.value).endswith(": bad \ufffd end (code 1)")  # read as JSON, not raw


async def test_llm_non_json_error_with_odd_bytes_is_clean(
    server: FakeProviders, llm: OpenRouterLLM
) -> None:
    server.script(Reply(502, raw=b"<html>\x00 gateway \xff</html>"))

    with pytest.raises(TransientProviderError) as caught:
        await generate(llm)

    assert_clean(str(caught.value))
    assert "gateway" in str(caught.value)


async def test_sender_message_id_with_nul_and_lone_surrogate_comes_out_clean(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(201, raw=b'{"key":{"id":"3EB0\\u0000AB\\ud800"},"status":"PENDING"}'))

    assert (await send(sender)).provider_message_id == "3EB0AB\ufffd"


async def test_sender_accepted_reply_with_invalid_utf8_keeps_its_message_id(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(201, raw=b'{"key":{"id":"3EB0AB"},"message":{"conversation":"ol\xe1"}}'))

    assert (await send(sender)).provider_message_id == "3EB0AB"
    assert len(server.seen) == 1


async def test_sender_number_not_on_whatsapp_is_read_through_invalid_utf8(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    body = b'{"error":"Bad \xff","response":{"message":[{"exists":false,"number":"1"}]}}'
    server.script(Reply(400, raw=body))

    with pytest.raises(PermanentProviderError):
        await send(sender)


async def test_connection_state_with_odd_bytes_comes_out_clean(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(200, raw=b'{"instance":{"instanceName":"inst","state":"open\\u0000"}}'))

    assert await sender.connection_state("inst") == "open"


async def test_errors_never_carry_nul_or_lone_surrogates(server: FakeProviders) -> None:
    """Every class of failure, both providers: the error's text can be stored in Postgres."""
    settings = make_settings(server.url)
    llm = OpenRouterLLM(settings)
    sender = EvolutionSender(settings)
    bodies = [
        b'{"error":{"message":"' + odd + b'"},"response":{"message":"' + odd + b'"}}'
        for odd in (ESCAPES, INVALID)
    ]
    errors: list[ProviderError] = []
    try:
        for status in (400, 401, 402, 403, 404, 408, 429, 500, 503, 504):
            for raw in (*bodies, INVALID):
                server.script(Reply(status, raw=raw))
                for call in (generate(llm), send(sender)):
                    with pytest.raises(ProviderError) as caught:
                        await call
                    errors.append(caught.value)
    finally:
        await llm.aclose()
        await sender.aclose()
    assert len(errors) == 60
    for error in errors:
        assert_clean(str(error))


# --- helpers -------------------------------------------------------------------------------


NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:59:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 99 Foo 2024", None),
        ("86400", 3600.0),  # a day, or a typo: at most an hour
        ("1000000000000", 3600.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_defaults_to_now() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = parse_retry_after(later)
    assert seconds is not None and 55 <= seconds <= 60


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("5511987654321", "55119*****321"),
        ("551187654321", "55118****321"),
        ("14155552671", "1415****671"),
        ("12345678", "1*****78"),
        ("1234", "****"),
        ("", ""),
    ],
)
def test_mask_phone(number: str, masked: str) -> None:
    assert mask_phone(number) == masked
    assert len(mask_phone(number)) == len(number)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Connection Closed for 551187654321@s.whatsapp.net",
            "Connection Closed for 55118****321@s.whatsapp.net",
        ),
        ("number +55 (11) 98765-4321 unknown", "number 55119*****321 unknown"),
        ("already 55119*****321 masked", "already 55119*****321 masked"),
        ("at 2026-11-25 12:00:30, code 429, id 3EB0C767D71C4B0F", None),
        ("retry 1234567 times", None),  # seven digits: not a phone
        ("upstream 10.20.30.40:8080 refused", None),
        ("phone5511987654321 unknown", "phone55119*****321 unknown"),
    ],
)
def test_anything_like_a_phone_number_is_masked(text: str, expected: str | None) -> None:
    assert redact(text) == (expected if expected is not None else text)


async def test_sender_error_echoing_the_number_in_another_form_is_masked(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    jid = NUMBER[:4] + NUMBER[5:]  # the JID without the ninth digit
    server.script(Reply(500, {"error": f"Connection Closed for {jid}@s.whatsapp.net"}))

    with pytest.raises(TransientProviderError) as caught:
        await send(sender)

    assert jid not in str(caught.value) and NUMBER not in str(caught.value)


async def test_sender_gateway_timeout_is_uncertain_and_not_sent_again_at_once(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    server.script(Reply(504, {"message": "Gateway Timeout"}))

    with pytest.raises(UncertainDeliveryError) as caught:
        await send(sender)

    assert "may have been delivered" in str(caught.value)
    assert len(server.seen) == 1


async def test_find_sent_takes_only_a_record_that_names_the_number(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    # findMessages is asked by remoteJid or remoteJidAlt; whatever it answers, a record of
    # another chat with the same text (or under a bare lid, naming no number) is not ours.
    since = datetime.now(UTC) - timedelta(minutes=1)

    def answer(*keys: dict[str, str]) -> Reply:
        records = [
            {
                "key": {"id": f"K{i}", "fromMe": True, **key},
                "message": {"conversation": "Olá"},
                "messageTimestamp": int(time.time()),
            }
            for i, key in enumerate(keys)
        ]
        return Reply(200, {"messages": {"records": records}})

    def find() -> Any:
        return sender.find_sent(instance="inst", numbers=(NUMBER,), text="Olá", since=since)

    server.script(answer({"remoteJid": "5511999999999@s.whatsapp.net"}, {"remoteJid": "1@lid"}))
    assert await find() is None
    jid = f"{NUMBER}@s.whatsapp.net"
    server.script(answer({"remoteJid": "1@lid", "remoteJidAlt": jid}))
    assert await find() == "K0"
    [*_, asked] = server.seen
    assert asked.body["where"]["key"] == {"remoteJid": jid, "remoteJidAlt": jid, "fromMe": True}


async def test_find_any_sent_asks_remote_jid_alt_and_takes_only_a_record_naming_the_number(
    server: FakeProviders, sender: EvolutionSender
) -> None:
    # A row the old system left `processing`, sent to a number Evolution knows by its lid: the
    # record is under the lid with the number in remoteJidAlt. Evolution matches remoteJid OR
    # remoteJidAlt (an empty branch of that OR is Prisma's to read), so both are asked, and a
    # record that names another number (or none: a bare lid) is not this lead's.
    since = datetime.now(UTC) - timedelta(minutes=1)
    jid = f"{NUMBER}@s.whatsapp.net"

    def answer(*keys: dict[str, str]) -> Reply:
        records = [
            {
                "key": {"id": f"K{i}", "fromMe": True, **key},
                "message": {"conversation": f"Olá {i}"},
                "messageTimestamp": int(time.time()),
            }
            for i, key in enumerate(keys)
        ]
        return Reply(200, {"messages": {"records": records}})

    def find() -> Any:
        return sender.find_any_sent(instance="inst", numbers=(NUMBER,), since=since)

    server.script(answer({"remoteJid": "5511999999999@s.whatsapp.net"}, {"remoteJid": "1@lid"}))
    assert await find() is None
    server.script(answer({"remoteJid": "1@lid"}, {"remoteJid": "1@lid", "remoteJidAlt": jid}))
    assert await find() == ("K1", "Olá 1")
    [*_, asked] = server.seen
    assert asked.body["where"]["key"] == {"remoteJid": jid, "remoteJidAlt": jid, "fromMe": True}

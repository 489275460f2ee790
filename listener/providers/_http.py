"""Shared HTTP plumbing of the providers: the client, Retry-After, quick retries, masking.

The client runs on aiohttp's transport: at 50 concurrent requests on loopback it serves several
times the requests per second of httpx's own pool. Quick retries are bounded, apply only to
`TransientProviderError`, and each one is logged as a named event.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from listener.errors import (
    HoldBackError,
    ProviderError,
    TransientProviderError,
)
from listener.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Scrubs and shortens provider text for an exception message.
Scrub = Callable[[str], str]

#: How much of a provider's own error text goes into an exception (and `last_error`).
MAX_DETAIL = 300


def make_client(
    settings: Settings,
    *,
    read_timeout: timedelta,
    base_url: str,
    headers: dict[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` on aiohttp's transport, with the settings' connect timeout, the
    given read timeout and a pool big enough that the processor's concurrency never waits on it.
    Pass `transport` (e.g. `httpx.MockTransport`) to replace the network."""
    connect = settings.connect_timeout.total_seconds()
    read = read_timeout.total_seconds()
    connections = max(10, settings.concurrency * 2)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    if transport is None:
        # The aiohttp transport maps `pool` to aiohttp's `connect` (waiting for a pooled
        # connection plus opening one), `connect` to `sock_connect` and `read` to `sock_read`.
        transport = AiohttpTransport(limits=limits, trust_env=False)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(connect=connect, read=read, write=read, pool=connect),
        limits=limits,
        transport=transport,
        trust_env=False,
    )


RETRY_AFTER_CAP = 3600.0


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: a number of seconds or an HTTP date.
    A negative or past value gives 0; a missing or unreadable one gives None; anything over
    an hour gives an hour (a provider's typo must not freeze the listener for years)."""
    seconds = _retry_after_seconds(value, now)
    return None if seconds is None else min(seconds, RETRY_AFTER_CAP)


def _retry_after_seconds(value: str | None, now: datetime | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    return max(0.0, (when - current).total_seconds())


def mask_phone(number: str) -> str:
    """Hide the middle of a phone number for log lines: `5511987654321` -> `55119*****321`."""
    size = len(number)
    if size >= 12:
        head, tail = 5, 3
    elif size >= 9:
        head, tail = 4, 3
    elif size >= 5:
        head, tail = 1, 2
    else:
        return "*" * size
    return number[:head] + "*" * (size - head - tail) + number[size - tail :]


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Every API key in the settings, to scrub from any text a provider sends back."""
    keys = (settings.openrouter_api_key, settings.evolution_api_key)
    return tuple(key.get_secret_value() for key in keys if key and key.get_secret_value())


# Something that may be a phone number in any form a provider echoes it: digits with optional
# spaces, dashes, dots, parentheses and a leading +, as in `+55 (11) 98765-4321` or the JID
# `551187654321@s.whatsapp.net`, or glued to a word. Masked when it holds 8 digits or more;
# dates and IPv4 addresses are left alone.
_NOT_DIGIT = re.compile(r"[^0-9]")
_PHONE_LIKE = re.compile(
    r"(?<![\d*])"  # not the tail of a longer number, nor next to an already masked one
    r"(?!\d{4}-\d\d-\d\d)"  # a date
    r"(?!\d{1,3}(?:\.\d{1,3}){3}(?!\d))"  # an IPv4 address
    r"\+?\d[\d ().-]*\d(?![\d*])"
)
_LEAST_PHONE_DIGITS = 8


def _mask_phone_like(match: re.Match[str]) -> str:
    digits = _NOT_DIGIT.sub("", match.group(0))
    return mask_phone(digits) if len(digits) >= _LEAST_PHONE_DIGITS else match.group(0)


def redact(text: str, *, secrets: Iterable[str] = (), numbers: Iterable[str] = ()) -> str:
    """Remove secrets, and mask phone numbers (the ones named and anything that looks like
    one), in text that may reach a log line or `last_error`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for number in numbers:
        if number:
            text = text.replace(number, mask_phone(number))
    return _PHONE_LIKE.sub(_mask_phone_like, text)


def shorten(text: str, limit: int = MAX_DETAIL) -> str:
    """One line of at most `limit` characters, for exception messages and `last_error`."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def scrubber(*, secrets: Iterable[str] = (), numbers: Iterable[str] = ()) -> Scrub:
    """A function that scrubs secrets and phone numbers out of provider text, then shortens
    it; scrubbing comes first so that no fragment of a key survives the cut."""
    secret_list, number_list = tuple(secrets), tuple(numbers)

    def scrub(text: str) -> str:
        return shorten(redact(text, secrets=secret_list, numbers=number_list))

    return scrub


def parse_json(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it is not JSON. Parsed unscrubbed, so that
    scrubbing can never change how an answer is classified."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None


def request_failure(exc: Exception, *, provider: str) -> ProviderError:
    """Turn a failure to get any HTTP response (timeout, refused, reset) into our error.
    A URL with an unsupported scheme is configuration, so it holds back; the rest may heal."""
    if isinstance(exc, httpx.UnsupportedProtocol):
        return HoldBackError(f"{provider} URL not usable: {shorten(str(exc))}", provider=provider)
    # The aiohttp transport maps its errors onto httpx classes loosely (a dropped connection
    # becomes ConnectTimeout), so name the original error when there is one.
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    if isinstance(cause, TimeoutError | httpx.TimeoutException):
        what = "timed out"
    else:
        what = "request failed"
    detail = str(cause) or type(cause).__name__
    return TransientProviderError(
        f"{provider} {what}: {type(cause).__name__}: {shorten(detail)}", provider=provider
    )


#: Errors below HTTP (no response at all) that `request_failure` classifies.
REQUEST_ERRORS: tuple[type[Exception], ...] = (
    httpx.RequestError,
    aiohttp.ClientError,
    TimeoutError,
)


def quick_retry(settings: Settings, *, provider: str, operation: str) -> AsyncRetrying:
    """A tenacity retrier for one provider call: retries only TransientProviderError, up to
    `quick_retries` more times, with capped exponential backoff and jitter; the last error is
    re-raised as is."""

    def log_retry(state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "provider quick retry",
            extra={
                "action": "provider_quick_retry",
                "provider": provider,
                "operation": operation,
                "attempt": state.attempt_number,
                "retry_in_s": round(wait, 3),
                "status": getattr(error, "status", None),
                "error": str(error),
            },
        )

    base = settings.quick_retry_base.total_seconds()
    return AsyncRetrying(
        retry=retry_if_exception_type(TransientProviderError),
        stop=stop_after_attempt(settings.quick_retries + 1),
        wait=wait_exponential_jitter(
            multiplier=base, max=settings.quick_retry_max.total_seconds(), jitter=base
        ),
        before_sleep=log_retry,
        reraise=True,
    )


async def with_quick_retry(
    settings: Settings,
    call: Callable[[], Awaitable[T]],
    *,
    provider: str,
    operation: str,
) -> T:
    """Run `call` under `quick_retry`; return its result or raise its last error."""
    # The first try runs bare: building a tenacity retrier costs about 28 us, a few percent of
    # a whole message on loopback, and most calls succeed. A failed first try is handed to the
    # retrier as its first attempt, so the policy, waits and logs are exactly tenacity's.
    try:
        return await call()
    except TransientProviderError as exc:
        if settings.quick_retries == 0:
            raise
        first: TransientProviderError | None = exc
    # The loop ends after a success; after the last failed attempt tenacity re-raises.
    async for attempt in quick_retry(settings, provider=provider, operation=operation):
        with attempt:
            if first is not None:
                error, first = first, None
                raise error
            result = await call()
    return result

"""Shared HTTP plumbing of the providers: the client, deadlines, Retry-After, quick retries,
masking and cleaning of provider text.

The client runs on aiohttp's transport: at 50 concurrent requests on loopback it serves several
times the requests per second of httpx's own pool. Its read timeout bounds each gap between
bytes; `exchange` bounds the whole call, so a provider that trickles its answer is timed out like
one that is silent. Quick retries are bounded, apply only to `TransientProviderError`, and each
one is logged as a named event.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp
import httpx
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
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
from listener.phones import mask_phone, mask_phone_like
from listener.settings import Settings
from listener.text import clean_text

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
        transport = _watched_transport(limits)
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(connect=connect, read=read, write=read, pool=connect),
        limits=limits,
        transport=transport,
        trust_env=False,
    )


def _watched_transport(limits: httpx.Limits) -> AiohttpTransport:
    """aiohttp's transport with its session built as the transport would build it, except for
    a connector that tells `exchange` whether a request got as far as a connection."""
    transport: AiohttpTransport

    def session() -> aiohttp.ClientSession:
        connector = _WatchedConnector(
            limit=limits.max_connections or 0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=transport.ssl_context,
        )
        return aiohttp.ClientSession(connector=connector)

    # Built lazily by the transport, inside the event loop, on the first request.
    transport = AiohttpTransport(limits=limits, trust_env=False, client=session)
    return transport


@dataclass(slots=True)
class _Progress:
    """How far one request got: asking for a connection, then having one."""

    started: bool = False
    connected: bool = False

    @property
    def may_have_sent(self) -> bool:
        """False only when the request is known to have ended before it had a connection."""
        return self.connected or not self.started


# The progress of the request under way in this task. aiohttp asks its connector for a
# connection in the task that makes the request, so the connector finds it here. (aiohttp's
# tracing would tell the same, at about twice the cost per request.)
_PROGRESS: contextvars.ContextVar[_Progress | None] = contextvars.ContextVar(
    "listener_http_progress", default=None
)


class _WatchedConnector(aiohttp.TCPConnector):
    """A TCPConnector that marks the request's `_Progress`: started when it asks for a
    connection (from the pool or new), connected once it has one. Nothing is written to the
    network before that."""

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        progress = _PROGRESS.get()
        if progress is not None:
            progress.started = True
        connection = await super().connect(req, traces, timeout)
        if progress is not None:
            progress.connected = True
        return connection


class DeadlineExceeded(TimeoutError):
    """A whole call (connecting, sending, every byte of the answer) outlasted its deadline.
    `may_have_sent` is False only when the request never had a connection, so the provider
    cannot have seen it."""

    def __init__(self, message: str, *, may_have_sent: bool) -> None:
        super().__init__(message)
        self.may_have_sent = may_have_sent


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL | str,
    *,
    deadline: timedelta,
    setting: str,
    body: Any = None,
) -> httpx.Response:
    """One HTTP request (`body` sent as JSON when given) and its whole answer, read in full,
    within `deadline`; `setting` names what sets the deadline, for the error. Raises
    `DeadlineExceeded` when time runs out, or the client's own errors (see `REQUEST_ERRORS`)."""
    seconds = deadline.total_seconds()
    progress = _Progress()
    token = _PROGRESS.set(progress)
    try:
        async with asyncio.timeout(seconds) as scope:
            return await client.request(method, url, json=body)
    except TimeoutError as exc:
        if not scope.expired():
            raise
        unsent = "" if progress.may_have_sent else "; no connection was made, nothing was sent"
        raise DeadlineExceeded(
            f"no whole answer within {seconds:g}s ({setting}){unsent}",
            may_have_sent=progress.may_have_sent,
        ) from exc
    finally:
        _PROGRESS.reset(token)


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


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Every API key in the settings, to scrub from any text a provider sends back."""
    keys = (settings.openrouter_api_key, settings.evolution_api_key)
    return tuple(key.get_secret_value() for key in keys if key and key.get_secret_value())


def redact(text: str, *, secrets: Iterable[str] = (), numbers: Iterable[str] = ()) -> str:
    """Remove secrets, mask phone numbers (the ones named and anything that looks like one) and
    drop what Postgres cannot store (NUL, lone surrogates), in text that may reach a log line or
    `last_error`."""
    text = clean_text(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for number in numbers:
        if number:
            text = text.replace(number, mask_phone(number))
    return mask_phone_like(text)


def shorten(text: str, limit: int = MAX_DETAIL) -> str:
    """One line of at most `limit` characters, for exception messages and `last_error`."""
    flat = " ".join(clean_text(text).split())
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
    scrubbing can never change how an answer is classified. Bytes that are not UTF-8 become
    U+FFFD rather than making the whole answer unreadable; strings may still hold NUL or lone
    surrogates (JSON escapes), which `clean_text` removes where text is kept."""
    try:
        return json.loads(response.content)
    except UnicodeDecodeError:
        pass
    except ValueError:
        return None
    try:
        return json.loads(response.content.decode("utf-8-sig", errors="replace"))
    except ValueError:
        return None


def request_failure(exc: Exception, *, provider: str) -> ProviderError:
    """Turn a failure to get any HTTP response (timeout, refused, reset) into our error.
    A URL with an unsupported scheme is configuration, so it holds back; the rest may heal."""
    if isinstance(exc, httpx.UnsupportedProtocol):
        return HoldBackError(f"{provider} URL not usable: {shorten(str(exc))}", provider=provider)
    if isinstance(exc, DeadlineExceeded):
        return TransientProviderError(f"{provider} timed out: {exc}", provider=provider)
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

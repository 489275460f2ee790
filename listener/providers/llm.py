"""OpenRouter as the `LLM` port: one chat completion per message.

Failures are sorted by what should happen next (DESIGN.md, "Provider wire formats"): 408, 5xx,
timeouts and broken 200s may heal (quick retries, then a delayed retry); 429 and an exhausted
in-flight budget (a 402 that says so) are rate limits; 400, 401, 403, other 402s and any other
4xx mean the operator must act, so the message is held back.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import httpx

from listener.errors import (
    EmptyReplyError,
    HoldBackError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
)
from listener.providers._http import (
    REQUEST_ERRORS,
    Scrub,
    exchange,
    make_client,
    parse_json,
    parse_retry_after,
    redact,
    request_failure,
    scrubber,
    secrets_of,
    with_quick_retry,
)
from listener.settings import Settings
from listener.text import clean_text

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=ProviderError)

PROVIDER = "openrouter"
_BUDGET_WORDS = ("budget", "in-flight", "in_flight", "inflight")


class OpenRouterLLM:
    """Writes message text through OpenRouter's chat completions API."""

    def __init__(
        self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else ""
        self._settings = settings
        self._secrets = secrets_of(settings)
        self._scrub = scrubber(secrets=self._secrets)
        self._client = make_client(
            settings,
            read_timeout=settings.llm_timeout,
            base_url=settings.openrouter_base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            transport=transport,
        )
        # An absolute URL object, parsed once: httpx re-parses and joins a path on every call.
        self._completions = httpx.URL(
            settings.openrouter_base_url.rstrip("/") + "/chat/completions"
        )

    async def generate(self, *, model: str, system: str, user: str) -> str:
        """Return the reply text, after quick retries of transient failures."""

        async def call() -> str:
            return await self._generate_once(model=model, system=system, user=user)

        return await with_quick_retry(
            self._settings, call, provider=PROVIDER, operation="chat_completion"
        )

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    async def _generate_once(self, *, model: str, system: str, user: str) -> str:
        body = {
            "model": model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        }
        try:
            # The read timeout bounds each gap between bytes; this bounds the whole call.
            response = await exchange(
                self._client,
                "POST",
                self._completions,
                deadline=self._settings.llm_timeout,
                setting="LISTENER_LLM_TIMEOUT",
                body=body,
            )
        except REQUEST_ERRORS as exc:
            raise self._clean(request_failure(exc, provider=PROVIDER)) from exc
        payload = parse_json(response)
        if not response.is_success:
            raise self._clean(_http_error(response, payload, self._scrub))
        return self._reply_text(response, payload)

    def _reply_text(self, response: httpx.Response, payload: Any) -> str:
        """The text of `choices[0].message.content`, without what Postgres cannot store (NUL,
        lone surrogates); OpenRouter can fail inside a 200."""
        status = response.status_code

        def broken(why: str) -> TransientProviderError:
            error = TransientProviderError(
                f"{PROVIDER} HTTP {status}: {why}", provider=PROVIDER, status=status
            )
            return self._clean(error)

        if not isinstance(payload, dict):
            raise broken("reply is not a JSON object")
        if "error" in payload and "choices" not in payload:
            raise broken(f"error in reply: {_error_message(payload, self._scrub)}")
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise broken("reply has no choices")
        choice = choices[0]
        if choice.get("error"):
            raise broken(f"error in choice: {_error_message(choice, self._scrub)}")
        if choice.get("finish_reason") == "error":
            raise broken('finish_reason is "error"')
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            content = clean_text(content)
        if not isinstance(content, str) or not content.strip():
            raise self._clean(
                EmptyReplyError(
                    f"{PROVIDER} HTTP {status}: empty content", provider=PROVIDER, status=status
                )
            )
        return content

    def _clean(self, error: E) -> E:
        """Make sure no API key, NUL or lone surrogate travels inside an error message."""
        error.args = (redact(str(error), secrets=self._secrets),)
        return error


def _error_message(payload: Any, scrub: Scrub) -> str:
    """The provider's `error.message` (or whatever error text there is), shortened."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            code = error.get("code")
            text = str(message) if message else json.dumps(error, ensure_ascii=False)
            return scrub(f"{text} (code {code})" if code is not None and message else text)
        if isinstance(error, str) and error:
            return scrub(error)
        return scrub(json.dumps(payload, ensure_ascii=False))
    return ""


def _budget_exhausted(payload: Any) -> bool:
    """True when a 402's `error.metadata` says OpenRouter's in-flight budget is exhausted, not
    that the account ran dry (DESIGN.md: only the metadata decides, not a Retry-After)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), dict):
        return False
    metadata = payload["error"].get("metadata")
    if metadata is None:
        return False
    text = json.dumps(metadata, ensure_ascii=False).lower()
    return any(word in text for word in _BUDGET_WORDS)


def _http_error(response: httpx.Response, payload: Any, scrub: Scrub) -> ProviderError:
    """Classify a non-2xx answer."""
    status = response.status_code
    detail = _error_message(payload, scrub) or scrub(response.text) or response.reason_phrase
    message = f"{PROVIDER} HTTP {status}: {detail}"
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 429:
        return RateLimitedError(message, provider=PROVIDER, status=status, retry_after=retry_after)
    if status == 402 and _budget_exhausted(payload):
        return RateLimitedError(
            f"{message} (in-flight budget exhausted)",
            provider=PROVIDER,
            status=status,
            retry_after=retry_after,
        )
    if status == 408 or status >= 500:
        return TransientProviderError(message, provider=PROVIDER, status=status)
    # 400, 401, 403, other 402s, other 4xx and unexpected 1xx/3xx: not this message's fault.
    return HoldBackError(message, provider=PROVIDER, status=status, retry_after=retry_after)

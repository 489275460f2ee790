"""OpenRouter as the `LLM` port: one chat completion per message.

Failures are sorted by what should happen next (docs/design.md, "Providers on the wire"): 408, 5xx,
timeouts and broken 200s may heal (quick retries, then a delayed retry); 429 and an exhausted
in-flight budget (a 402 that says so) are rate limits; 400, 401, 403, other 402s and any other
4xx mean the operator must act, so the message is held back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
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
from listener.providers.base import Reply, Usage
from listener.settings import Settings
from listener.text import clean_text

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=ProviderError)

PROVIDER = "openrouter"
_BUDGET_WORDS = ("budget", "in-flight", "in_flight", "inflight")
# What a 400 or 404 says when the model's endpoints refuse the request's parameters (OpenRouter:
# "No endpoints found that can handle the requested parameters", "response_format is not
# supported", ...).
_PARAMETER_WORDS = ("parameter", "response_format", "json_schema", "structured output")
#: How long a model that refused structured output is asked without it (docs/design.md: an hour).
STRUCTURED_MEMORY_SECONDS = 3600.0


class _ParametersRefused(Exception):
    """The model's endpoints refused structured output: ask again without it."""


class OpenRouterLLM:
    """Writes message text through OpenRouter's chat completions API."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
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
        self._clock = clock
        # Models whose endpoints refused structured output, and until when (on `clock`) they
        # are asked without it.
        self._unstructured: dict[str, float] = {}
        self._response_format = {
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
                            "maxItems": settings.max_parts,
                        }
                    },
                    "required": ["messages"],
                    "additionalProperties": False,
                },
            },
        }

    def structured(self, model: str) -> bool:
        """Whether `model` is asked for structured output now (LISTENER_STRUCTURED_OUTPUT, and
        in `auto` whether it refused it within the last hour)."""
        mode = self._settings.structured_output
        if mode != "auto":
            return mode == "on"
        until = self._unstructured.get(model)
        if until is None:
            return True
        if self._clock() >= until:
            del self._unstructured[model]
            return True
        return False

    async def generate(
        self,
        *,
        model: str,
        system: str,
        user: str,
        fallbacks: Sequence[str] = (),
        on_usage: Callable[[Usage], None] | None = None,
    ) -> Reply:
        """Return the reply, after quick retries of transient failures. In `auto`, a model
        whose endpoints refuse structured output is asked again at once without it."""
        models = [model, *(m for m in dict.fromkeys(fallbacks) if m and m != model)]

        async def call() -> Reply:
            structured = self.structured(model)
            try:
                return await self._generate_once(models, system, user, structured, on_usage)
            except _ParametersRefused as exc:
                self._unstructured[model] = self._clock() + STRUCTURED_MEMORY_SECONDS
                logger.warning(
                    "%s refused structured output, asking without it for an hour: %s",
                    model,
                    exc,
                    extra={"action": "llm_structured_refused", "model": model},
                )
                return await self._generate_once(models, system, user, False, on_usage)

        return await with_quick_retry(
            self._settings, call, provider=PROVIDER, operation="chat_completion"
        )

    async def complete(
        self,
        *,
        model: str,
        system: str,
        user: str,
        response_format: dict[str, Any],
        on_usage: Callable[[Usage], None] | None = None,
    ) -> Reply:
        """One answer of `model` in the given structured format (a strict JSON schema), after
        quick retries of transient failures: for small structured tasks such as classifying a
        lead's reply. No fallback models, no asking again without the format."""

        async def call() -> Reply:
            return await self._generate_once(
                [model], system, user, True, on_usage, response_format=response_format
            )

        return await with_quick_retry(
            self._settings, call, provider=PROVIDER, operation="chat_completion"
        )

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    async def _generate_once(
        self,
        models: list[str],
        system: str,
        user: str,
        structured: bool,
        on_usage: Callable[[Usage], None] | None,
        *,
        response_format: dict[str, Any] | None = None,
    ) -> Reply:
        body: dict[str, Any] = {
            "model": models[0],
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "usage": {"include": True},
        }
        if len(models) > 1:
            body["models"] = models
        if structured:
            body["response_format"] = response_format or self._response_format
            body["provider"] = {"require_parameters": True}
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
        usage = _usage(payload, billed=response.is_success)
        if usage is not None and on_usage is not None:
            on_usage(usage)
        if not response.is_success:
            if (
                structured
                and self._settings.structured_output == "auto"
                and response.status_code in (400, 404)
                and _about_parameters(payload)
            ):
                raise _ParametersRefused(_error_message(payload, self._scrub))
            raise self._clean(_http_error(response, payload, self._scrub))
        text = self._reply_text(response, payload)
        return Reply(text=text, model=usage.model if usage else None, structured=structured)

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


def _about_parameters(payload: Any) -> bool:
    """A 400/404 that is about the request's parameters (structured output unsupported)."""
    if not isinstance(payload, dict):
        return False
    text = json.dumps(payload.get("error", payload), ensure_ascii=False).lower()
    return any(word in text for word in _PARAMETER_WORDS)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(payload: Any, *, billed: bool) -> Usage | None:
    """What one call cost (`usage`, asked for with `usage.include`) and the model that answered;
    None for a call that was not billed (an error answer without usage)."""
    if not isinstance(payload, dict):
        return Usage(calls=1) if billed else None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    if not billed and not usage:
        return None
    cost = usage.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
        cost = 0.0
    model = payload.get("model")
    return Usage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        cost_usd=max(float(cost), 0.0),
        calls=1,
        model=clean_text(model)[:200] or None if isinstance(model, str) else None,
    )


def _budget_exhausted(payload: Any) -> bool:
    """True when a 402's `error.metadata` says OpenRouter's in-flight budget is exhausted, not
    that the account ran dry (docs/design.md: only the metadata decides, not a Retry-After)."""
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

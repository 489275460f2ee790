"""The two provider ports and their values (`Usage`, what billed LLM calls cost). The processor
only knows these Protocols; HTTP details live in `llm.py` (OpenRouter) and `sender.py`
(Evolution API), and `sandbox.py` fakes both offline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(slots=True)
class Usage:
    """What billed LLM calls cost (tokens, US dollars as OpenRouter reports them), summed, and
    the model that answered the last of them (`fallback`: a fallback model, not the primary).
    A value, never changed once made, but not `frozen`: one is made per call on the hot path."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    model: str | None = None
    fallback: bool | None = None

    def __add__(self, other: Usage) -> Usage:
        answered = other.model is not None
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            calls=self.calls + other.calls,
            model=other.model if answered else self.model,
            fallback=other.fallback if answered else self.fallback,
        )


@dataclass(frozen=True, slots=True)
class SentPart:
    """What the sender returns for one accepted part: the provider's own message id."""

    provider_message_id: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The LLM's answer: its text, the model that wrote it, and whether the text was asked for
    as structured output (then it must be the JSON object `{"messages": [...]}`)."""

    text: str
    model: str | None = None
    structured: bool = False


class LLM(Protocol):
    """Writes the text of one message."""

    async def generate(
        self,
        *,
        model: str,
        system: str,
        user: str,
        fallbacks: Sequence[str] = (),
        on_usage: Callable[[Usage], None] | None = None,
    ) -> Reply:
        """Return the reply of `model` (or of the first of `fallbacks` that answers). Every
        billed call, a failed one included, is reported to `on_usage`. Raises a ProviderError
        subclass on failure (after any quick retries the implementation makes)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SentFinder(Protocol):
    """A sender that can look up whether a send whose answer never came went out."""

    async def find_sent(
        self, *, instance: str, numbers: tuple[str, ...], text: str, since: datetime
    ) -> str | None:
        """The provider's id of a message sent to one of `numbers` with exactly `text` since
        `since`, or None. Raises a ProviderError when it cannot tell."""
        ...


@runtime_checkable
class LeftBehindFinder(Protocol):
    """A sender that can tell whether anything went to a number since a time (a row the old
    system left `processing`: its text is unknown, so any message of ours counts)."""

    async def find_any_sent(
        self, *, instance: str, numbers: tuple[str, ...], since: datetime
    ) -> tuple[str, str] | None:
        """The id and text of the newest message sent to one of `numbers` since `since`, or
        None. Raises a ProviderError when it cannot tell."""
        ...


class Sender(Protocol):
    """Delivers one part of a message to one phone number."""

    async def send_text(self, *, instance: str, number: str, text: str) -> SentPart:
        """Send `text` to `number` (digits only, with country code) through `instance`.
        Raises a ProviderError subclass on failure."""
        ...

    async def connection_state(self, instance: str) -> str:
        """The instance's connection state (`open` when it can send)."""
        ...

    async def aclose(self) -> None: ...

"""The two provider ports. The processor only knows these Protocols; HTTP details live in
`llm.py` (OpenRouter) and `sender.py` (Evolution API), and `sandbox.py` fakes both offline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SentPart:
    """What the sender returns for one accepted part: the provider's own message id."""

    provider_message_id: str


class LLM(Protocol):
    """Writes the text of one message."""

    async def generate(self, *, model: str, system: str, user: str) -> str:
        """Return the reply text. Raises a ProviderError subclass on failure (after any quick
        retries the implementation makes for transient errors)."""
        ...

    async def aclose(self) -> None: ...


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

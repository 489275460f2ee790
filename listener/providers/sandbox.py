"""Offline providers for the demo, the queue benchmarks and tests that are not about HTTP:
an LLM that writes from a template and a sender that records each part in `sandbox_outbox`."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from listener import jsoncodec
from listener.batch import GroupCommit
from listener.outbox import record_sandbox_parts
from listener.providers.base import Reply, SentPart, Usage
from listener.providers.sandbox_feedback import SandboxFeedback
from listener.text import json_texts


class SandboxLLM:
    """Writes `{"messages": [...]}` from the lead's context with no network.

    The user message is the lead context as JSON (as the processor builds it); the reply greets
    the lead by name and mentions the company and city when known. Each reply reports a small
    usage, deterministic for its input (about four characters a token, priced like a small
    model: $0.15 per million prompt tokens, $0.60 per million completion tokens), so the demo
    shows spend."""

    PROMPT_USD_PER_TOKEN = 0.15e-6
    COMPLETION_USD_PER_TOKEN = 0.60e-6

    async def generate(
        self,
        *,
        model: str,
        system: str,
        user: str,
        fallbacks: Sequence[str] = (),
        on_usage: Callable[[Usage], None] | None = None,
    ) -> Reply:
        try:
            context: dict[str, Any] = jsoncodec.loads(user).get("lead", {})
        except (ValueError, AttributeError):
            context = {}
        name = (context.get("name") or "").split(" ")[0] or "tudo bem"
        company = context.get("company")
        city = context.get("city")
        where = f" da {company}" if company else ""
        if city:
            where += f" em {city}"
        text = f"Olá, {name}! Vi o trabalho{where} e queria conversar rapidamente."
        reply = '{"messages": ' + json_texts([text]) + "}"  # json.dumps's very text
        if on_usage is not None:
            prompt = (len(system) + len(user)) // 4 + 1
            completion = len(reply) // 4 + 1
            cost = prompt * self.PROMPT_USD_PER_TOKEN + completion * self.COMPLETION_USD_PER_TOKEN
            on_usage(Usage(prompt, completion, round(cost, 10), 1, model, False))
        return Reply(text=reply, model=model)

    async def aclose(self) -> None:
        return None


class SandboxSender:
    """Records every accepted part in the `sandbox_outbox` table (batched, like a fast
    provider), and answers with a fresh provider message id. With `feedback` (the demo, when
    the webhook receiver is on) it also reports each part's delivery as Evolution would."""

    def __init__(
        self, pool: AsyncConnectionPool, *, feedback: SandboxFeedback | None = None
    ) -> None:
        self._pool = pool
        self._feedback = feedback
        self._writer: GroupCommit[tuple[str, str, str, str]] = GroupCommit(
            self._flush, key=lambda item: item[3]
        )

    async def _flush(self, items: list[tuple[str, str, str, str]]) -> set[Any]:
        await record_sandbox_parts(self._pool, items)
        return {i[3] for i in items}

    async def send_text(self, *, instance: str, number: str, text: str) -> SentPart:
        # 64 random bits, as before, without a system call per part (nothing secret; the
        # random module reseeds a forked child).
        provider_id = f"SANDBOX{random.getrandbits(64):016X}"
        await self._writer.submit((instance, number, text, provider_id))
        if self._feedback is not None:
            self._feedback.sent(instance, number, provider_id)
        return SentPart(provider_message_id=provider_id)

    async def connection_state(self, instance: str) -> str:
        return "open"

    async def aclose(self) -> None:
        if self._feedback is not None:
            await self._feedback.aclose()

"""The LLM step: the prompt for one lead, the call through the LLM's gate, the reply split into
parts, and a reply with nothing to send asked again before the message fails for it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from listener.calls import ProviderCalls
from listener.jobs import Job
from listener.providers.base import LLM
from listener.settings import Settings
from listener.split import UnsplittableReply, split_reply
from listener.text import clean_text

log = logging.getLogger(__name__)

FORMAT_INSTRUCTIONS = (
    "Write the outbound WhatsApp message for the lead described in the user message. "
    'Answer with JSON only: {"messages": ["first part", "second part"]}, one short part per '
    "WhatsApp bubble, at most {max_parts} parts, in the lead's language. Do not repeat what "
    "the lead's recent_messages already said."
)


class Writer:
    """Writes one message's parts with the LLM."""

    def __init__(
        self,
        settings: Settings,
        llm: LLM,
        calls: ProviderCalls,
        *,
        on_request: Callable[[Job], None] | None = None,
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.calls = calls
        self._on_request = on_request

    async def write(self, job: Job, *, check: Callable[[], None]) -> tuple[str, list[str]]:
        """Ask the LLM and split its reply; a reply with nothing to send is asked again, with
        the quick retries' backoff, before the message fails for it."""
        settings = self.settings
        for retry in range(settings.quick_retries + 1):
            text = clean_text(await self._generate(job, check))
            try:
                parts = split_reply(
                    text, max_parts=settings.max_parts, max_chars=settings.max_part_chars
                )
                # JSON escapes (`\u0000`, a lone `\ud800`) decode to what Postgres refuses.
                parts = [c for part in parts if (c := clean_text(part).strip())]
                if not parts:
                    raise UnsplittableReply("the reply has nothing but NUL bytes to send")
                return text, parts
            except UnsplittableReply as exc:
                if retry == settings.quick_retries:
                    raise
                pause = min(
                    settings.quick_retry_base.total_seconds() * 2**retry,
                    settings.quick_retry_max.total_seconds(),
                )
                log.warning(
                    "the LLM reply has nothing to send, asking again in %.1fs: %s",
                    pause,
                    exc,
                    extra={"action": "llm_reply_unsplittable", "message_id": str(job.id)},
                )
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _generate(self, job: Job, check: Callable[[], None]) -> str:
        system = (job.campaign_prompt or "").strip()
        system = (system + "\n\n" if system else "") + FORMAT_INSTRUCTIONS.replace(
            "{max_parts}", str(self.settings.max_parts)
        )
        user = json.dumps({"lead": job.context}, ensure_ascii=False, default=str)
        model = job.campaign_model or self.settings.model
        if self._on_request is not None:
            self._on_request(job)
        return await self.calls.call(
            self.calls.llm,
            lambda: self.llm.generate(model=model, system=system, user=user),
            check=check,
        )

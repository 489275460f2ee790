"""The LLM step: the campaign's budget checked, the prompt for one lead, the call through the
LLM's gate (structured output, fallback models, usage), the reply split into parts, and a reply
with nothing to send (or JSON that does not parse) asked again before the message fails for it.

The usage of every billed call is added to `job.attempt.usage`, which travels with the
message's next write (its parts, or the end of the attempt): no extra round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from uuid import UUID

from listener import jsoncodec
from listener.flow import MustWait
from listener.jobs import Job
from listener.providers.base import LLM, Reply, Usage
from listener.queue.calls import ProviderCalls
from listener.queue.outcomes import budget_wait
from listener.queue.sequences import STEP_INSTRUCTIONS
from listener.queue.split import UnsplittableReply, split_messages, split_reply
from listener.settings import Settings
from listener.text import clean_text

log = logging.getLogger(__name__)

FORMAT_INSTRUCTIONS = (
    "Write the outbound WhatsApp message for the lead described in the user message. "
    'Answer with JSON only: {"messages": ["first part", "second part"]}, one short part per '
    "WhatsApp bubble, at most {max_parts} parts, in the lead's language. Do not repeat what "
    "the lead's recent_messages already said."
)


class InvalidJsonReply(UnsplittableReply):
    """The reply claims to be JSON (or was asked for as structured output) but is not the
    JSON of a list of messages: it is asked again, never sent as raw JSON text."""


def json_problem(text: str, *, required: bool) -> str | None:
    """Why `text` is not usable JSON, when it claims to be JSON (it starts with `{` or `[`, or
    holds a ``` fence that does) or JSON is `required`; None when it is fine or plain text."""
    return json_messages(text, required=required)[1]


def json_messages(text: str, *, required: bool) -> tuple[list[str] | None, str | None]:
    """The messages of a reply that claims to be JSON (see `json_problem`), parsed once, or
    why it is not usable JSON; (None, None) for plain text."""
    candidate = text.strip()
    start = candidate.find("```")
    if not candidate.startswith(("{", "[")) and start >= 0:
        inner = candidate[start + 3 :]
        if inner[:4].lower() == "json":
            inner = inner[4:]
        end = inner.find("```")
        fenced = (inner if end < 0 else inner[:end]).strip()
        if required or fenced.startswith(("{", "[")):
            candidate = fenced
    if not required and not candidate.startswith(("{", "[")):
        return None, None
    try:
        data = jsoncodec.loads(candidate)  # a refusal is the standard library's, its text
    except ValueError as exc:
        what = "the structured reply" if required else "the reply claims JSON but"
        return None, f"{what} does not parse: {exc}"
    messages = data.get("messages") if isinstance(data, dict) else data
    if (required and not isinstance(data, dict)) or not isinstance(messages, list):
        return None, "the reply is JSON without a list of messages"
    for message in messages:
        if not isinstance(message, str):
            return None, "the reply's messages are not all text"
    return messages, None


def same_model(answered: str, requested: str) -> bool:
    """Whether the reply's model is `requested` (OpenRouter may name a dated version of it,
    `openai/gpt-4o-mini-2024-07-18`, or drop a variant suffix such as `:free`)."""
    base = requested.split(":", 1)[0]
    name = answered.split(":", 1)[0]
    return name == base or name.startswith(base + "-")


def is_fallback(answered: str, primary: str, fallbacks: Sequence[str]) -> bool:
    """Whether a fallback model, not the primary, answered."""
    if answered == primary:
        return False
    if answered in fallbacks:
        return True
    if same_model(answered, primary):
        return False
    return any(same_model(answered, f) for f in fallbacks)


@lru_cache(maxsize=256)
def system_prompt(campaign_prompt: str | None, step: int, max_parts: int) -> str:
    """The system message: the campaign's prompt, the format's instructions and, for a
    follow-up step, the step's (made once per campaign, step and setting)."""
    system = (campaign_prompt or "").strip()
    system = (system + "\n\n" if system else "") + FORMAT_INSTRUCTIONS.replace(
        "{max_parts}", str(max_parts)
    )
    if step > 1:
        system += " " + STEP_INSTRUCTIONS.replace("{step}", str(step - 1))
    return system


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
        # Campaigns (and the budget) whose reached budget was logged: once each.
        self._budget_logged: set[tuple[UUID, float]] = set()

    async def write(self, job: Job, *, check: Callable[[], None]) -> tuple[str, list[str]]:
        """Ask the LLM and split its reply; a reply with nothing to send is asked again, with
        the quick retries' backoff, before the message fails for it. A campaign whose spend
        reached its budget makes the message wait (MustWait, 'budget') before any call."""
        budgeted = job.claim.campaign_budget is not None  # else no clock is read
        if budgeted and (wait := budget_wait(job, datetime.now(UTC))) is not None:
            self._log_budget(job)
            raise MustWait(wait)
        settings = self.settings
        for retry in range(settings.quick_retries + 1):
            reply = await self._generate(job, check)
            text = clean_text(reply.text)
            try:
                messages, problem = json_messages(text, required=reply.structured)
                if problem is not None:
                    raise InvalidJsonReply(problem)
                limits = {"max_parts": settings.max_parts, "max_chars": settings.max_part_chars}
                if messages is not None:  # parsed once, here
                    parts = split_messages(messages, **limits)
                else:
                    parts = split_reply(text, **limits)
                # JSON escapes (`\u0000`, a lone `\ud800`) decode to what Postgres refuses; the
                # text itself is clean, so without an escape there is nothing to clean.
                if "\\u" in text:
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

    def _log_budget(self, job: Job) -> None:
        assert job.claim.campaign_budget is not None
        key = (job.claim.campaign_id, job.claim.campaign_budget)
        if key in self._budget_logged:
            return
        self._budget_logged.add(key)
        log.warning(
            "campaign %s spent $%.4f of its $%.2f budget: its messages that need the LLM wait "
            "until the budget is raised",
            job.claim.campaign_id,
            job.claim.campaign_spent,
            job.claim.campaign_budget,
            extra={
                "action": "campaign_budget_reached",
                "campaign_id": str(job.claim.campaign_id),
                "spent_usd": job.claim.campaign_spent,
                "budget_usd": job.claim.campaign_budget,
            },
        )

    async def _generate(self, job: Job, check: Callable[[], None]) -> Reply:
        system = system_prompt(job.claim.campaign_prompt, job.claim.step, self.settings.max_parts)
        user = jsoncodec.dumps({"lead": job.plan.context})
        model = job.claim.campaign_model or self.settings.model
        fallbacks = tuple(
            job.claim.campaign_fallbacks
            if job.claim.campaign_fallbacks is not None
            else self.settings.fallback_models
        )
        metrics = self.calls.metrics

        def billed(usage: Usage) -> None:
            if usage.model is not None:
                fallback = usage.model != model and is_fallback(usage.model, model, fallbacks)
                if usage.fallback is not fallback:
                    usage = Usage(
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        usage.cost_usd,
                        usage.calls,
                        usage.model,
                        fallback,
                    )
            job.attempt.usage = job.attempt.usage + usage
            metrics.llm_usage(usage)

        if self._on_request is not None:
            self._on_request(job)
        return await self.calls.call(
            self.calls.llm,
            lambda: self.llm.generate(
                model=model, system=system, user=user, fallbacks=fallbacks, on_usage=billed
            ),
            check=check,
        )

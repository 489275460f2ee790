"""What the worker knows of a claimed message, and the writes that move it on: plain data,
shared by the store (which runs them) and the pure decisions (which choose them).

The writes and `Usage` are treated as values (never changed once made) but not declared
`frozen`: a frozen dataclass sets each field through `object.__setattr__`, and several of them
are made per message on the hot path."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(slots=True)
class Usage:
    """What billed LLM calls cost (tokens, US dollars as OpenRouter reports them), summed, and
    the model that answered the last of them (`fallback`: a fallback model, not the primary)."""

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


@dataclass
class Job:
    """One claimed message and what the worker knows of it."""

    id: UUID
    campaign_id: UUID
    lead_id: UUID
    attempts: int
    content: str | None
    parts: list[str] | None
    parts_sent: int
    scheduled_at: datetime
    campaign_prompt: str | None
    campaign_model: str | None
    campaign_instance: str | None
    campaign_status: str
    paced: bool = False
    # The campaign's gap in seconds (min, max), fractions allowed.
    gap: tuple[float, float] | None = None
    # The campaign's pool (None: its one instance), the number the message keeps (set once a
    # part may have reached the lead through it), and whether any number it may use has limits.
    campaign_instances: list[str] | None = None
    sender_instance: str | None = None
    # A follow-up step (2, 3, ...): the message of the step before, and the number the
    # sequence went through (the step goes through it too).
    step: int = 1
    # The campaign's window, days and cap are judged in each lead's zone (send_timezone 'lead').
    lead_clock: bool = False
    previous_id: UUID | None = None
    step_instance: str | None = None
    sender_limits: bool = False
    context: dict[str, Any] | None = None
    lost: bool = False
    claimed_at: float = field(default_factory=time.monotonic)
    # Until when (monotonic, a little early) our lease surely holds; renewals push it on.
    lease_until: float = 0.0
    # Inside a send or its record: a stop lets this finish instead of cancelling it.
    sending: bool = False
    # Sends of the current part that got no answer (from note_uncertain); on a resume, which
    # part that is and since when its first send may have left (the lookup before a resend).
    uncertain_sends: int = 0
    uncertain_part: int | None = None
    uncertain_at: datetime | None = None
    # The campaign's fallback models (None: LISTENER_FALLBACK_MODELS), its budget and what it
    # had spent when the message was claimed.
    campaign_fallbacks: list[str] | None = None
    campaign_budget: float | None = None
    campaign_spent: float = 0.0
    # Left `processing` by the system before the listener: looked up on Evolution (anything
    # sent to the lead since this time) before anything is sent.
    look_up_since: datetime | None = None
    # The LLM calls of this attempt not yet stored; they travel with the next write.
    usage: Usage = field(default_factory=Usage)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        parts, budget, spent = row["parts"], row.get("campaign_budget"), row.get("campaign_spent")
        return cls(
            id=row["id"],
            campaign_id=row["campaign_id"],
            lead_id=row["lead_id"],
            attempts=row["attempts"],
            content=row["content"],
            parts=list(parts) if parts is not None else None,
            parts_sent=row["parts_sent"],
            scheduled_at=row["scheduled_at"],
            campaign_prompt=row["campaign_prompt"],
            campaign_model=row["campaign_model"],
            campaign_instance=row["campaign_instance"],
            campaign_status=row["campaign_status"],
            paced=row["paced"],
            gap=(float(row["gap_min_seconds"]), float(row["gap_max_seconds"]))
            if row["gap_max_seconds"]
            else None,
            campaign_instances=row.get("campaign_instances"),
            sender_instance=row.get("sender_instance"),
            step=row.get("step") or 1,
            lead_clock=bool(row.get("lead_clock")),
            previous_id=row.get("previous_id"),
            step_instance=row.get("step_instance"),
            sender_limits=bool(row.get("sender_limits")),
            campaign_fallbacks=row.get("campaign_fallbacks"),
            campaign_budget=None if budget is None else float(budget),
            campaign_spent=0.0 if spent is None else float(spent),
            look_up_since=row.get("look_up_since"),
        )


@dataclass(slots=True)
class StoreParts:
    """Fix a message's text and parts before its first part goes out."""

    id: UUID
    text: str | None
    parts: list[str]
    usage: Usage | None = None


@dataclass(slots=True)
class RecordPart:
    """An accepted part; the final one completes the message as sent."""

    id: UUID
    part_no: int
    provider_id: str
    final: bool
    # The sender instance it went through (its delivery status is filed under it).
    instance: str = ""


@dataclass(slots=True)
class Finish:
    """Leave `processing` for another state; `refund` gives back the attempt of the claim."""

    id: UUID
    status: str
    scheduled_at: datetime | None
    refund: int
    last_error: str | None
    wait_reason: str | None = None
    usage: Usage | None = None

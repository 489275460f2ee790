"""What the worker knows of a claimed message (what the claim read, what the journey decided,
what the attempt spent), and the writes that move it on: plain data, shared by the store
(which runs them) and the pure decisions (which choose them).

The writes are treated as values (never changed once made) but not declared
`frozen`: a frozen dataclass sets each field through `object.__setattr__`, and several of them
are made per message on the hot path. The claim is frozen for the type checker only (`_value`):
frozen, its 25 fields took 2.3 us to set per message, 0.35 us as a plain dataclass."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, dataclass_transform
from uuid import UUID

from listener.providers.base import Usage

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def _value(cls: type[T]) -> type[T]:
    """A dataclass that mypy holds frozen (no field assigned after it is made) without the
    frozen dataclass's cost at run time (see the module's docstring); hashable as it was."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@_value
class Claim:
    """What the claim read: the message's row and its campaign's as they were when it was
    claimed. Never changed: a fact that changes later is read again where it matters (an
    opt-out right before the first part, a campaign's hold)."""

    id: UUID
    campaign_id: UUID
    lead_id: UUID
    attempts: int
    content: str | None
    scheduled_at: datetime
    campaign_prompt: str | None
    campaign_model: str | None
    campaign_instance: str | None
    campaign_status: str
    paced: bool = False
    # The campaign's gap in seconds (min, max), fractions allowed.
    gap: tuple[float, float] | None = None
    # The campaign's pool (None: its one instance).
    campaign_instances: list[str] | None = None
    # A follow-up step (2, 3, ...): the message of the step before, and the number the
    # sequence went through (the step goes through it too).
    step: int = 1
    previous_id: UUID | None = None
    step_instance: str | None = None
    # The campaign's window, days and cap are judged in each lead's zone (send_timezone 'lead').
    lead_clock: bool = False
    # The campaign's fallback models (None: LISTENER_FALLBACK_MODELS), its budget and what it
    # had spent when the message was claimed.
    campaign_fallbacks: list[str] | None = None
    campaign_budget: float | None = None
    campaign_spent: float = 0.0
    # Not begun, and its lead had a reply still being classified: it waits for the kind.
    reply_unclassified: bool = False
    claimed_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Plan:
    """What the journey decided and learned of the message: its parts and how many went out,
    the number it keeps, the lead's context, what an unanswered send left to look up. Starts
    as the claim found it; the journey (and the store, when a write tells it) moves it on."""

    parts: list[str] | None = None
    parts_sent: int = 0
    # The number the message keeps (set once a part may have reached the lead through it),
    # and whether any number it may use has limits.
    sender_instance: str | None = None
    sender_limits: bool = False
    context: dict[str, Any] | None = None
    # Sends of the current part that got no answer (from note_uncertain); on a resume, which
    # part that is and since when its first send may have left (the lookup before a resend).
    uncertain_sends: int = 0
    uncertain_part: int | None = None
    uncertain_at: datetime | None = None
    # Left `processing` by the system before the listener: looked up on Evolution (anything
    # sent to the lead since this time) before anything is sent; None once looked up.
    look_up_since: datetime | None = None


@dataclass(slots=True)
class Attempt:
    """What this attempt holds and spent: its lease, whether a send is under way, whether the
    lease was lost, and the LLM calls not stored yet (they travel with the next write). Written
    by the processor (lease, stop) and the journey (sends, usage)."""

    # Until when (monotonic, a little early) our lease surely holds; renewals push it on.
    lease_until: float = 0.0
    # Inside a send or its record: a stop lets this finish instead of cancelling it.
    sending: bool = False
    lost: bool = False
    usage: Usage = field(default_factory=Usage)


_CLAIM_FIELDS = frozenset(Claim.__dataclass_fields__)
_PLAN_FIELDS = frozenset(Plan.__dataclass_fields__)


@dataclass(slots=True)
class Job:
    """One claimed message: what the claim read (`claim`), what the journey decided (`plan`)
    and what this attempt holds and spent (`attempt`), so the writer of each field is evident."""

    claim: Claim
    plan: Plan
    attempt: Attempt = field(default_factory=Attempt)

    @property
    def id(self) -> UUID:
        return self.claim.id

    @classmethod
    def of(cls, **fields: Any) -> Job:
        """A job from flat fields, each sorted into its part (tests and benchmarks)."""
        claim = {k: v for k, v in fields.items() if k in _CLAIM_FIELDS}
        plan = {k: v for k, v in fields.items() if k in _PLAN_FIELDS}
        attempt = {k: v for k, v in fields.items() if k not in _CLAIM_FIELDS | _PLAN_FIELDS}
        return cls(Claim(**claim), Plan(**plan), Attempt(**attempt))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        parts, budget, spent = row["parts"], row.get("campaign_budget"), row.get("campaign_spent")
        claim = Claim(
            id=row["id"],
            campaign_id=row["campaign_id"],
            lead_id=row["lead_id"],
            attempts=row["attempts"],
            content=row["content"],
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
            step=row.get("step") or 1,
            previous_id=row.get("previous_id"),
            step_instance=row.get("step_instance"),
            lead_clock=bool(row.get("lead_clock")),
            campaign_fallbacks=row.get("campaign_fallbacks"),
            campaign_budget=None if budget is None else float(budget),
            campaign_spent=0.0 if spent is None else float(spent),
            reply_unclassified=bool(row.get("reply_unclassified")),
        )
        plan = Plan(
            parts=list(parts) if parts is not None else None,
            parts_sent=row["parts_sent"],
            sender_instance=row.get("sender_instance"),
            sender_limits=bool(row.get("sender_limits")),
            look_up_since=row.get("look_up_since"),
        )
        return cls(claim, plan)


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

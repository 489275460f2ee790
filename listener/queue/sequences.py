"""Pure: whether a follow-up step of a campaign's sequence still goes, and what the LLM is told
about the steps before it. The store reads the facts (queries.sql, step_check); this module
decides, with no I/O.

A step does not go (it is skipped, with the reason) when the lead opted out, was handed off to
a person, replied as a person since the sequence began (in a campaign with stop_on_reply), or
when the step before was not delivered (with delivery feedback on: no DELIVERY_ACK or READ on
its first part by the time this step is due).

A reply still being classified makes every message of its lead that has not begun wait for its
kind, step 1 included and in every campaign (`check_reply_kind`): the kind may stop it (a hand-off
or an opt-out stops the lead's messages everywhere, a person's reply those of stop_on_reply
campaigns), and a lead who just asked a question must not get a new campaign's first message
while the listener reads it. An away message lets them go; `reply_classified` wakes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from listener.flow import MustWait, Stop, Wait

# A message whose lead has a reply not classified yet looks again after this long (the kind,
# once known, wakes it sooner).
UNCLASSIFIED_RECHECK = timedelta(seconds=30)

STEP_INSTRUCTIONS = (
    "This is follow-up number {step} of a sequence: the lead has not answered. The user "
    "message's earlier_steps hold what was already sent to this lead in this campaign, in "
    "order. Follow up on them briefly; do not introduce yourself again or repeat them."
)


@dataclass(frozen=True, slots=True)
class StepFacts:
    """What the database knows, when a follow-up step is due, about its lead and sequence."""

    lead_exists: bool
    opted_out: bool
    handed_off: bool
    stop_on_reply: bool
    replied: bool
    delivered: bool
    earlier_steps: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StepFacts:
        return cls(
            lead_exists=bool(row["lead_exists"]),
            opted_out=bool(row["opted_out"]),
            handed_off=bool(row["handed_off"]),
            stop_on_reply=bool(row["stop_on_reply"]),
            replied=bool(row["replied"]),
            delivered=bool(row["delivered"]),
            earlier_steps=list(row["earlier_steps"] or []),
        )


def check_reply_kind(unclassified: bool, now: datetime) -> None:
    """Raise MustWait when the message's lead has a reply whose kind is still unknown (the
    claim says so only for a message that has not begun: one that has finishes)."""
    if unclassified:
        raise MustWait(Wait(now + UNCLASSIFIED_RECHECK, "reply unclassified"))


def check_step(facts: StepFacts, *, feedback_on: bool) -> None:
    """Raise Stop when the step must not go; return when it goes. A missing lead is left to
    the journey's own check."""
    if not facts.lead_exists:
        return
    if facts.opted_out:
        raise Stop("skipped", "skipped: the lead opted out")
    if facts.handed_off:
        raise Stop("skipped", "skipped: the lead was handed off")
    if facts.stop_on_reply and facts.replied:
        raise Stop("skipped", "skipped: the lead replied")
    if feedback_on and not facts.delivered:
        raise Stop("skipped", "skipped: the previous step was not delivered")


def step_context(context: dict[str, Any], step: int, facts: StepFacts) -> dict[str, Any]:
    """The lead's context for the LLM with the sequence's earlier steps (a copy: contexts are
    shared by the messages of one lead in a batch)."""
    return {**context, "step": step, "earlier_steps": facts.earlier_steps}

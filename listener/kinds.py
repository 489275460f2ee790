"""Pure: what a lead's reply can mean, as the classifier names it (`lead_replies.kind`)."""

from __future__ import annotations

# What a lead's reply can mean (lead_replies.kind), in the funnel's order.
KINDS = (
    "interested",
    "question",
    "not_now",
    "not_interested",
    "opt_out",
    "auto_reply",
    "wrong_person",
    "other",
)

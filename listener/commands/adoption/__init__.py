"""Adopting a database the listener did not make (the Edge Function's): `plan` compares the
user's tables with the schema the migration files make (`catalog`) and plans the user's rows
(`rows`) as `steps`, `apply` runs the plan and records what stays the user's (`Held`).
`listener migrate` drives it; README, "Moving from the Edge Function", is the operator's
account."""

from listener.commands.adoption.apply import ADOPTION_TABLE, Held, apply, held
from listener.commands.adoption.plan import ADOPTABLE_FUNCTIONS, plan
from listener.commands.adoption.rows import STATUSES
from listener.commands.adoption.steps import Plan, Step

__all__ = [
    "ADOPTABLE_FUNCTIONS",
    "ADOPTION_TABLE",
    "STATUSES",
    "Held",
    "Plan",
    "Step",
    "apply",
    "held",
    "plan",
]

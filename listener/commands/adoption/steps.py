"""What an adoption's plan is: its steps (a statement each, what it does to which table, when it
runs, the guard that leaves it out) and the plan (conflicts, steps, notes, what stays the
user's). Plain values: `plan` and `rows` make them, `apply` runs them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of the plan and what it does to which table. `transaction`: runs in the
    adoption's transaction (else on its own: CREATE INDEX CONCURRENTLY, VALIDATE). `guard`: a
    query counting the rows that would break the statement; it is skipped when the count is
    not zero (a constraint the user's rows do not meet is left out, and said)."""

    table: str
    what: str
    sql: str
    transaction: bool = True
    guard: str | None = None
    # The order steps run in: columns and defaults, then the rows, then constraints, indexes.
    phase: int = 0


@dataclass
class Plan:
    """What adopting this database takes (see the module's docstring)."""

    conflicts: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    held_functions: list[str] = field(default_factory=list)
    held_indexes: list[str] = field(default_factory=list)
    # The adopted tables' constraints and indexes the numbered files leave alone in this
    # migrate (Held.adopted).
    adopted: list[str] = field(default_factory=list)

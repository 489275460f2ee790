"""README says what the code emits: the outcome labels of `listener_messages_total`."""

from __future__ import annotations

import re
from pathlib import Path

import listener.queue.outcomes

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_outcome_label_the_metric_emits() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"`listener_messages_total\{outcome\}` \(([^:)]*)", readme)
    assert listed is not None
    labels = {item.strip() for item in listed.group(1).split(",")}
    source = Path(listener.queue.outcomes.__file__).read_text(encoding="utf-8")
    # A journey ends `sent`, or in an Outcome: a final status (failed, skipped) or one named.
    emitted = {"sent", "failed", "skipped", *re.findall(r'Outcome\("([a-z ]+)"', source)}
    assert emitted >= {"deferred", "held", "retry", "handed back"}
    assert labels == emitted, sorted(labels ^ emitted)

"""The `instance` label of /metrics stays bounded whatever names come from outside."""

from __future__ import annotations

from listener.metrics import MAX_INSTANCE_LABELS, MAX_OTHER_HELD, OTHER_INSTANCE, Metrics

REASONS = ("instance down", "instance restricted", "unknown to Evolution")


def held(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["instance"], s.labels["reason"]): s.value
        for metric in metrics.registry.collect()
        if metric.name == "listener_sender_held"
        for s in metric.samples
    }


def test_numbers_no_campaign_named_are_counted_under_one_label() -> None:
    metrics = Metrics()
    gauge = metrics.sender_held
    gauge.know(["a", "b"])
    gauge.set("a", 1, ["instance down"])
    for i in range(50):
        gauge.set(f"x{i}", 1, ["instance restricted"])
    gauge.set("x0", 0, REASONS)  # one of them is back
    values = held(metrics)
    assert {name for name, _ in values} == {"a", OTHER_INSTANCE}
    assert values[("a", "instance down")] == 1
    assert values[(OTHER_INSTANCE, "instance restricted")] == 49
    assert values.get((OTHER_INSTANCE, "instance down"), 0) == 0
    # A number held as a stranger that a campaign names later moves to its own label.
    gauge.know(["x1"])
    gauge.set("x1", 1, ["instance restricted"])
    values = held(metrics)
    assert values[("x1", "instance restricted")] == 1
    assert values[(OTHER_INSTANCE, "instance restricted")] == 48
    gauge.set("a", 0, REASONS)
    assert held(metrics)[("a", "instance down")] == 0


def test_the_labels_and_the_count_of_strangers_are_bounded() -> None:
    metrics = Metrics()
    gauge = metrics.sender_held
    gauge.know(f"n{i}" for i in range(MAX_INSTANCE_LABELS + 50))
    for i in range(MAX_INSTANCE_LABELS + 50):
        gauge.set(f"n{i}", 1, ["instance down"])
    for i in range(MAX_OTHER_HELD + 10):
        gauge.set(f"s{i}", 1, ["instance down"])
    names = {name for name, _ in held(metrics)}
    assert len(names) == MAX_INSTANCE_LABELS + 1 and OTHER_INSTANCE in names
    # The names past the label bound count as strangers; the count itself stops at its bound.
    assert held(metrics)[(OTHER_INSTANCE, "instance down")] == MAX_OTHER_HELD

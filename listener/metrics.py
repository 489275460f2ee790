"""Prometheus metrics and the `/healthz` endpoint, served by aiohttp on LISTENER_METRICS_PORT."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.aiohttp import make_aiohttp_handler

from listener.providers.base import Usage
from listener.serving import serve_app
from listener.tally import CounterValue, FastCounter, FastHistogram, HistogramValue

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric of one listener, in its own registry (so tests can make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The per-message metrics are plain numbers until scraped (listener/tally.py).
        self.messages = FastCounter(
            "listener_messages", "Messages by outcome", ["outcome"], registry=r
        )
        self.attempts = FastCounter("listener_attempts", "Attempts started (claims)", registry=r)
        self.parts_sent = FastCounter(
            "listener_parts_sent", "Parts accepted by the sender", registry=r
        )
        self.processing_seconds = FastHistogram(
            "listener_processing_seconds",
            "From claim to outcome, per message",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pickup_seconds = FastHistogram(
            "listener_pickup_seconds",
            "From a row's due time to its claim",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.renewal_seconds = FastHistogram(
            "listener_lease_renewal_seconds",
            "Lease renewals, from the turn to the database's answer (one that waits behind"
            " other work shows here; a renewal slower than the lease lets a lease run out)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("listener_in_flight", "Messages being worked on now", registry=r)
        self.provider_seconds = FastHistogram(
            "listener_provider_seconds",
            "Provider call latency",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "listener_provider_errors_total",
            "Provider errors by HTTP status (0 when there was none)",
            ["provider", "status"],
            registry=r,
        )
        self.holds = Counter(
            "listener_rate_limit_holds_total",
            "Times the listener held back from a provider",
            ["provider", "kind"],
            registry=r,
        )
        self.backlog = Gauge("listener_backlog_due", "Pending rows already due", registry=r)
        self.sender_held = SenderHeld(
            Gauge(
                "listener_sender_held",
                "1 while this listener holds a sender number (its messages wait), by why; else"
                " 0. A number no campaign of this listener named is counted under"
                f' instance="{OTHER_INSTANCE}" (how many such numbers it holds)',
                ["instance", "reason"],
                registry=r,
            )
        )
        self.batches = Counter(
            "listener_claims_total", "Claim queries that returned rows", registry=r
        )
        self.llm_cost = FastCounter(
            "listener_llm_cost_usd",
            "US dollars of the billed LLM calls, by the model that answered",
            ["model"],
            registry=r,
        )
        self.llm_tokens = FastCounter(
            "listener_llm_tokens",
            "Tokens of the billed LLM calls, by the model that answered and kind",
            ["model", "kind"],
            registry=r,
        )
        self.llm_calls = FastCounter(
            "listener_llm_calls",
            "Billed LLM calls, by the model that answered and whether it was a fallback",
            ["model", "fallback"],
            registry=r,
        )
        self._outcomes: dict[str, CounterValue] = {}
        self._latencies: dict[str, HistogramValue] = {}
        self._usage: dict[
            tuple[str, bool], tuple[CounterValue, CounterValue, CounterValue, CounterValue]
        ] = {}

    def outcome(self, outcome: str) -> CounterValue:
        """The counter of one outcome (children are cached: `labels()` is slow on a hot path)."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.messages.labels(outcome=outcome)
        return child

    def llm_usage(self, usage: Usage) -> None:
        """Count one billed LLM call's cost and tokens under the model that answered."""
        key = (usage.model or "unknown", bool(usage.fallback))
        children = self._usage.get(key)
        if children is None:
            model, fallback = key
            children = self._usage[key] = (
                self.llm_calls.labels(model=model, fallback="true" if fallback else "false"),
                self.llm_cost.labels(model=model),
                self.llm_tokens.labels(model=model, kind="prompt"),
                self.llm_tokens.labels(model=model, kind="completion"),
            )
        calls, cost, prompt, completion = children
        calls.inc(usage.calls)
        cost.inc(usage.cost_usd)
        prompt.inc(usage.prompt_tokens)
        completion.inc(usage.completion_tokens)

    def provider_latency(self, provider: str) -> HistogramValue:
        """The latency histogram of one provider (cached like `outcome`)."""
        child = self._latencies.get(provider)
        if child is None:
            child = self._latencies[provider] = self.provider_seconds.labels(provider=provider)
        return child


#: The `instance` label of a number none of this listener's campaigns named (a name from
#: outside: a webhook's), and how many names may ever be labels of their own.
OTHER_INSTANCE = "other"
MAX_INSTANCE_LABELS = 200
#: How many numbers from outside are counted under OTHER_INSTANCE at most.
MAX_OTHER_HELD = 10_000


class SenderHeld:
    """`listener_sender_held{instance,reason}` whose label values stay bounded whatever names
    come from outside: a number gets a label of its own once a campaign this listener works on
    names it (`know`; at most MAX_INSTANCE_LABELS names), and any other one held is counted
    under OTHER_INSTANCE, the gauge then saying how many such numbers are held, by reason."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._known: set[str] = set()
        self._other: dict[str, str] = {}  # numbers from outside held now -> reason
        self._held: collections.Counter[str] = collections.Counter()  # ... how many, by reason

    def know(self, names: Iterable[str]) -> None:
        """The numbers of a campaign's pool (the listener's own configuration)."""
        for name in names:
            if name not in self._known and len(self._known) < MAX_INSTANCE_LABELS:
                self._known.add(name)

    def set(self, name: str, value: int, reasons: Iterable[str]) -> None:
        """The number is held (1) for its one reason, or no longer (0) for every reason."""
        reasons = tuple(reasons)
        if name in self._known:
            for why in reasons:
                self.gauge.labels(instance=name, reason=why).set(value)
            self._count(name, None)  # (held as a stranger before a campaign named it)
        elif value and reasons:
            if name in self._other or len(self._other) < MAX_OTHER_HELD:
                self._count(name, reasons[0])
        else:
            self._count(name, None)

    def _count(self, name: str, reason: str | None) -> None:
        """Count a number from outside as held for `reason`, or as not held (None)."""
        before = self._other.pop(name, None)
        if reason is not None:
            self._other[name] = reason
        if before == reason:
            return
        for why, step in ((before, -1), (reason, 1)):
            if why is not None:
                self._held[why] += step
                self.gauge.labels(instance=OTHER_INSTANCE, reason=why).set(self._held[why])


@dataclass
class Health:
    """What /healthz reports: the database reachable, LISTEN alive, the loop not stuck.

    The claim loop ticks on every turn; it is stuck when it has not ticked for `stuck_after`
    seconds, unless `waiting` says it waits on purpose (every slot busy, a provider hold)."""

    db_ok: bool = False
    listen_ok: bool = False
    last_tick: float = field(default_factory=time.monotonic)
    last_error: str = ""
    stuck_after: float = 30.0
    waiting: Callable[[], bool] | None = None

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    @property
    def loop_ok(self) -> bool:
        if time.monotonic() - self.last_tick < self.stuck_after:
            return True
        return self.waiting is not None and self.waiting()

    @property
    def ok(self) -> bool:
        return self.db_ok and self.listen_ok and self.loop_ok

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "database": self.db_ok,
            "listen": self.listen_ok,
            "loop": self.loop_ok,
            "last_error": " ".join(self.last_error.split()),  # psycopg's errors span lines
        }


async def serve(
    metrics: Metrics,
    health: Health,
    host: str,
    port: int,
    *,
    routes: Iterable[web.RouteDef] = (),
) -> web.AppRunner:
    """Start the HTTP server; the caller stops it with `runner.cleanup()`. `routes` are the
    status page's (`GET /` and its stylesheet, listener/web/): only on this port, which
    operators keep private."""

    async def health_view(_: web.Request) -> web.Response:
        return web.json_response(health.as_dict(), status=200 if health.ok else 503)

    app = web.Application()
    # prometheus_client's own handler: content negotiation (OpenMetrics) and gzip included.
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.registry))
    app.router.add_get("/healthz", health_view)
    app.router.add_routes(routes)
    runner = await serve_app(app, host, port, "LISTENER_METRICS")
    log.info("metrics on %s:%s", host, port, extra={"action": "metrics_started", "port": port})
    return runner

"""The delivery-feedback counters (served on /metrics): what the receiver stored and refused, what
the inbox applied, which instances the restriction check held."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from listener.feedback.events import STATUSES

# The events the receiver stores (feedback.parse reads every other event as none).
EVENTS = ("messages.update", "messages.upsert", "send.message", "connection.update")


class WebhookMetrics:
    """The feedback counters, in the listener's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "listener_webhook_events_total",
            "Webhook events stored, by event",
            ["event"],
            registry=registry,
        )
        self.rejected = Counter(
            "listener_webhook_rejected_total",
            "Webhook requests refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.statuses = Counter(
            "listener_delivery_statuses_total",
            "Delivery statuses received, by status",
            ["status"],
            registry=registry,
        )
        self.replies = Counter("listener_replies_total", "Replies from leads", registry=registry)
        self.opt_outs = Counter(
            "listener_opt_outs_total", "Replies that opted a lead out", registry=registry
        )
        self.skipped = Counter(
            "listener_reply_skips_total",
            "Pending messages skipped because their lead replied or opted out",
            registry=registry,
        )
        self.clamped = Counter(
            "listener_event_times_clamped_total",
            "Webhook event times moved to a true bound: later than their receipt (future), or"
            " before the send they are about (before_send)",
            ["reason"],
            registry=registry,
        )
        self.restrictions = Counter(
            "listener_instance_restrictions_total",
            "Instances held because WhatsApp restricted or logged out the number",
            ["reason"],
            registry=registry,
        )
        # The children the request path counts with, looked up once (a lookup costs more than
        # the increment).
        self.event_count = {name: self.events.labels(event=name) for name in EVENTS}
        self.status_count = {status: self.statuses.labels(status=status) for status in STATUSES}

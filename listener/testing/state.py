"""What the fake OpenRouter + Evolution server is set to answer and what it has recorded:
`FakeState`, the fields of `FakeProviders` (see the package's docstring), with the scripts,
latencies, faults and per-instance states a test sets, the requests, sends, timings and
webhooks the server records, and `stats()` / `reset()` over them. The handlers that read and
write them are in `listener.testing.fakes`."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from listener.testing.replies import Reply, Seen


@dataclass
class FakeState:
    """The settings and the records of `FakeProviders` (see the module's docstring)."""

    url: str = ""
    # Every request as it came, whatever its path; the LLM requests (body and headers); the
    # send requests (their body, whether accepted, the id given). With `keep_requests` off
    # (the benchmarks' process, lighter on the CPU), only `llm_calls` and `send_calls` count.
    keep_requests: bool = True
    seen: list[Seen] = field(default_factory=list)
    llm_requests: list[dict[str, Any]] = field(default_factory=list)
    sends: list[dict[str, Any]] = field(default_factory=list)
    llm_calls: int = 0
    send_calls: int = 0
    llm_script: deque[Reply] = field(default_factory=deque)
    send_script: deque[Reply] = field(default_factory=deque)
    # Answers to every request whatever its path, before the endpoints (`script()`).
    replies: list[Reply] = field(default_factory=list)
    llm_delay: float = 0.0
    send_delay: float = 0.0
    # When set, each default LLM answer / successful send takes a time drawn uniformly from
    # this range (seconds) instead of llm_delay / send_delay; with `seed`, drawn from a
    # generator seeded by the lead's id / the number and text (the same latency per message
    # whatever order the requests arrive in). Each applied goes to llm_delays / send_delays.
    llm_delay_range: tuple[float, float] | None = None
    send_delay_range: tuple[float, float] | None = None
    seed: int | None = None
    llm_delays: list[float] = field(default_factory=list)
    send_delays: list[float] = field(default_factory=list)
    # Leads whose name starts with this (when set): CLOCK_MONOTONIC ns at which their LLM
    # request arrived, by name. Also the first LLM request's and the last send's times.
    arrival_prefix: str = ""
    arrivals: dict[str, int] = field(default_factory=dict)
    # With `record_send_times`: per instance, the CLOCK_MONOTONIC time (ns) each sendText
    # arrived (the pool benchmark's gaps).
    record_send_times: bool = False
    send_times: dict[str, list[int]] = field(default_factory=dict)
    first_ns: int = 0
    last_ns: int = 0
    state_checks: int = 0
    # Instances that cannot send now, by how (UNREADY's keys): their sends and connectionState
    # answer as Evolution 2.3.7 does for them (`states` still overrides the connectionState).
    unready: dict[str, str] = field(default_factory=dict)
    # Instances Evolution does not know (a mistyped name, a deleted instance): their sends and
    # connectionState answer its 404 (`states` still overrides the connectionState).
    missing: set[str] = field(default_factory=set)
    # connectionState calls per instance.
    state_calls: dict[str, int] = field(default_factory=dict)
    reply_parts: int = 1
    state: str = "open"
    # connectionState per instance (sender pools); instances not named here answer `state`.
    states: dict[str, str] = field(default_factory=dict)
    on_llm: Callable[[dict[str, Any]], None] | None = None
    # When set, every LLM answer waits until the test sets it (a step held as long as the test
    # needs, without racing a delay).
    llm_release: asyncio.Event | None = None
    # Called with each accepted part's record just before its 201 is written (e.g. to cut the
    # listener's database connections between the provider's answer and the record).
    on_accept: Callable[[dict[str, Any]], None] | None = None
    # Fault injection: called with "llm" or "send" per request; returns None (answer normally),
    # "429", "500", "timeout" (answer 504 after `timeout_sleep`) or "drop" (close the socket).
    # A faulted send is never accepted, so it cannot be delivered twice.
    chaos: Callable[[str], str | None] | None = None
    timeout_sleep: float = 0.5
    faults: int = 0
    # Cancel a handler whose client hung up (read timeouts, trickling answers), and give
    # handlers still running half a second at teardown.
    cancel_on_hangup: bool = False
    # Delivery feedback: the listener's receiver the fake posts real-shaped webhooks to, and the
    # secret it signs their JWT with (Evolution's `jwt_key` header option).
    webhook_url: str = ""
    webhook_secret: str = ""
    # Seconds added to each webhook's `date_time`: Evolution writes the server's local time with
    # a `Z` appended, so under its Dockerfile's TZ=America/Sao_Paulo it is -3 hours, as a stock
    # server posts it (0: a server whose TZ is UTC).
    date_time_skew: float = -3 * 3600.0
    # Post `send.message` after each accepted send, as Evolution does.
    emit_sent: bool = False
    # The next sends are delivered (and `send.message` posted when emit_sent) but answered 504
    # after `timeout_sleep`: a send whose answer never came although it went out.
    deliver_then_timeout: int = 0
    # Every webhook posted: (HTTP status answered, body).
    webhook_posts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # Bodies of POST /webhook/set/{instance} and of POST /chat/findMessages/{instance}.
    webhook_sets: list[dict[str, Any]] = field(default_factory=list)
    find_requests: list[dict[str, Any]] = field(default_factory=list)
    # What findMessages finds: the accepted sends (newest first) unless `find_nothing`.
    find_nothing: bool = False
    # Numbers Evolution knows by a lid (number -> lid digits): their sends are stored under
    # `key.remoteJid` "<lid>@lid", with the number in `key.remoteJidAlt`.
    lid_chats: dict[str, str] = field(default_factory=dict)
    # What a default LLM answer reports: the model that answered (None: the request's `model`)
    # and, when the request asks for it (`usage.include`), this usage.
    answer_model: str | None = None
    llm_usage: dict[str, Any] = field(
        default_factory=lambda: {"prompt_tokens": 120, "completion_tokens": 30, "cost": 0.0001}
    )
    # Reply classifications asked (their bodies), and answers to give them first.
    classify_requests: list[dict[str, Any]] = field(default_factory=list)
    classify_script: deque[Reply] = field(default_factory=deque)
    _counter: int = 0

    def script(self, *replies: Reply) -> None:
        """Answer every request, whatever its path, with these in order; the last repeats."""
        self.replies = list(replies)

    def accepted(self) -> list[dict[str, Any]]:
        return [s for s in self.sends if s["accepted"]]

    def stats(self) -> dict[str, Any]:
        """What `GET /stats` answers (the benchmarks)."""
        return {
            "llm_requests": self.llm_calls,
            "sends": self.send_calls,
            "state_checks": self.state_checks,
            "llm_delays": self.llm_delays,
            "send_delays": self.send_delays,
            "arrivals": self.arrivals,
            "send_times": self.send_times,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }

    def reset(self) -> None:
        """Forget what was received (`POST /reset`); the scripts and settings stay."""
        for seen in (self.llm_requests, self.sends, self.seen, self.llm_delays, self.send_delays):
            seen.clear()
        self.arrivals.clear()
        self.send_times.clear()
        self.state_calls.clear()
        self.first_ns = self.last_ns = self.state_checks = self.llm_calls = self.send_calls = 0

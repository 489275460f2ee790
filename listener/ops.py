"""The operator commands' work, apart from their command lines: re-queue failed messages
(`listener replay`), read the monitoring figures (`listener stats`) and run the whole pipeline
on sample data (`listener demo`). Each is an async function on a database URL, so tests call
them directly; `listener.commands` only parses options and prints."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from listener.db import connect
from listener.errors import ConfigurationError, DatabaseError, ListenerError
from listener.queries import q
from listener.settings import Settings

if TYPE_CHECKING:
    from listener.daemon import Daemon


#: Statuses a replay takes back into the queue; every other one is refused.
REPLAYABLE = ("failed", "skipped")

#: The order statuses are shown in.
STATUS_ORDER = ("pending", "processing", "sent", "failed", "skipped")


Connection = psycopg.AsyncConnection[dict[str, Any]]


@contextlib.asynccontextmanager
async def _connection(url: str, what: str) -> AsyncIterator[Connection]:
    """One autocommit connection whose driver errors become a one-line DatabaseError."""
    conn = await connect(url)
    try:
        yield conn
    except psycopg.Error as exc:
        raise DatabaseError(f"{what} failed: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        await conn.close()


async def _one(conn: Connection, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The single row the named query returns."""
    row = await (await conn.execute(q(name), params)).fetchone()
    if row is None:
        raise DatabaseError(f"query {name} returned no row")
    return row


# --------------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayFilter:
    """Which messages a replay takes back. Empty filters match everything, which is only
    allowed with `everything` (`--all`), so a bare `listener replay` cannot re-queue it all."""

    campaign_id: UUID | None = None
    run_id: UUID | None = None
    ids: tuple[UUID, ...] = ()
    since: timedelta | None = None
    include_skipped: bool = False
    everything: bool = False

    @property
    def statuses(self) -> tuple[str, ...]:
        return REPLAYABLE if self.include_skipped else ("failed",)

    @property
    def filtered(self) -> bool:
        return bool(self.campaign_id or self.run_id or self.ids or self.since)

    def check(self) -> None:
        """Refuse a replay without any filter unless `everything` says it is meant."""
        if not self.filtered and not self.everything:
            raise ConfigurationError(
                "refusing to re-queue without a filter: give --campaign, --run, --id or "
                "--since, or --all to re-queue every failed message"
            )

    def describe(self) -> str:
        """One line saying what the replay takes back, for the operator to check."""
        what = " and ".join(self.statuses) + " messages"
        conditions = []
        if self.campaign_id:
            conditions.append(f"of campaign {self.campaign_id}")
        if self.run_id:
            conditions.append(f"of run {self.run_id}")
        if self.ids:
            conditions.append(f"among {len(self.ids)} named id(s)")
        if self.since:
            conditions.append(f"that last changed in the last {format_duration(self.since)}")
        if not conditions:
            conditions.append("(all of them)")
        return f"re-queue {what} {', '.join(conditions)}"

    def params(self) -> dict[str, Any]:
        return {
            "statuses": list(self.statuses),
            "campaign_id": self.campaign_id,
            "run_id": self.run_id,
            "ids": list(self.ids) or None,
            "since": self.since,
        }


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did (or, in a dry run, would do)."""

    dry_run: bool
    by_status: dict[str, int]
    #: Named ids left alone, with their status (processing, sent, pending, or skipped
    #: without --include-skipped).
    refused: list[tuple[UUID, str]] = field(default_factory=list)
    #: Named ids with no such message.
    missing: list[UUID] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.by_status.values())


async def replay(url: str, filters: ReplayFilter, *, dry_run: bool = False) -> ReplayResult:
    """Re-queue the messages `filters` selects: pending, due now, attempts back to 0, error
    cleared, stored text and accepted parts kept. The update trigger wakes running listeners."""
    filters.check()
    params = filters.params()
    async with _connection(url, "replay") as conn, conn.transaction():
        refused: list[tuple[UUID, str]] = []
        missing: list[UUID] = []
        if filters.ids:
            cur = await conn.execute(q("replay_named"), {"ids": list(filters.ids)})
            found = {row["id"]: row["status"] for row in await cur.fetchall()}
            for message_id in filters.ids:
                status = found.get(message_id)
                if status is None:
                    missing.append(message_id)
                elif status not in filters.statuses:
                    refused.append((message_id, status))
        cur = await conn.execute(q("replay_preview" if dry_run else "replay_requeue"), params)
        by_status = {row["status"]: row["n"] for row in await cur.fetchall()}
    return ReplayResult(dry_run=dry_run, by_status=by_status, refused=refused, missing=missing)


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """The seed's monitoring figures (DEPLOY-V8 step 4.2) over a window, plus retries and the
    due backlog."""

    window: timedelta
    now: datetime
    total_sent: int
    avg_processing_seconds: float | None
    per_minute: list[tuple[datetime, int]]
    by_status: list[tuple[str, int, float]]
    retried: int
    waiting_retry: int
    due_backlog: int
    oldest_due_seconds: float | None
    waiting: list[tuple[str, UUID, str, int, datetime]] = field(default_factory=list)

    @property
    def since(self) -> datetime:
        return self.now - self.window

    @property
    def rate_per_minute(self) -> float:
        """Messages sent per minute, averaged over the whole window."""
        minutes = self.window.total_seconds() / 60
        return self.total_sent / minutes if minutes > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        """One JSON-ready object: numbers as numbers, times in ISO 8601."""
        return {
            "window_seconds": self.window.total_seconds(),
            "since": self.since.isoformat(),
            "now": self.now.isoformat(),
            "sent": {
                "total": self.total_sent,
                "avg_processing_seconds": self.avg_processing_seconds,
                "per_minute_rate": round(self.rate_per_minute, 3),
                "per_minute": [
                    {"minute": minute.isoformat(), "count": count}
                    for minute, count in self.per_minute
                ],
            },
            "by_status": {
                status: {"count": count, "percentage": percentage}
                for status, count, percentage in self.by_status
            },
            "retries": {"retried": self.retried, "waiting_retry": self.waiting_retry},
            "queue": {
                "due_backlog": self.due_backlog,
                "oldest_due_seconds": self.oldest_due_seconds,
            },
            "waiting": [
                {
                    "campaign": name,
                    "campaign_id": str(campaign_id),
                    "reason": reason,
                    "count": count,
                    "next_at": next_at.isoformat(),
                }
                for name, campaign_id, reason, count, next_at in self.waiting
            ],
        }


async def collect_stats(url: str, window: timedelta) -> Stats:
    """Run the monitoring queries in one transaction, so they share one `now()`."""
    if window <= timedelta(0):
        raise ConfigurationError("the stats window must be longer than zero")
    params = {"window": window}
    async with _connection(url, "stats") as conn, conn.transaction():
        processing = await _one(conn, "stats_processing", params)
        minutes = await (await conn.execute(q("stats_per_minute"), params)).fetchall()
        statuses = await (await conn.execute(q("stats_by_status"), params)).fetchall()
        queue = await _one(conn, "stats_queue", params)
        waiting = await (await conn.execute(q("stats_waiting"))).fetchall()
    rank = {status: index for index, status in enumerate(STATUS_ORDER)}
    by_status = sorted(
        ((row["status"], row["count"], row["percentage"]) for row in statuses),
        key=lambda item: (rank.get(item[0], len(rank)), item[0]),
    )
    return Stats(
        window=window,
        now=processing["now"],
        total_sent=processing["total_messages"],
        avg_processing_seconds=processing["avg_processing_seconds"],
        per_minute=[(row["minute"], row["messages_per_minute"]) for row in minutes],
        by_status=by_status,
        retried=queue["retried"],
        waiting_retry=queue["waiting_retry"],
        due_backlog=queue["due_backlog"],
        oldest_due_seconds=queue["oldest_due_seconds"],
        waiting=[
            (r["campaign"], r["campaign_id"], r["reason"], r["count"], r["next_at"])
            for r in waiting
        ],
    )


def format_duration(value: timedelta) -> str:
    """`1h`, `30m`, `1h30m`, `45s`, `250ms`: the shortest exact spelling of a window."""
    ms = round(value.total_seconds() * 1000)
    if ms % 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    text = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            text += f"{amount}{unit}"
    return text or "0s"


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

DEMO_PROMPT = (
    "Você é um SDR simpático de uma agência de marketing digital. Escreva uma primeira mensagem "
    "de WhatsApp curta e pessoal para o lead, citando a empresa e a cidade dele, e convide para "
    "uma conversa rápida de 15 minutos. Sem emojis em excesso e sem parecer spam."
)

_FIRST_NAMES = (
    "Ana", "Bruno", "Camila", "Diego", "Eduarda", "Felipe", "Gabriela", "Henrique", "Isabela",
    "João", "Juliana", "Lucas", "Mariana", "Matheus", "Natália", "Pedro", "Rafaela", "Rodrigo",
    "Sofia", "Thiago", "Vanessa", "Vinícius", "Larissa", "Gustavo", "Beatriz", "Carlos",
)  # fmt: skip
_SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
    "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Barbosa", "Rocha",
)  # fmt: skip
#: City and its area code (DDD), so the sample phones look right.
_CITIES = (
    ("São Paulo", "11"), ("Campinas", "19"), ("Rio de Janeiro", "21"), ("Belo Horizonte", "31"),
    ("Curitiba", "41"), ("Porto Alegre", "51"), ("Brasília", "61"), ("Salvador", "71"),
    ("Recife", "81"), ("Fortaleza", "85"), ("Florianópolis", "48"), ("Goiânia", "62"),
)  # fmt: skip
#: Segment and company names in it.
_COMPANIES = (
    ("padaria", ("Padaria Pão Dourado", "Panificadora Trigo Bom", "Padaria Estrela")),
    ("clínica odontológica", ("Sorriso Pleno Odontologia", "OdontoVida", "Clínica Dente Feliz")),
    ("academia", ("Academia Corpo em Forma", "Studio Movimento", "Fit Center")),
    ("imobiliária", ("Imobiliária Casa Nova", "Lar Ideal Imóveis", "Chave de Ouro Imóveis")),
    ("contabilidade", ("Contábil Exata", "Escritório Balanço Certo", "Conta Fácil")),
    ("pet shop", ("Pet Feliz", "Mundo Animal", "Cão & Cia")),
    ("restaurante", ("Restaurante Sabor da Terra", "Cantina Nonna Rosa", "Bistrô do Porto")),
    ("oficina mecânica", ("Auto Center Pistão", "Oficina Roda Viva", "Mecânica Confiança")),
)  # fmt: skip
_NOTES = (
    "Pediu orçamento de site pelo formulário.",
    "Seguidor ativo no Instagram; curtiu posts sobre anúncios.",
    "Baixou o e-book de marketing local.",
    "Indicado por um cliente atual.",
    "Visitou a página de preços duas vezes.",
    None,
)
#: Messages inserted with `content`: sent as they are, without the LLM.
_CONTENTS = (
    "Oi! Aqui é a Carol, da Agência Norte. Separei três ideias para trazer mais clientes "
    "para a sua empresa pelo Google. Posso te mandar?",
    "Olá! Vi que vocês abriram uma nova unidade, parabéns! Temos um pacote de lançamento "
    "com anúncios locais. Topa uma conversa de 15 minutos esta semana?",
)


@dataclass(frozen=True)
class Progress:
    """The demo run's counts, from the trigger-kept columns of `campaign_runs`."""

    total: int
    sent: int
    failed: int
    skipped: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


@dataclass(frozen=True)
class DemoResult:
    """What the demo did, for the command to print."""

    campaign_id: UUID
    run_id: UUID
    progress: Progress
    elapsed: float
    stats: Stats
    samples: list[tuple[str, str]]
    interrupted: bool = False


def sample_leads(count: int, rng: random.Random | None = None) -> list[dict[str, Any]]:
    """`count` plausible Brazilian leads; the second one opted out (its message is skipped)."""
    rng = rng or random.Random()
    leads = []
    for index in range(count):
        city, ddd = rng.choice(_CITIES)
        segment, companies = rng.choice(_COMPANIES)
        leads.append(
            {
                "id": uuid.uuid4(),
                "name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_SURNAMES)}",
                "phone": f"55{ddd} 9{rng.randrange(10_000):04d} {rng.randrange(10_000):04d}",
                "company": rng.choice(companies),
                "city": city,
                "segment": segment,
                "notes": rng.choice(_NOTES),
                "opted_out": index == 1,
            }
        )
    return leads


async def demo_guard(url: str) -> None:
    """Refuse to run the demo's sandbox listener where it could do harm: with another listener
    connected (it would send the sample messages for real) or with messages already queued
    (the sandbox would mark them sent)."""
    async with _connection(url, "demo") as conn:
        row = await _one(conn, "demo_guard", {})
    if row["listeners"]:
        raise ConfigurationError(
            "another listener is connected to this database and would send the demo's sample "
            "messages for real; run the demo on its own database (unset DATABASE_URL)"
        )
    if row["queued"]:
        raise ConfigurationError(
            f"this database has {row['queued']} queued messages that the demo's sandbox would "
            "take; run the demo on its own database (unset DATABASE_URL)"
        )


async def _create_sample(conn: Connection, leads: list[dict[str, Any]]) -> tuple[UUID, UUID]:
    """Insert the campaign, its run, the leads and one message per lead (one statement)."""
    name = f"Demo {datetime.now().astimezone():%Y-%m-%d %H:%M:%S}"
    campaign_id: UUID = (await _one(conn, "demo_campaign", {"name": name, "prompt": DEMO_PROMPT}))[
        "id"
    ]
    run_id: UUID = (await _one(conn, "demo_run", {"campaign_id": campaign_id}))["id"]
    columns = {
        "ids": "id", "names": "name", "phones": "phone", "companies": "company", "cities": "city",
        "segments": "segment", "notes": "notes", "opted_out": "opted_out",
    }  # fmt: skip
    await conn.execute(
        q("demo_leads"), {name: [lead[c] for lead in leads] for name, c in columns.items()}
    )
    contents: list[str | None] = [None] * len(leads)
    for offset, text in enumerate(_CONTENTS):
        index = 2 + offset * 5
        if index < len(leads):
            contents[index] = text
    await conn.execute(
        q("demo_messages"),
        {
            "campaign_id": campaign_id,
            "run_id": run_id,
            "lead_ids": [lead["id"] for lead in leads],
            "contents": contents,
        },
    )
    return campaign_id, run_id


async def _progress(conn: Connection, run_id: UUID) -> Progress:
    row = await _one(conn, "demo_progress", {"run_id": run_id})
    return Progress(
        total=row["total_count"],
        sent=row["sent_count"],
        failed=row["failed_count"],
        skipped=row["skipped_count"],
    )


async def run_demo(
    url: str,
    settings: Settings,
    *,
    leads: int = 30,
    keep: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    timeout: float = 45.0,
    poll: float = 0.1,
) -> DemoResult:
    """Run a sandbox listener in this process, insert a sample campaign with `leads` leads,
    report the run's counts every `poll` seconds until every message has an outcome, stop the
    listener (drained) and gather the stats and a few delivered parts. Unless `keep`, the
    sample rows are deleted afterwards. `stop` ends the wait early (Ctrl-C)."""
    if leads < 1:
        raise ConfigurationError("the demo needs at least one lead")
    stop = stop or asyncio.Event()
    from listener.daemon import Daemon  # aiohttp, APScheduler...: only the demo needs them

    daemon = Daemon(settings, url)
    task = asyncio.create_task(daemon.run(), name="demo-listener")
    created: tuple[UUID, UUID] | None = None
    try:
        try:
            async with _connection(url, "demo") as conn:
                await _wait_listening(daemon, task)
                started = time.monotonic()
                created = await _create_sample(conn, sample_leads(leads))
                interrupted = await _follow(
                    conn, created[1], task, stop, on_progress, started + timeout, poll
                )
                elapsed = time.monotonic() - started
        finally:
            await _stop_daemon(daemon, task, settings)
        campaign_id, run_id = created
        async with _connection(url, "demo") as conn:
            progress = await _progress(conn, run_id)
            cur = await conn.execute(q("demo_samples"), {"run_id": run_id, "limit": 5})
            samples = [(row["number"], row["text"]) for row in await cur.fetchall()]
        # The stats window covers the demo, rounded up to whole seconds.
        stats = await collect_stats(url, timedelta(seconds=int(elapsed) + 2))
    finally:
        if created is not None and not keep:
            async with _connection(url, "demo cleanup") as conn:
                await conn.execute(q("demo_cleanup"), {"campaign_id": created[0]})
    return DemoResult(
        campaign_id=campaign_id,
        run_id=run_id,
        progress=progress,
        elapsed=elapsed,
        stats=stats,
        samples=samples,
        interrupted=interrupted,
    )


async def _follow(
    conn: Connection,
    run_id: UUID,
    task: asyncio.Task[None],
    stop: asyncio.Event,
    on_progress: Callable[[Progress], None] | None,
    deadline: float,
    poll: float,
) -> bool:
    """Poll the run's counts until every message has an outcome; True when `stop` cut it short."""
    while True:
        progress = await _progress(conn, run_id)
        if on_progress is not None:
            on_progress(progress)
        if progress.finished:
            return False
        if stop.is_set():
            return True
        if task.done():
            task.result()
            raise ListenerError("the demo's listener stopped before the demo finished")
        if time.monotonic() > deadline:
            raise ListenerError(
                f"the demo did not finish in time ({progress.done}/{progress.total} messages done)"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll)


async def _stop_daemon(daemon: Daemon, task: asyncio.Task[None], settings: Settings) -> None:
    """Ask the demo's listener to stop and wait for it to drain; its database errors become
    one-line DatabaseErrors."""
    daemon.request_stop()
    try:
        await asyncio.wait_for(task, timeout=settings.shutdown_grace.total_seconds() + 10)
    except psycopg.Error as exc:
        raise DatabaseError(f"the demo's listener failed: {exc}") from exc


async def _wait_listening(daemon: Daemon, task: asyncio.Task[None], limit: float = 15.0) -> None:
    """Wait until the listener's LISTEN is in place, so the sample insert wakes it."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if daemon.listener is not None and daemon.listener.connected.is_set():
            return
        if task.done():
            task.result()
            raise ListenerError("the demo's listener stopped while starting")
        await asyncio.sleep(0.01)
    raise ListenerError(f"the demo's listener did not start listening within {limit:.0f}s")

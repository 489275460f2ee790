"""One message's journey, from its claim to an outcome: check it may go, pace it, its parts
(stored ones on a resume, else its content or the LLM, stored before the first part goes out),
the lookup of a send that got no answer, the number and its slot, then each part sent and
recorded in order. What a failure means is the pure `outcomes.outcome`; the store writes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from listener.errors import (
    DataRefusedError,
    InstanceClosedError,
    InstanceMissingError,
    MayHaveBeenDelivered,
    ProviderError,
    UncertainDeliveryError,
)
from listener.flow import GateClosed, MustWait, Stop, StopBetweenParts
from listener.jobs import Job, RecordPart, StoreParts
from listener.metrics import Metrics
from listener.pacing.health import phone_zones
from listener.pacing.pool import QUIET_WAITS, Senders
from listener.phones import mask_phone, whatsapp_forms
from listener.providers.base import LeftBehindFinder, Sender, SentFinder, SentPart
from listener.queue.calls import ProviderCalls
from listener.queue.outcomes import MAX_UNCERTAIN_SENDS, Outcome, check_start, outcome
from listener.queue.sequences import StepFacts, check_reply_kind, check_step, step_context
from listener.queue.split import UnsplittableReply, split_content
from listener.queue.store import LeaseLost, Store
from listener.queue.writes import is_connection_error
from listener.queue.writing import Writer
from listener.settings import Settings

log = logging.getLogger(__name__)


# The errors a message's journey expects; anything else is a bug, logged with its traceback.
_EXPECTED = (
    ProviderError,
    UnsplittableReply,
    Stop,
    StopBetweenParts,
    MustWait,
    GateClosed,
    DataRefusedError,
)


class Journey:
    """Takes one claimed message to an outcome; shared by every message of a listener."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        calls: ProviderCalls,
        writer: Writer,
        sender: Sender,
        senders: Senders,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.calls = calls
        self.writer = writer
        self.sender = sender
        self.senders = senders
        self.instances = senders.health
        self.metrics = metrics
        # Set by the drain when the shutdown's grace period is over: messages stop between
        # parts, never inside a send.
        self.past_grace = False

    async def run(self, job: Job, *, last_sent: Callable[[], None] | None = None) -> str:
        """Take one message to an outcome; returns the outcome's name. `last_sent` is called
        once its last part is accepted, before that part is recorded: the message needs no
        provider any more (see Processor._run)."""
        instance = job.plan.sender_instance or self.senders.pool(job)[0]
        try:
            number = check_start(job, self.settings.default_region)
            if job.claim.reply_unclassified:
                check_reply_kind(True, datetime.now(UTC))
            if job.claim.step > 1 and job.plan.parts is None:
                await self._check_step(job)
            instance = await self.senders.check(job)  # nothing spent while no number can send
            if job.plan.look_up_since is not None and await self._left_behind(
                job, instance, number
            ):
                return "sent"
            # A message that has begun is finished: its window and cap were judged when its
            # first part went out, and its remaining parts are not held to them.
            paced = job.claim.paced and job.plan.parts_sent == 0
            zones = phone_zones(number) if job.claim.lead_clock else None  # the lead's own clock
            if paced and (wait := await self.senders.store.pace_start(job, zones)) is not None:
                raise MustWait(wait)
            resumed = job.plan.parts is not None
            parts = await self._parts(job)
            if resumed:
                await self._settle_uncertain(job, instance, number, parts)
            instance = await self.senders.book(job, instance)  # the number and its slot
            await self._send_parts(job, instance, number, parts, last_sent)
        except LeaseLost:
            raise
        except Exception as exc:
            if is_connection_error(exc):
                raise  # left to the lease, see _run
            if isinstance(exc, InstanceMissingError):
                closed = isinstance(exc, InstanceClosedError)
                self.instances.mark(instance, "close" if closed else "missing")
                await self.senders.hold(instance)
            if isinstance(exc, UncertainDeliveryError):
                job.plan.uncertain_sends = await self.store.note_uncertain(job)
            result = outcome(exc, job, self.settings, datetime.now(UTC))
            await self.store.finish(result.finish, job)
            if isinstance(exc, MustWait):
                await self.senders.spread(job, exc.wait)
            _log_outcome(job, result, exc)
            return result.name
        if log.isEnabledFor(logging.INFO):
            log.info(
                "message sent to %s (%d parts)",
                mask_phone(number),
                len(parts),
                extra={"action": "message_sent", "message_id": str(job.id), "parts": len(parts)},
            )
        return "sent"

    async def _check_step(self, job: Job) -> None:
        """A follow-up step not written yet: skipped when its sequence must stop (or waiting
        for a reply's kind), else the LLM is given the earlier steps."""
        facts = StepFacts.from_row(await self.store.step_facts(job))
        check_step(facts, feedback_on=self.settings.webhooks_on)
        if job.plan.context is not None:
            job.plan.context = step_context(job.plan.context, job.claim.step, facts)

    async def _left_behind(self, job: Job, instance: str, number: str) -> bool:
        """A row the old system left `processing` may have gone out: never sent blindly. Looked
        up on Evolution (anything sent to the lead since the row was last touched): found, it
        is recorded as sent with the text found (True); not found, it goes on to be sent. When
        it cannot be looked up it fails with a reason `listener replay` acts on."""
        since = job.plan.look_up_since
        assert since is not None
        replay = (
            f"it may have been sent: check the chat, then `listener replay --id {job.id}` sends it"
        )
        if not isinstance(self.sender, LeftBehindFinder):
            raise Stop(
                "failed",
                f"left processing by the Edge Function and this sender cannot look it up; {replay}",
            )
        try:
            found = await self.sender.find_any_sent(
                instance=instance, numbers=whatsapp_forms(number), since=since
            )
        except ProviderError as exc:
            raise Stop(
                "failed",
                f"left processing by the Edge Function and the lookup failed ({exc}); {replay}",
            ) from None
        await self.store.looked_up(job)
        if found is None:
            log.info(
                "a message left processing by the Edge Function was not sent to %s: sending it",
                mask_phone(number),
                extra={"action": "left_behind_not_found", "message_id": str(job.id)},
            )
            return False
        provider_id, text = found
        job.attempt.sending = True
        try:
            await self.store.store_parts(StoreParts(job.id, text or None, [text]), job)
            await self.store.record_part(RecordPart(job.id, 0, provider_id, True, instance), job)
        finally:
            job.attempt.sending = False
        log.info(
            "a message left processing by the Edge Function had gone out to %s: recorded as"
            " sent, not sent again",
            mask_phone(number),
            extra={"action": "left_behind_found", "message_id": str(job.id)},
        )
        return True

    async def _parts(self, job: Job) -> list[str]:
        """The message's parts: stored ones on a resume, else from its content or the LLM,
        stored before the first part goes out so a retry never writes a different text."""
        if job.plan.parts is not None:
            return job.plan.parts
        settings = self.settings
        text: str | None = None
        if job.claim.content is not None and job.claim.content.strip():
            parts = split_content(
                job.claim.content, max_parts=settings.max_parts, max_chars=settings.max_part_chars
            )
        else:
            text, parts = await self.writer.write(job, check=lambda: self._check(job))
        self._check(job)
        await self.store.store_parts(StoreParts(job.id, text, parts), job)
        job.plan.parts = parts
        return parts

    async def _settle_uncertain(
        self, job: Job, instance: str, number: str, parts: list[str]
    ) -> None:
        """On a resume, a part whose send got no answer is looked up before it is sent again:
        a `send.message` event for that number with exactly that text since its first try, or
        the sender's own lookup (Evolution's findMessages). Found: recorded as accepted with
        that id, nothing sent. Not found, or the lookup failed: it is sent again."""
        await self.store.load_uncertain(job)
        index, since = job.plan.parts_sent, job.plan.uncertain_at
        if job.plan.uncertain_part != index or job.plan.uncertain_sends <= 0 or since is None:
            return
        if index >= len(parts):
            return
        numbers, text = whatsapp_forms(number), parts[index]
        found = await self.store.find_sent(instance, numbers, text, since)
        if found is None and isinstance(self.sender, SentFinder):
            try:
                found = await self.sender.find_sent(
                    instance=instance, numbers=numbers, text=text, since=since
                )
            except ProviderError as exc:
                log.warning(
                    "could not look up a send that got no answer, sending it again: %s",
                    exc,
                    extra={"action": "uncertain_lookup_failed", "message_id": str(job.id)},
                )
        if found is None and job.plan.uncertain_sends >= MAX_UNCERTAIN_SENDS:
            raise MayHaveBeenDelivered(
                f"part {index + 1} of {len(parts)} may have been delivered: it was sent "
                f"{job.plan.uncertain_sends} times without an answer (or by a worker that died), "
                "and the lookup did not find it, so it is not sent again",
                provider="evolution",
            )
        if found is None:
            log.info(
                "part %d to %s was not found after its send got no answer: sending it again",
                index + 1,
                mask_phone(number),
                extra={"action": "uncertain_not_found", "message_id": str(job.id)},
            )
            return
        job.attempt.sending = True
        try:
            final = index == len(parts) - 1
            await self.store.record_part(RecordPart(job.id, index, found, final, instance), job)
        finally:
            job.attempt.sending = False
        job.plan.parts_sent = index + 1
        log.info(
            "part %d to %s went out although its send got no answer: recorded, not sent again",
            index + 1,
            mask_phone(number),
            extra={"action": "uncertain_found", "message_id": str(job.id)},
        )

    async def _send_parts(
        self,
        job: Job,
        instance: str,
        number: str,
        parts: list[str],
        last_sent: Callable[[], None] | None = None,
    ) -> None:
        delay = self.settings.part_delay.total_seconds()
        first = job.plan.parts_sent
        for index in range(first, len(parts)):
            if index > first and delay > 0:
                await asyncio.sleep(delay)
            if self.past_grace:
                raise StopBetweenParts()
            # The first part's slot was booked (Senders.book); a try after a rate-limit wait
            # books a fresh one, and its acceptance is stamped, so the spacing holds from the
            # real send, not from the booking.
            first_part = index == 0
            before = self.senders.before_retry(job, instance) if first_part else None

            async def send(text: str = parts[index]) -> SentPart:
                # From here until the part is recorded, a shutdown lets the task finish.
                job.attempt.sending = True
                async with self.senders.sending(job, instance):  # the gap from the last answer
                    return await self.sender.send_text(instance=instance, number=number, text=text)

            try:
                sent = await self.calls.call(
                    self.calls.sender,
                    send,
                    check=lambda: self._check(job),
                    before=before,
                )
                # An accepted part is recorded before any other write.
                final = index == len(parts) - 1
                if final and last_sent is not None and not job.claim.gap:
                    last_sent()  # a number's gap is stamped after the record: kept till then
                record = RecordPart(job.id, index, sent.provider_message_id, final, instance)
                await self.store.record_part(record, job)
            finally:
                job.attempt.sending = False
            job.plan.parts_sent = index + 1
            self.metrics.parts_sent.inc()
            if first_part and job.claim.gap:
                try:
                    await self.senders.sent(job, instance)
                except psycopg.Error as exc:  # the booking taken before the send still holds
                    log.warning(
                        "could not stamp the gap after a send: %s",
                        exc,
                        extra={"action": "gap_stamp_failed", "message_id": str(job.id)},
                    )

    def _check(self, job: Job) -> None:
        if job.attempt.lost:
            raise LeaseLost()


def _log_outcome(job: Job, result: Outcome, error: BaseException) -> None:
    """One line per outcome other than sent (a hold is logged by its gate)."""
    finish, ids = result.finish, {"message_id": str(job.id)}
    if result.name == "skipped":
        log.info("%s", finish.last_error, extra={"action": "message_skipped", **ids})
    elif result.name == "failed":
        log.warning(
            "message failed: %s", finish.last_error, extra={"action": "message_failed", **ids}
        )
    elif result.name == "retry":
        log.warning(
            "%s",
            finish.last_error,
            extra={"action": "message_retry", "attempt": job.claim.attempts, **ids},
        )
    elif result.name == "deferred" and finish.scheduled_at is not None:
        if finish.wait_reason in QUIET_WAITS:
            return  # logged once per episode (pacing/pool.py, the writer), not once per message
        log.info(
            "message waits until %s (%s)",
            finish.scheduled_at.isoformat(timespec="seconds"),
            finish.wait_reason,
            extra={"action": "message_deferred", "reason": finish.wait_reason, **ids},
        )
    if not isinstance(error, _EXPECTED):
        log.error("unexpected error", exc_info=error, extra={"action": "message_error", **ids})

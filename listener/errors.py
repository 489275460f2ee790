"""Exceptions of the listener, in one hierarchy.

ListenerError
├── ConfigurationError        bad settings or arguments; the operator must fix them
├── DatabaseError             a database operation failed (wraps psycopg errors)
│   └── DataRefusedError      Postgres refused a message's own data (one bad row)
├── MigrationError            a migration file is missing, changed or fails
│   └── AdoptionRefused       a database whose tables cannot be adopted (one line a conflict)
└── ProviderError             an LLM or sender call did not succeed
    ├── TransientProviderError    may heal on its own: timeouts, 5xx, 408
    │   └── EmptyReplyError       no text in the LLM's reply; fails after quick retries
    ├── RateLimitedError          429 (or an exhausted in-flight budget): hold, spend nothing
    ├── HoldBackError             credentials refused, credits exhausted: not the message's fault
    ├── InstanceMissingError      the instance does not exist (404): hold that instance
    │   └── InstanceClosedError   a send answered "Connection Closed" (or: not ready): hold it
    └── PermanentProviderError    will never heal for this message: number not on WhatsApp
"""

from __future__ import annotations


class ListenerError(Exception):
    """Base of every error raised by the listener on purpose."""


class ConfigurationError(ListenerError):
    """Settings or arguments that cannot work; reported as one line and exit code 2."""


class DatabaseError(ListenerError):
    """A database operation failed; raised at the boundary instead of driver errors."""


class DataRefusedError(DatabaseError):
    """Postgres refused what one message's write carries (bytes it cannot store, a constraint):
    running it again will not help, so that message fails with the reason."""


class MigrationError(ListenerError):
    """A migration cannot be applied: a changed applied file, or a failing statement."""


class AdoptionRefused(MigrationError):
    """A database whose tables the listener cannot adopt; `conflicts` has one line each."""

    def __init__(self, conflicts: list[str]) -> None:
        super().__init__(
            f"cannot adopt this database ({len(conflicts)} conflict(s)); nothing was changed"
        )
        self.conflicts = conflicts


class ProviderError(ListenerError):
    """An LLM or sender call failed. `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status


class TransientProviderError(ProviderError):
    """A failure that may heal by itself: worth a quick retry, then a delayed one."""


class EmptyReplyError(TransientProviderError):
    """The LLM answered with no text. Quick retries may heal it; after them, the message fails
    at once rather than waiting minutes for the same emptiness."""


class UncertainDeliveryError(ProviderError):
    """A send that reached the provider but got no answer (a read timeout, a connection cut
    mid-reply): the part may have been delivered. Not repeated within the attempt; the next try
    sends it again, so that one part may arrive twice, as a crash after the answer may."""


class RateLimitedError(ProviderError):
    """The provider asked us to slow down. `retry_after` is in seconds when it said how long."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.retry_after = retry_after


class HoldBackError(ProviderError):
    """The operator must act (credentials, credits, a disconnected instance); spend no attempt."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=status)
        self.retry_after = retry_after


class InstanceMissingError(ProviderError):
    """The sender instance does not exist (Evolution's 404): hold that instance's messages, as
    for a disconnected one, without stopping the other instances or spending attempts."""


class InstanceClosedError(InstanceMissingError):
    """A send answered "Connection Closed" (Evolution 2.3.7: a 500; older: a 400), or another
    answer of an instance that is not ready (never connected, not loaded): the instance's
    WhatsApp connection is down, not the message's fault. Held like a missing instance, at
    once, spending nothing."""


class PermanentProviderError(ProviderError):
    """This message can never succeed this way (e.g. the number is not on WhatsApp)."""


class MayHaveBeenDelivered(PermanentProviderError):
    """A part already sent as often as it may be (sends that got no answer, or a send in the
    air when its worker died), and not found by the lookup: it is not sent again."""

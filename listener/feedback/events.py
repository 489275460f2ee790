"""Pure: what an Evolution webhook says (docs/design.md, "Delivery feedback"), with no I/O. The
receiver (receiver.py) authenticates a request with `authorized` and turns its body into
events with `parse`; the inbox (inbox.py) writes them. Opt-out words and the phone forms of a
reply are decided here.

Evolution posts `{"event", "instance", "data", "date_time", ...}`, `event` lowercase dotted
(`messages.update`); older versions and by-events paths say `MESSAGES_UPDATE` or
`messages-update`, all read as the same event.

`date_time` is not read: Evolution builds it from the server's local time with a `Z` appended
(channel.service.ts `sendDataWebhook`; its Dockerfile sets TZ=America/Sao_Paulo, three hours
early). A reply carries its own epoch `messageTimestamp` (WhatsApp's); a status carries none, and
is at its receipt (the inbox row's time, the database's clock, as the send's time is).
"""

from __future__ import annotations

import hmac
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from listener.phones import whatsapp_forms
from listener.text import fold

# The secret is the operator's (Evolution signs with it as `jwt_key`); a warning on stderr at
# each verification would tell them nothing they can act on in Evolution.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

# Statuses `messages.update` carries, in the order a part goes through them; ERROR is final.
STATUSES = ("PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED", "ERROR")
# Evolution's numeric statuses (Baileys' WAMessageStatus) when a version sends those.
_NUMERIC_STATUS = {
    0: "ERROR",
    1: "PENDING",
    2: "SERVER_ACK",
    3: "DELIVERY_ACK",
    4: "READ",
    5: "PLAYED",
}
# `connection.update` close reasons that mean the number was logged out or banned.
RESTRICTING_REASONS = {401: "logged out", 402: "banned", 403: "banned", 406: "banned"}
# Clock skew allowed on a JWT's expiry.
_JWT_LEEWAY = 60
# Evolution's tokens are about 150 characters; a longer one is not Evolution's.
_MAX_TOKEN = 4096


class BadEvent(ValueError):
    """A body that is not an Evolution webhook (answered 400)."""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A part's new status; at its receipt (`messages.update` has no time of its own)."""

    instance: str
    provider_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A lead wrote to us; `at`: the message's own time (None: at its receipt)."""

    instance: str
    phones: tuple[str, ...]
    text: str
    at: datetime | None


@dataclass(frozen=True, slots=True)
class SentEvent:
    instance: str
    provider_id: str
    number: str
    text: str


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    instance: str
    state: str
    reason: int | None


Event = StatusUpdate | Reply | SentEvent | ConnectionChange


# --------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------


def verify_jwt(token: str, secret: str, now: float | None = None) -> bool:
    """An HS256 JWT signed with `secret`, with an `exp` not passed (Evolution signs with
    `jwt_key`)."""
    expiry = _jwt_expiry(token, secret)
    return expiry is not None and (time.time() if now is None else now) < expiry


def _jwt_expiry(token: str, secret: str) -> float | None:
    """When an HS256 JWT signed with `secret` stops being accepted (its `exp` plus the leeway);
    None when it is not one, or is expired already.

    PyJWT checks the signature with HS256 only (no `none`, no key confusion), requires `exp` and
    allows the leeway. What reaches it is bounded first: ASCII (a header is bytes that may be
    anything) and at most _MAX_TOKEN characters, so a header nested thousands deep costs
    nothing."""
    if len(token) > _MAX_TOKEN or not token.isascii() or token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            # `iat` is not checked: `exp` (iat + 600) bounds the token's life, and a sender's
            # clock a little ahead of ours must not refuse its events.
            options={"require": ["exp"], "verify_iat": False},
            leeway=_JWT_LEEWAY,
        )
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return None
    return float(exp + _JWT_LEEWAY)


def sign_jwt(secret: str, *, ttl: int = 600, now: float | None = None) -> str:
    """A token as Evolution makes it (`iat`, `exp = iat + 600`): for tests, the fake Evolution
    and the benchmark."""
    iat = int(time.time() if now is None else now)
    return jwt.encode({"iat": iat, "exp": iat + ttl, "app": "evolution"}, secret, "HS256")


def authorized(authorization: str | None, token: str | None, secret: str) -> bool:
    """`Authorization: Bearer <HS256 JWT>` or `X-Listener-Token: SECRET`."""
    return Authenticator(secret).check(authorization, token)


def _raw(header: str) -> bytes:
    """A header's bytes as they came (aiohttp keeps a byte that is not UTF-8, such as \\xff, as
    a lone surrogate: `encode()` alone would raise)."""
    return header.encode("utf-8", "surrogateescape")


class Authenticator:
    """`authorized` for one secret, remembering the JWTs it verified until they expire:
    Evolution signs with a fresh `iat` each second, so at a thousand posts a second one token
    is verified once and then looked up (a verification costs more than the rest of the
    request's parsing)."""

    _KEEP = 256

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._secret_bytes = secret.encode()
        self._expiry: dict[str, float] = {}

    def check(self, authorization: str | None, token: str | None, now: float | None = None) -> bool:
        if token is not None and hmac.compare_digest(_raw(token), self._secret_bytes):
            return True
        if authorization is None:
            return False
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        credential = credential.strip()
        expiry = self._expiry.get(credential)
        if expiry is None:
            expiry = _jwt_expiry(credential, self._secret)
            if expiry is None:
                return False  # never kept: a bad token costs its verification every time
            if len(self._expiry) >= self._KEEP:
                self._expiry.clear()
            self._expiry[credential] = expiry
        return (time.time() if now is None else now) < expiry


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


def event_name(raw: str) -> str:
    """`messages.update` from `MESSAGES_UPDATE`, `messages-update` or `messages.update`."""
    return raw.strip().lower().replace("_", ".").replace("-", ".")


def epoch_time(raw: Any) -> datetime | None:
    """A `messageTimestamp` (epoch seconds: a number, its digits, or a protobuf Long
    `{"low", "high"}` as some versions serialise it) as a time; None when it is none."""
    if isinstance(raw, dict):
        low, high = raw.get("low"), raw.get("high")
        if not isinstance(low, int) or not isinstance(high, int):
            return None
        raw = (high << 32) | (low & 0xFFFFFFFF)
    elif isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if not isinstance(raw, int | float) or isinstance(raw, bool) or not 0 < raw < 1e11:
        return None
    return datetime.fromtimestamp(raw, UTC)


def _items(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and all(isinstance(item, dict) for item in data):
        return data
    raise BadEvent("`data` is not an object")


def jid_digits(jid: Any) -> str:
    """The digits of a JID before `@` (and before a device suffix `:12`)."""
    if not isinstance(jid, str):
        return ""
    user = jid.split("@", 1)[0].split(":", 1)[0]
    return "".join(ch for ch in user if "0" <= ch <= "9")


def _text(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    text = message.get("conversation")
    if not isinstance(text, str):
        extended = message.get("extendedTextMessage")
        text = extended.get("text") if isinstance(extended, dict) else None
    return text if isinstance(text, str) else ""


def parse(body: Any, path_event: str | None = None) -> list[Event]:
    """The events of one webhook body; other events are read as none. BadEvent when the body
    is not a webhook."""
    if not isinstance(body, dict):
        raise BadEvent("the body is not a JSON object")
    raw = body.get("event", path_event)
    if not isinstance(raw, str) or not raw.strip():
        raise BadEvent("no `event`")
    name = event_name(raw)
    instance = body.get("instance")
    if isinstance(instance, dict):  # some versions nest it
        instance = instance.get("instanceName")
    if name in ("messages.update", "messages.upsert", "send.message", "connection.update"):
        if not isinstance(instance, str) or not instance:
            raise BadEvent("no `instance`")
    else:
        return []
    if "data" not in body:
        raise BadEvent("no `data`")
    events: list[Event] = []
    for item in _items(body["data"]):
        if name == "messages.update":
            update = _status(instance, item)
            if update is not None:
                events.append(update)
        elif name == "messages.upsert":
            reply = _reply(instance, item)
            if reply is not None:
                events.append(reply)
        elif name == "send.message":
            sent = _sent(instance, item)
            if sent is not None:
                events.append(sent)
        else:
            events.append(_connection(instance, item))
    return events


def _status(instance: str, item: dict[str, Any]) -> StatusUpdate | None:
    raw_key = item.get("key")
    key: dict[str, Any] = raw_key if isinstance(raw_key, dict) else {}
    provider_id = item.get("keyId") or key.get("id")
    status: Any = item.get("status")
    if isinstance(status, int) and not isinstance(status, bool):
        status = _NUMERIC_STATUS.get(status)
    if not isinstance(provider_id, str) or not provider_id or not isinstance(status, str):
        raise BadEvent("messages.update without `keyId` and `status`")
    status = status.upper()
    if status == "DELIVERED":  # a spelling some versions use
        status = "DELIVERY_ACK"
    if status not in STATUSES or item.get("fromMe") is False:
        return None  # a status we do not track, or of a message the lead sent
    return StatusUpdate(instance, provider_id, status)


def _reply(instance: str, item: dict[str, Any]) -> Reply | None:
    key = item.get("key")
    if not isinstance(key, dict):
        raise BadEvent("messages.upsert without `key`")
    if key.get("fromMe") is not False:
        return None  # ours (sent from the phone or through the API)
    jid = key.get("remoteJid")
    if isinstance(jid, str) and jid.endswith("@lid"):
        jid = key.get("remoteJidAlt") or item.get("remoteJidAlt")
    if isinstance(jid, str) and jid.endswith("@g.us"):
        return None  # a group
    phones = whatsapp_forms(jid_digits(jid))
    if not phones:
        return None
    at = epoch_time(item.get("messageTimestamp"))
    return Reply(instance, phones, _text(item.get("message")), at)


def _sent(instance: str, item: dict[str, Any]) -> SentEvent | None:
    key = item.get("key")
    if not isinstance(key, dict):
        raise BadEvent("send.message without `key`")
    provider_id = key.get("id")
    number = jid_digits(key.get("remoteJidAlt") or key.get("remoteJid"))
    if not isinstance(provider_id, str) or not provider_id or not number:
        return None
    return SentEvent(instance, provider_id, number, _text(item.get("message")))


def _connection(instance: str, item: dict[str, Any]) -> ConnectionChange:
    state = item.get("state")
    if not isinstance(state, str):
        raise BadEvent("connection.update without `state`")
    reason = item.get("statusReason")
    code = reason if isinstance(reason, int) and not isinstance(reason, bool) else None
    return ConnectionChange(str(item.get("instance") or instance), state, code)


# --------------------------------------------------------------------------------------------
# Opt-out
# --------------------------------------------------------------------------------------------


def is_opt_out(text: str, words: tuple[str, ...]) -> bool:
    """The whole reply, folded, is one of the opt-out words: "SAIR", "sair!!", not "Não quero
    sair"."""
    folded = fold(text)
    return bool(folded) and folded in {fold(word) for word in words}

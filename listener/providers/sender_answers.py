"""What Evolution API's answers mean: a non-2xx answer classified as the provider error it
calls for (`http_error`: an instance that cannot send, a number not on WhatsApp, credentials
refused, a gateway that gave up after the part may have gone out), the message id of an
accepted send (`message_id`), and the records of a findMessages look-up (`found`,
`found_any`). Pure reading of status, headers and JSON; `listener.providers.sender` makes the
calls."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from listener.errors import (
    HoldBackError,
    InstanceClosedError,
    InstanceMissingError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    TransientProviderError,
    UncertainDeliveryError,
)
from listener.providers._http import Scrub, parse_retry_after
from listener.text import clean_text

PROVIDER = "evolution"


def found(payload: Any, text: str, since: float, numbers: tuple[str, ...]) -> str | None:
    """The id of the newest record of a findMessages answer to one of `numbers` (its
    `key.remoteJid` or `key.remoteJidAlt`) with exactly `text`, sent at or after `since`
    (epoch seconds)."""
    messages = payload.get("messages") if isinstance(payload, dict) else None
    records = messages.get("records") if isinstance(messages, dict) else None
    if not isinstance(records, list):
        return None
    for record in records:
        if not isinstance(record, dict):
            continue
        key, message = record.get("key"), record.get("message")
        if not isinstance(key, dict) or not isinstance(message, dict):
            continue
        if not _names(key, numbers):
            continue  # another chat (or a bare lid, which names no number)
        body = message.get("conversation")
        if not isinstance(body, str):
            extended = message.get("extendedTextMessage")
            body = extended.get("text") if isinstance(extended, dict) else None
        stamp = record.get("messageTimestamp")
        when = float(stamp) if isinstance(stamp, int | float) else None
        if body == text and (when is None or when >= since - 1) and isinstance(key.get("id"), str):
            return clean_text(key["id"]) or None
    return None


def found_any(payload: Any, since: float, numbers: tuple[str, ...]) -> tuple[str, str] | None:
    """The id and text of the newest record of a findMessages answer to one of `numbers` (its
    `key.remoteJid` or `key.remoteJidAlt`) sent at or after `since` (epoch seconds). A record
    without a time does not count: it cannot be placed after it."""
    messages = payload.get("messages") if isinstance(payload, dict) else None
    records = messages.get("records") if isinstance(messages, dict) else None
    if not isinstance(records, list):
        return None
    for record in records:
        if not isinstance(record, dict):
            continue
        key, message = record.get("key"), record.get("message")
        stamp = record.get("messageTimestamp")
        if not isinstance(key, dict) or not isinstance(key.get("id"), str):
            continue
        if not _names(key, numbers):
            continue  # another chat (or a bare lid, which names no number)
        if not isinstance(stamp, int | float) or float(stamp) < since - 1:
            continue
        body = message.get("conversation") if isinstance(message, dict) else None
        if not isinstance(body, str) and isinstance(message, dict):
            extended = message.get("extendedTextMessage")
            body = extended.get("text") if isinstance(extended, dict) else None
        ident = clean_text(key["id"])
        if ident:
            return ident, clean_text(body) if isinstance(body, str) else ""
    return None


# What Evolution 2.3.7 answers a send through an instance that cannot send now (its source:
# whatsapp.baileys.service.ts `sendMessageWithTyping`, `whatsappNumber`; main.ts's error
# handler answers a thrown Error 500 with its message, the `try` around the send a 400 with
# `[error.toString()]`):
# - the socket is closed: Baileys' Boom "Connection Closed" (500, or 400 "Error: Connection
#   Closed" once the number's WhatsApp check was cached);
# - the instance never connected (no Baileys client): "Cannot read properties of undefined
#   (reading 'onWhatsApp')" (500), or reading 'presenceSubscribe' / 'relayMessage' /
#   'sendMessage' (400) when the number's check was cached;
# - the instance is known (in its database) but not loaded: reading 'textMessage' (500).
_NOT_READY = re.compile(
    r"^(?:error: )?connection closed$"
    r"|^(?:typeerror: )?cannot read propert(?:y|ies) of (?:undefined|null) \(reading "
    r"'(?:onwhatsapp|presencesubscribe|sendpresenceupdate|relaymessage|sendmessage|textmessage)'\)$"
)


def _jid_number(jid: Any) -> str:
    """The digits of a phone JID (`5511...@s.whatsapp.net`, a device suffix dropped); "" for
    anything else (a lid, a group)."""
    if not isinstance(jid, str) or not jid.endswith("@s.whatsapp.net"):
        return ""
    return jid.split("@", 1)[0].split(":", 1)[0]


def _names(key: dict[str, Any], numbers: tuple[str, ...]) -> bool:
    """Whether a record's key names one of `numbers` in `remoteJid` or `remoteJidAlt`."""
    return bool(
        {_jid_number(key.get("remoteJid")), _jid_number(key.get("remoteJidAlt"))} & set(numbers)
    )


def _connection_closed(payload: Any) -> bool:
    """Evolution's answer for an instance that is not ready to send (see `_NOT_READY`): its
    `response.message` (or `message`), a text or a list of them."""
    if not isinstance(payload, dict):
        return False
    for holder in (payload.get("response"), payload):
        if isinstance(holder, dict):
            message = holder.get("message")
            messages = message if isinstance(message, list) else [message]
            if any(isinstance(m, str) and _NOT_READY.match(m.strip().lower()) for m in messages):
                return True
    return False


def message_id(payload: Any) -> str | None:
    """Evolution's message id, `key.id`, when the reply has one, without what Postgres cannot
    store (NUL, lone surrogates)."""
    if not isinstance(payload, dict):
        return None
    key = payload.get("key")
    message_id = key.get("id") if isinstance(key, dict) else None
    if not isinstance(message_id, str):
        return None
    return clean_text(message_id) or None


def _number_missing(payload: Any) -> bool:
    """True when `"exists": false` appears anywhere in the reply: not on WhatsApp."""
    if isinstance(payload, dict):
        if payload.get("exists") is False:
            return True
        return any(_number_missing(value) for value in payload.values())
    if isinstance(payload, list):
        return any(_number_missing(item) for item in payload)
    return False


def _error_message(payload: Any, response: httpx.Response, scrub: Scrub) -> str:
    """Evolution's own words: `response.message`, then `message` or `error`, then the body."""
    if isinstance(payload, dict):
        for holder in (payload.get("response"), payload):
            if isinstance(holder, dict) and holder.get("message"):
                message = holder["message"]
                if isinstance(message, list):
                    return scrub(
                        "; ".join(
                            item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
                            for item in message
                        )
                    )
                return scrub(str(message))
        if payload.get("error"):
            return scrub(str(payload["error"]))
    return scrub(response.text) or response.reason_phrase


def http_error(response: httpx.Response, payload: Any, scrub: Scrub) -> ProviderError:
    """Classify a non-2xx answer."""
    status = response.status_code
    message = f"{PROVIDER} HTTP {status}: {_error_message(payload, response, scrub)}"
    if status in (400, 500) and _connection_closed(payload):
        return InstanceClosedError(
            f"{message} (the instance is not connected)", provider=PROVIDER, status=status
        )
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status == 400:
        if _number_missing(payload):
            return PermanentProviderError(
                "number is not on WhatsApp", provider=PROVIDER, status=status
            )
        # Another 400 names no cause we can trust to be permanent (a passing state of the
        # instance, a format the provider refused once): the attempt fails and the message
        # takes the retry ladder, so one bad message neither fails at once nor stops the rest.
        return ProviderError(message, provider=PROVIDER, status=status)
    if status in (401, 403):
        return HoldBackError(
            f"{message} (credentials refused)",
            provider=PROVIDER,
            status=status,
            retry_after=retry_after,
        )
    if status == 404:
        return InstanceMissingError(
            f"{message} (instance not found)", provider=PROVIDER, status=status
        )
    if status == 429:
        return RateLimitedError(message, provider=PROVIDER, status=status, retry_after=retry_after)
    if status == 504:
        # A gateway in front of Evolution gave up waiting: the part may have gone out.
        return UncertainDeliveryError(
            f"{message}; the part may have been delivered", provider=PROVIDER, status=status
        )
    if status == 408 or status >= 500:
        return TransientProviderError(message, provider=PROVIDER, status=status)
    # Other 4xx and unexpected 1xx/3xx: an operator should look; spend no attempt.
    return HoldBackError(message, provider=PROVIDER, status=status, retry_after=retry_after)

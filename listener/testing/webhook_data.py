"""Evolution 2.3's webhooks as it posts them: the body around an event, and the data of each
event the listener reads (`messages.update`, `messages.upsert`, `send.message`,
`connection.update`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any


def webhook_body(
    event: str, data: Any, *, instance: str = "main", skew: float = 0.0
) -> dict[str, Any]:
    """A webhook body as Evolution 2.3 posts it (`skew`: seconds its `date_time` is off:
    Evolution writes the server's local time with a `Z`, -3 h under TZ=America/Sao_Paulo)."""
    date_time = datetime.now(UTC) + timedelta(seconds=skew)
    return {
        "event": event,
        "instance": instance,
        "data": data,
        "destination": "http://listener/webhooks/evolution",
        "date_time": date_time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "sender": "5511900000000@s.whatsapp.net",
        "server_url": "http://evolution:8080",
        "apikey": "INSTANCE-TOKEN",
    }


def status_data(key_id: str, status: str, number: str = "5511900000001") -> dict[str, Any]:
    """`messages.update` data: the part's id, the chat (maybe @lid) and its new status."""
    return {
        "messageId": "cm" + key_id.lower(),
        "keyId": key_id,
        "remoteJid": f"{number}@s.whatsapp.net",
        "fromMe": True,
        "participant": None,
        "status": status,
        "instanceId": "0b1c2d3e",
    }


def reply_data(
    number: str,
    text: str,
    *,
    lid: bool = False,
    key_id: str = "3EB0REPLY",
    timestamp: Any = None,
) -> dict[str, Any]:
    """`messages.upsert` data of a lead writing to us (`@lid` chats carry the number in
    `remoteJidAlt`); `timestamp`: its `messageTimestamp` (default: now, epoch seconds)."""
    key: dict[str, Any] = {"remoteJid": f"{number}@s.whatsapp.net", "fromMe": False, "id": key_id}
    if lid:
        key = {
            "remoteJid": "123456789012345@lid",
            "remoteJidAlt": f"{number}@s.whatsapp.net",
            "fromMe": False,
            "id": key_id,
        }
    return {
        "key": key,
        "pushName": "Lead",
        "status": "DELIVERY_ACK",
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": int(time.time()) if timestamp is None else timestamp,
        "instanceId": "0b1c2d3e",
        "source": "android",
    }


def sent_data(key_id: str, number: str, text: str) -> dict[str, Any]:
    """`send.message` data: what sendText answered."""
    return {
        "key": {"remoteJid": f"{number}@s.whatsapp.net", "fromMe": True, "id": key_id},
        "pushName": "",
        "status": "PENDING",
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": int(time.time()),
        "instanceId": "0b1c2d3e",
    }


def connection_data(instance: str, state: str, reason: int) -> dict[str, Any]:
    """`connection.update` data."""
    return {"instance": instance, "state": state, "statusReason": reason}

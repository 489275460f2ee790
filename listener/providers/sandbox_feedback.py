"""The sandbox sender playing Evolution's part in delivery feedback (the demo): after each
accepted part it posts real-shaped webhooks to the listener's own receiver, through the same
HTTP endpoint, authentication and writes as Evolution's: the server's ack, the delivery, a read
for most, and a reply to its first message from one lead in REPLY_EVERY: "SAIR" (an opt-out),
then one reply of each kind the listener tells apart (an away message among them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from listener.settings import Settings

# A reply from one lead in this many, in this order (then again from the start).
REPLY_EVERY = 3
REPLIES = (
    "SAIR",
    "Oi! Tenho interesse, pode me contar mais?",
    "Quanto custa?",
    "Agora não, talvez no mês que vem.",
    "Não tenho interesse, obrigado.",
    "Olá! Agradecemos seu contato. Estamos fora do horário de atendimento e retornaremos em breve.",
    "Número errado, não sou essa pessoa.",
    "👍",
)


class SandboxFeedback:
    """Posts the webhooks of the sandbox's sends to the listener's receiver."""

    def __init__(self, settings: Settings, *, seed: int | None = None) -> None:
        secret = settings.webhook_secret
        assert secret is not None
        host = settings.webhook_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        self._url = f"http://{host}:{settings.webhook_port}/webhooks/evolution"
        self._headers = {
            "X-Listener-Token": secret.get_secret_value().strip(),
            "Content-Type": "application/json",
        }
        self._rng = random.Random(seed)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._numbers: set[str] = set()
        self._replies = 0

    def sent(self, instance: str, number: str, provider_id: str) -> None:
        """A part was accepted: play what WhatsApp would report about it, a moment later."""
        events: list[tuple[float, str, dict[str, Any]]] = [
            (0.2, "messages.update", _status(provider_id, number, "SERVER_ACK")),
            (0.4, "messages.update", _status(provider_id, number, "DELIVERY_ACK")),
        ]
        if self._rng.random() < 0.6:
            events.append((0.8, "messages.update", _status(provider_id, number, "READ")))
        if number not in self._numbers:
            self._numbers.add(number)
            if len(self._numbers) % REPLY_EVERY == 1:
                text = REPLIES[self._replies % len(REPLIES)]
                self._replies += 1
                events.append((1.0, "messages.upsert", _reply(number, text)))
        task = asyncio.create_task(self._play(instance, events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play(self, instance: str, events: list[tuple[float, str, dict[str, Any]]]) -> None:
        started = time.monotonic()
        for delay, event, data in events:
            await asyncio.sleep(max(0.0, started + delay - time.monotonic()))
            body = {
                "event": event,
                "instance": instance,
                "data": data,
                "date_time": datetime.now(UTC).isoformat(),
                "sender": "sandbox",
            }
            if self._session is None:
                self._session = aiohttp.ClientSession()
            # The demo goes on if the receiver is away: this is feedback, not the send.
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self._session.post(
                    self._url, data=json.dumps(body), headers=self._headers
                ) as response:
                    await response.read()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None


def _status(provider_id: str, number: str, status: str) -> dict[str, Any]:
    return {
        "keyId": provider_id,
        "remoteJid": f"{number}@s.whatsapp.net",
        "fromMe": True,
        "status": status,
    }


def _reply(number: str, text: str) -> dict[str, Any]:
    return {
        "key": {"remoteJid": f"{number}@s.whatsapp.net", "fromMe": False, "id": "SANDBOXREPLY"},
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": int(time.time()),
    }

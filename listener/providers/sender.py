"""Evolution API as the `Sender` port: one `sendText` call per part.

Evolution has no idempotency key, so a part whose request timed out may have been delivered;
retrying it is accepted by the design: at most that one part repeats. A 2xx is an acceptance:
without `key.id` the part is recorded with an empty id rather than sent again. The optional
`delay` makes Evolution show "typing" and sleep inside the request, so both the read timeout
(each gap between bytes) and the deadline of the whole call are the send timeout plus that delay.
A send whose deadline passes once it had a connection may have been delivered. What Evolution's
answers mean (errors, message ids, look-ups) is read in `listener.providers.sender_answers`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import httpx

from listener.errors import (
    ProviderError,
    TransientProviderError,
    UncertainDeliveryError,
)
from listener.phones import mask_phone
from listener.providers import sender_answers as answers
from listener.providers._http import (
    REQUEST_ERRORS,
    DeadlineExceeded,
    exchange,
    make_client,
    parse_json,
    redact,
    request_failure,
    scrubber,
    secrets_of,
    with_quick_retry,
)
from listener.providers.base import SentPart
from listener.providers.sender_answers import PROVIDER
from listener.settings import Settings
from listener.text import clean_text

logger = logging.getLogger(__name__)


E = TypeVar("E", bound=ProviderError)


# The events `listener webhook set` asks Evolution for (docs/design.md, "Delivery feedback").
WEBHOOK_EVENTS = ["MESSAGES_UPDATE", "MESSAGES_UPSERT", "SEND_MESSAGE", "CONNECTION_UPDATE"]


class EvolutionSender:
    """Sends text parts through an Evolution API instance."""

    def __init__(
        self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        key = settings.evolution_api_key.get_secret_value() if settings.evolution_api_key else ""
        self._settings = settings
        self._secrets = secrets_of(settings)
        self._send_deadline = settings.send_timeout + timedelta(
            milliseconds=settings.evolution_delay_ms
        )
        self._send_setting = (
            "LISTENER_SEND_TIMEOUT plus LISTENER_EVOLUTION_DELAY_MS"
            if settings.evolution_delay_ms
            else "LISTENER_SEND_TIMEOUT"
        )
        self._client = make_client(
            settings,
            read_timeout=self._send_deadline,
            base_url=(settings.evolution_api_url or "").rstrip("/"),
            headers={"apikey": key},
            transport=transport,
        )
        self._root = (settings.evolution_api_url or "").rstrip("/")
        # Absolute URL objects per instance, parsed once (httpx re-parses a path on every call).
        self._send_urls: dict[str, httpx.URL] = {}

    async def send_text(self, *, instance: str, number: str, text: str) -> SentPart:
        """Send one part; return Evolution's message id. Transient failures are retried
        quickly, which may repeat this part if an earlier try was delivered unseen."""

        async def call() -> SentPart:
            return await self._send_once(instance=instance, number=number, text=text)

        return await with_quick_retry(
            self._settings, call, provider=PROVIDER, operation="send_text"
        )

    async def connection_state(self, instance: str) -> str:
        """The instance's WhatsApp connection state (`open`, `connecting`, `close`), uncached
        and without quick retries: a health probe should report what it sees now."""
        path = f"/instance/connectionState/{quote(instance, safe='')}"
        response, payload = await self._ask("GET", path)
        state: Any = None
        if isinstance(payload, dict):
            inner = payload.get("instance")
            if isinstance(inner, dict):
                state = inner.get("state")
            if state is None:
                state = payload.get("state")
            if state is None and isinstance(inner, dict) and inner.get("instanceName"):
                # Evolution reads `waInstances[name]?.connectionStatus?.state`: an instance in
                # its database but not loaded has none, and cannot send.
                state = "close"
        if isinstance(state, str):
            state = clean_text(state)
        if not isinstance(state, str) or not state:
            raise TransientProviderError(
                f"{PROVIDER} HTTP {response.status_code}: connection state missing from reply",
                provider=PROVIDER,
                status=response.status_code,
            )
        return state

    async def find_sent(
        self, *, instance: str, numbers: tuple[str, ...], text: str, since: datetime
    ) -> str | None:
        """A part whose send got no answer, looked up on Evolution: the id of a message we sent
        to one of `numbers` with exactly `text` since `since`, or None. `findMessages` has no
        text filter: the newest 50 messages to each number are compared here.

        A send to a number Evolution knows by its `@lid` is stored under the lid
        (`sendMessageWithTyping` sends to the JID its WhatsApp check cached, and the message is
        kept with Baileys' key as it came): Evolution's `fetchMessages` matches `key.remoteJid`
        OR `key.remoteJidAlt`, so the number is asked in both. Each record found must name the
        number in one of them (a record under a bare lid cannot be told apart: not taken)."""
        path = f"/chat/findMessages/{quote(instance, safe='')}"
        for number in numbers:
            jid = f"{number}@s.whatsapp.net"
            body = {
                "where": {"key": {"remoteJid": jid, "remoteJidAlt": jid, "fromMe": True}},
                "page": 1,
                "offset": 50,
            }
            _, payload = await self._ask("POST", path, body=body, number=number)
            found = answers.found(payload, text, since.timestamp(), numbers)
            if found is not None:
                return found
        return None

    async def find_any_sent(
        self, *, instance: str, numbers: tuple[str, ...], since: datetime
    ) -> tuple[str, str] | None:
        """A row the old system left `processing`, looked up on Evolution: the id and text of
        the newest message we sent to one of `numbers` since `since`, or None. Asked by
        `key.remoteJid` and `key.remoteJidAlt`, as `find_sent` is (a send to a number known by
        its lid is stored under the lid), and each record found must name the number."""
        path = f"/chat/findMessages/{quote(instance, safe='')}"
        for number in numbers:
            jid = f"{number}@s.whatsapp.net"
            body = {
                "where": {"key": {"remoteJid": jid, "remoteJidAlt": jid, "fromMe": True}},
                "page": 1,
                "offset": 50,
            }
            _, payload = await self._ask("POST", path, body=body, number=number)
            found = answers.found_any(payload, since.timestamp(), numbers)
            if found is not None:
                return found
        return None

    async def set_webhook(self, *, instance: str, url: str, secret: str) -> None:
        """Point the instance's webhook at the listener (`listener webhook set`)."""
        body = {
            "webhook": {
                "enabled": True,
                "url": url,
                "headers": {"jwt_key": secret},
                "byEvents": False,
                "base64": False,
                "events": WEBHOOK_EVENTS,
            }
        }
        path = f"/webhook/set/{quote(instance, safe='')}"
        await self._ask("POST", path, body=body, secret=secret)

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

    async def _send_once(self, *, instance: str, number: str, text: str) -> SentPart:
        body: dict[str, Any] = {"number": number, "text": text}
        if self._settings.evolution_delay_ms > 0:
            body["delay"] = self._settings.evolution_delay_ms
        url = self._send_urls.get(instance)
        if url is None:
            url = httpx.URL(f"{self._root}/message/sendText/{quote(instance, safe='')}")
            self._send_urls[instance] = url
        try:
            # The read timeout bounds each gap between bytes; this bounds the whole send.
            response = await exchange(
                self._client,
                "POST",
                url,
                deadline=self._send_deadline,
                setting=self._send_setting,
                body=body,
            )
        except REQUEST_ERRORS as exc:
            error = request_failure(exc, provider=PROVIDER)
            if isinstance(error, TransientProviderError) and not _never_connected(exc):
                # Asking again at once could deliver it twice within seconds; the next try
                # of the message (minutes later) sends it again instead.
                error = UncertainDeliveryError(
                    f"{error}; the part may have been delivered", provider=PROVIDER
                )
            raise self._clean(error, number) from exc
        payload = parse_json(response)
        if not response.is_success:
            scrub = scrubber(secrets=self._secrets, numbers=[number])
            raise self._clean(answers.http_error(response, payload, scrub), number)
        message_id = answers.message_id(payload)
        if message_id is None:
            # Accepted all the same: sending it again would deliver it twice.
            logger.warning(
                "the provider accepted a part without key.id",
                extra={"action": "provider_no_message_id", "provider": PROVIDER},
            )
            message_id = ""
        logger.debug(
            "part sent",
            extra={
                "action": "provider_part_sent",
                "provider": PROVIDER,
                "number": mask_phone(number),
                "provider_message_id": message_id,
            },
        )
        return SentPart(provider_message_id=message_id)

    async def _ask(
        self, method: str, path: str, *, body: Any = None, number: str = "", secret: str = ""
    ) -> tuple[httpx.Response, Any]:
        """One call that is not a send (a probe, a look-up, a setting): no quick retry, within
        LISTENER_SEND_TIMEOUT. Its response and JSON; a failure, or an error status, raised as
        the provider's error with the keys (and `secret`) out and `number` masked."""
        try:
            response = await exchange(
                self._client,
                method,
                path,
                deadline=self._settings.send_timeout,
                setting="LISTENER_SEND_TIMEOUT",
                body=body,
            )
        except REQUEST_ERRORS as exc:
            raise self._clean(request_failure(exc, provider=PROVIDER), number) from exc
        payload = parse_json(response)
        if not response.is_success:
            secrets = [*self._secrets, secret] if secret else self._secrets
            scrub = scrubber(secrets=secrets, numbers=[number] if number else [])
            raise self._clean(answers.http_error(response, payload, scrub), number)
        return response, payload

    def _clean(self, error: E, number: str = "") -> E:
        """Keep API keys, NUL and lone surrogates out of error messages, and mask the phone
        number in them."""
        error.args = (redact(str(error), secrets=self._secrets, numbers=[number]),)
        return error


def _never_connected(exc: Exception) -> bool:
    """True when no connection was made, so the part certainly was not delivered."""
    if isinstance(exc, DeadlineExceeded):
        return not exc.may_have_sent
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    return isinstance(cause, aiohttp.ClientConnectorError | httpx.ConnectError)

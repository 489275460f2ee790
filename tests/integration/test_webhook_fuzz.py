"""The receiver fuzzed with hypothesis, on a real receiver and Postgres. Whatever a
request carries (bodies shaped like Evolution's with absurd values, raw bytes, odd headers and
encodings), the answer is a 2xx or a 4xx, never a 5xx, and nothing writes a traceback.
Deterministic (derandomized, no example database) and bounded."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from listener.feedback.events import sign_jwt
from listener.feedback.receiver import WebhookReceiver
from tests.daemon_harness import fast_settings
from tests.integration.test_hostile_webhooks import tracebacks
from tests.integration.test_webhooks import SECRET, free_port

Conn = psycopg.Connection[Any]

EVENTS = [
    "messages.update",
    "messages.upsert",
    "send.message",
    "connection.update",
    "MESSAGES_UPDATE",
    "presence.update",
]
# Strings with what breaks naive code: NUL, lone surrogates, huge lengths, odd digits.
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "\ud800", "a\udfff", "٣٣", "5511987654321@s.whatsapp.net"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "9", "\x00"]), st.integers(100, 20_000)),
)
numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40), st.floats(), st.booleans()
)
times = st.one_of(
    texts,
    numbers,
    st.sampled_from(
        [
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "2026-13-45T99:99:99Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.000Z",
        ]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
keys = st.fixed_dictionaries(
    {},
    optional={
        "id": texts | json_values,
        "remoteJid": texts | json_values,
        "remoteJidAlt": texts,
        "fromMe": st.booleans() | json_values,
    },
)
data_items = st.fixed_dictionaries(
    {},
    optional={
        "keyId": texts | json_values,
        "status": st.sampled_from(["READ", "ERROR", "PENDING", 3, 99, "DELIVERED"]) | json_values,
        "fromMe": st.booleans() | json_values,
        "key": keys | json_values,
        "message": st.fixed_dictionaries({}, optional={"conversation": texts | json_values}),
        "messageTimestamp": times,
        "instance": texts | json_values,
        "state": st.sampled_from(["close", "open"]) | json_values,
        "statusReason": st.sampled_from([401, 402, 406, 500]) | json_values,
    },
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(EVENTS) | texts | json_values,
        "instance": st.sampled_from(["main", "other"]) | texts | json_values,
        "data": data_items | st.lists(data_items, max_size=3) | json_values,
        "date_time": times,
    },
)


def encode(body: Any, how: str) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode("utf-8", "surrogatepass")
    if how == "gzip":
        return gzip.compress(raw), {"Content-Encoding": "gzip"}
    if how == "deflate":
        return zlib.compress(raw), {"Content-Encoding": "deflate"}
    if how == "lying gzip":
        return raw, {"Content-Encoding": "gzip"}
    return raw, {}


requests = st.one_of(
    st.tuples(bodies, st.sampled_from(["plain", "plain", "gzip", "deflate", "lying gzip"])).map(
        lambda pair: encode(*pair)
    ),
    st.binary(max_size=300).map(lambda raw: (raw, {})),
)
paths = st.sampled_from(["", "", "/messages-update", "/send-message", "/%00", "/%ED%A0%80"])


async def test_the_receiver_never_answers_5xx_nor_writes_a_traceback(
    db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="listener")
    port = free_port()
    receiver = WebhookReceiver(
        fast_settings(webhook_secret=SECRET, webhook_host="127.0.0.1", webhook_port=port),
        db_url,
        CollectorRegistry(),
    )
    await receiver.start()
    url = f"http://127.0.0.1:{port}/webhooks/evolution"
    answers: list[int] = []
    client = httpx.Client(timeout=10)

    @settings(
        max_examples=250,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests, path=paths, token=st.sampled_from(["jwt", "jwt", "bytes"]))
    def post(request: tuple[bytes, dict[str, str]], path: str, token: str) -> None:
        raw, headers = request
        auth: dict[str, Any] = (
            {"Authorization": f"Bearer {sign_jwt(SECRET)}"}
            if token == "jwt"
            else {"X-Listener-Token": SECRET.encode() + b"\xff"}
        )
        answer = client.post(url + path, content=raw, headers={**headers, **auth})
        answers.append(answer.status_code)
        assert answer.status_code < 500, (raw[:200], headers, answer.text)

    try:
        # In a thread: the receiver's loop is its own, and this one stays free.
        await asyncio.to_thread(post)
        await receiver.call(receiver.settle)
    finally:
        await asyncio.to_thread(client.close)
        await receiver.close()
    assert any(code == 200 for code in answers) and any(code == 400 for code in answers)
    assert list(tracebacks(caplog)) == []
    assert db.execute("SELECT count(*) FROM webhook_inbox").fetchone() == (0,)

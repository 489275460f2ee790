"""The pure side of delivery feedback: JWT, events, opt-out words, phone forms."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from listener.feedback.events import (
    Authenticator,
    BadEvent,
    ConnectionChange,
    Reply,
    SentEvent,
    StatusUpdate,
    authorized,
    epoch_time,
    event_name,
    fold,
    is_opt_out,
    parse,
    sign_jwt,
    verify_jwt,
)
from listener.testing import connection_data, reply_data, sent_data, status_data, webhook_body

WORDS = ("sair", "parar", "pare", "stop", "cancelar", "descadastrar", "remover")


def test_jwt_signed_with_the_secret_and_not_expired() -> None:
    now = time.time()
    assert verify_jwt(sign_jwt("k", now=now), "k", now=now)
    assert not verify_jwt(sign_jwt("k", now=now), "other", now=now)
    assert not verify_jwt(sign_jwt("k", now=now - 3600), "k", now=now)  # exp = iat + 600
    token = sign_jwt("k", now=now)
    head, body, sig = token.split(".")
    assert not verify_jwt(f"{head}.{body}x.{sig}", "k", now=now)
    assert not verify_jwt("a.b", "k")
    assert not verify_jwt("!!.??.**", "k")


def test_authorized_by_bearer_jwt_or_token_only() -> None:
    assert authorized(f"Bearer {sign_jwt('s')}", None, "s")
    assert authorized(None, "s", "s")
    assert not authorized(None, None, "s")
    assert not authorized("Bearer s", None, "s")  # the secret is not a JWT
    assert not authorized(None, "S", "s")


def test_a_remembered_jwt_still_expires_and_a_bad_one_is_never_remembered() -> None:
    now = time.time()
    auth = Authenticator("s")
    token = sign_jwt("s", now=now)  # exp = iat + 600, with a minute of leeway
    assert auth.check(f"Bearer {token}", None, now=now)
    assert auth.check(f"Bearer {token}", None, now=now + 600)
    assert not auth.check(f"Bearer {token}", None, now=now + 661)
    forged = sign_jwt("other", now=now)
    for _ in range(2):
        assert not auth.check(f"Bearer {forged}", None, now=now)
    assert not auth.check(f"Basic {token}", None, now=now)
    assert auth.check(None, "s") and not auth.check(None, "S")
    for i in range(300):  # a full memory starts again; every token is still verified
        assert auth.check(f"Bearer {sign_jwt('s', now=now + i)}", None, now=now + i)
    assert not auth.check(f"Bearer {forged}", None, now=now)


def test_event_names_in_every_spelling() -> None:
    for raw in ("messages.update", "MESSAGES_UPDATE", "messages-update"):
        assert event_name(raw) == "messages.update"


def test_parse_the_four_events() -> None:
    [update] = parse(webhook_body("messages.update", status_data("ID1", "DELIVERY_ACK")))
    assert isinstance(update, StatusUpdate)
    assert (update.instance, update.provider_id, update.status) == ("main", "ID1", "DELIVERY_ACK")
    [reply] = parse(webhook_body("messages.upsert", reply_data("5511987654321", "Oi", lid=True)))
    assert isinstance(reply, Reply)
    assert reply.phones == ("5511987654321", "551187654321")
    assert reply.text == "Oi"
    [sent] = parse(webhook_body("send.message", sent_data("ID2", "5511987654321", "Olá")))
    assert sent == SentEvent("main", "ID2", "5511987654321", "Olá")
    [change] = parse(webhook_body("connection.update", connection_data("main", "close", 401)))
    assert change == ConnectionChange("main", "close", 401)


def test_parse_ignores_what_is_not_ours_and_refuses_what_is_not_a_webhook() -> None:
    mine = reply_data("5511987654321", "x")
    mine["key"]["fromMe"] = True
    assert parse(webhook_body("messages.upsert", mine)) == []
    assert parse(webhook_body("presence.update", {})) == []
    assert parse(webhook_body("messages.update", status_data("ID", "SOMETHING_NEW"))) == []
    for body in ([], {"instance": "main"}, {"event": "messages.update", "instance": "main"}):
        with pytest.raises(BadEvent):
            parse(body)
    with pytest.raises(BadEvent):
        parse(webhook_body("messages.update", {"status": "READ"}))


@pytest.mark.parametrize(
    ("text", "out"),
    [
        ("SAIR", True),
        ("sair!!", True),
        ("  Sair. 🙏", True),
        ("PARE", True),
        ("Descadastrar", True),
        ("Não quero sair", False),
        ("sair sair", False),
        ("", False),
        ("🙏", False),
    ],
)
def test_opt_out_is_the_whole_folded_text(text: str, out: bool) -> None:
    assert is_opt_out(text, WORDS) is out


def test_fold_drops_case_accents_punctuation_and_emoji() -> None:
    assert fold("  NÃO, obrigado!!! 😀 ") == "nao obrigado"


def test_event_times_come_from_message_timestamp_never_from_date_time() -> None:
    # Evolution's date_time is local time with a Z (three hours early under its TZ): not read.
    body = webhook_body(
        "messages.upsert", reply_data("5511987654321", "Oi", timestamp=1_800_000_000), skew=-10800
    )
    [reply] = parse(body)
    assert isinstance(reply, Reply)
    assert reply.at == datetime.fromtimestamp(1_800_000_000, UTC)
    [status] = parse(webhook_body("messages.update", status_data("ID1", "READ"), skew=-10800))
    assert isinstance(status, StatusUpdate) and not hasattr(status, "at")  # at its receipt


def test_message_timestamps_in_every_shape_evolution_sends() -> None:
    moment = datetime.fromtimestamp(1_800_000_000, UTC)
    assert epoch_time(1_800_000_000) == moment
    assert epoch_time("1800000000") == moment
    assert epoch_time({"low": 1_800_000_000, "high": 0, "unsigned": False}) == moment
    # A Long whose low word reads as a negative int32.
    assert epoch_time({"low": -1_294_967_296, "high": 0}) == datetime.fromtimestamp(3e9, UTC)
    for bad in (None, True, "", "soon", -5, 0, 1e15, {"low": "x"}, [1]):
        assert epoch_time(bad) is None

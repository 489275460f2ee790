"""LISTENER_WARMUP: one daily cap per day of a number's warm-up."""

from __future__ import annotations

import pytest

from listener.errors import ConfigurationError
from listener.settings import DEFAULT_WARMUP, load_settings


def test_the_warm_up_schedule_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTENER_LLM", "sandbox")
    monkeypatch.setenv("LISTENER_SENDER", "sandbox")
    assert load_settings().warmup == DEFAULT_WARMUP == (20, 30, 45, 60, 80, 100, 130, 160, 200)
    monkeypatch.setenv("LISTENER_WARMUP", " 10, 20 ,40")
    assert load_settings().warmup == (10, 20, 40)
    monkeypatch.setenv("LISTENER_WARMUP", "")
    assert load_settings().warmup == ()
    for bad in ("10,0", "10,x", "10,,20", "-5", "1.5"):
        monkeypatch.setenv("LISTENER_WARMUP", bad)
        with pytest.raises(ConfigurationError) as info:
            load_settings()
        message = str(info.value)
        assert message.startswith("bad setting LISTENER_WARMUP: must be whole numbers above zero")
        assert "\n" not in message

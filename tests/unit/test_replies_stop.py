"""The classifier loop ends on `stop()` alone: the daemon's stop never hangs on it, even when
Python 3.11's `wait_for` swallows the task's cancel (it can, when the wake-up and the cancel
meet)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from listener.feedback.replies import Replies
from listener.providers.classify import RulesClassifier
from listener.settings import load_settings


class _Health:
    db_ok = True
    last_error = ""


async def test_a_stopped_classifier_loop_returns_without_a_cancel() -> None:
    settings = load_settings(llm="sandbox", sender="sandbox")
    # No pool: a loop that went on to classify would fail on it, not return.
    replies = Replies(settings, cast(Any, None), RulesClassifier())
    task = asyncio.create_task(replies.run(cast(Any, _Health())))
    await asyncio.sleep(0)
    replies.stop()
    await asyncio.wait_for(task, timeout=10)
    assert task.done() and task.exception() is None

"""InstanceHealth (listener/pacing/health.py): one connection-state call per number at a
time, however many messages ask at once (a batch of 100 for a closed number once asked 100
times)."""

from __future__ import annotations

import asyncio

from listener.pacing.health import InstanceHealth


class SlowCheck:
    """A connection-state check that answers only when told to, counting its calls."""

    def __init__(self, state: str = "close") -> None:
        self.state = state
        self.calls: dict[str, int] = {}
        self.answer = asyncio.Event()

    async def __call__(self, instance: str) -> str:
        self.calls[instance] = self.calls.get(instance, 0) + 1
        state, answer = self.state, self.answer  # as they were when the call began
        await answer.wait()
        return state


async def began(check: SlowCheck, calls: int) -> None:
    """Until the check has been called `calls` times in all."""
    for _ in range(1000):
        if sum(check.calls.values()) >= calls:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"the check was called {check.calls}, not {calls} times")


async def test_concurrent_callers_share_one_call_per_instance() -> None:
    check = SlowCheck()
    health = InstanceHealth(check, ttl=60.0)
    waiting = [asyncio.ensure_future(health.state("t1")) for _ in range(100)]
    waiting += [asyncio.ensure_future(health.state("t2")) for _ in range(3)]
    for _ in range(10):  # every caller has asked
        await asyncio.sleep(0)
    check.answer.set()
    assert set(await asyncio.gather(*waiting)) == {"close"}
    assert check.calls == {"t1": 1, "t2": 1}
    # Answered: later callers read the cache.
    assert await health.state("t1") == "close"
    assert check.calls == {"t1": 1, "t2": 1}


async def test_a_cancelled_caller_does_not_cancel_the_shared_call() -> None:
    check = SlowCheck(state="open")
    health = InstanceHealth(check, ttl=60.0)
    first = asyncio.ensure_future(health.state("t1"))
    second = asyncio.ensure_future(health.state("t1"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    check.answer.set()
    assert await second == "open"
    assert first.cancelled()
    assert check.calls == {"t1": 1}


async def test_a_call_begun_before_forget_is_neither_waited_for_nor_cached() -> None:
    check = SlowCheck(state="close")
    health = InstanceHealth(check, ttl=60.0)
    early = asyncio.ensure_future(health.state("t1"))
    await began(check, 1)
    first_answer = check.answer
    health.forget("t1")
    check.state = "open"
    check.answer = asyncio.Event()  # the later call answers first
    late = asyncio.ensure_future(health.state("t1"))
    await began(check, 2)
    check.answer.set()
    assert await late == "open"
    assert check.calls == {"t1": 2}
    first_answer.set()
    assert await early == "close"
    assert health.known()["t1"][0] == "open"


async def test_a_fresh_state_is_what_state_answers_without_a_call() -> None:
    """`fresh` (read per message, no coroutine) says what `state` would answer from its hold or
    its cache, and nothing once the cache is stale or a hold has ended (then `state` asks)."""
    check = SlowCheck(state="open")
    check.answer.set()
    health = InstanceHealth(check, ttl=60.0)
    assert health.fresh("t1") is None  # never read
    assert await health.state("t1") == "open"
    assert health.fresh("t1") == "open"
    health.hold("t1", "restricted: spam", 60.0)
    assert health.fresh("t1") == await health.state("t1") == "restricted: spam"
    health.hold("t2", "restricted: spam", -1.0)  # a hold already over
    assert health.fresh("t2") is None
    assert await health.state("t2") == "open"
    stale = InstanceHealth(check, ttl=0.0)
    assert await stale.state("t3") == "open"
    assert stale.fresh("t3") is None
    assert check.calls == {"t1": 1, "t2": 1, "t3": 1}

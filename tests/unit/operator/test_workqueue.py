"""The keyed work queue in front of reconcile(): dedupe, one pass per store at a time, per-store back-off,
bounded workers — and a store whose passes hang does not hold the others back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from kvs2_operator.workqueue import WorkQueue


async def _settle(queue: WorkQueue, done: asyncio.Event | None = None) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if done is not None and done.is_set():
            return


async def test_a_key_queued_many_times_while_waiting_is_passed_once() -> None:
    passes: list[Hashable] = []

    async def process(key: Hashable) -> bool:
        passes.append(key)
        return True

    queue = WorkQueue(process, workers=1)
    for _ in range(10):
        queue.add("a")
    queue.add("b")
    queue.start()
    await _settle(queue)
    await queue.stop()
    assert passes == ["a", "b"]


async def test_a_key_added_during_its_pass_is_passed_again_after_never_alongside() -> None:
    running: set[Hashable] = set()
    overlaps = 0
    passes = 0
    release = asyncio.Event()

    async def process(key: Hashable) -> bool:
        nonlocal overlaps, passes
        overlaps += key in running
        running.add(key)
        passes += 1
        if passes == 1:
            await release.wait()
        running.discard(key)
        return True

    queue = WorkQueue(process, workers=4)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.05)
    queue.add("a")  # while the first pass runs
    queue.add("a")
    release.set()
    await _settle(queue)
    await queue.stop()
    assert passes == 2 and overlaps == 0


async def test_a_failing_key_backs_off_and_a_success_resets_it() -> None:
    results = iter([False, False, True])
    passes = 0

    async def process(_: Hashable) -> bool:
        nonlocal passes
        passes += 1
        return next(results)

    queue = WorkQueue(process, workers=1, base_delay=0.01, max_delay=0.04)
    assert queue.backoff("a") == 0.01
    queue.start()
    queue.add("a")
    await _settle(queue)
    await queue.stop()
    assert passes == 3
    assert queue.backoff("a") == 0.01  # reset by the success


async def test_a_hanging_store_holds_one_worker_and_the_others_pass() -> None:
    hang = asyncio.Event()
    passed: list[Hashable] = []
    all_passed = asyncio.Event()

    async def process(key: Hashable) -> bool:
        if key == "dead-kafka":
            await hang.wait()
        passed.append(key)
        if len(passed) == 30:
            all_passed.set()
        return True

    queue = WorkQueue(process, workers=2)
    queue.start()
    queue.add("dead-kafka")
    for i in range(30):
        queue.add(f"store-{i}")
    await _settle(queue, all_passed)
    assert set(passed) == {f"store-{i}" for i in range(30)} and len(passed) == 30
    hang.set()
    await queue.stop()


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(500):
        if done():
            return
        await asyncio.sleep(0.01)


async def test_a_held_key_waits_for_its_running_pass_and_keeps_new_ones_back() -> None:
    """`exclusive` (the delete handler): no pass of the key alongside it, and none lost either."""
    log: list[str] = []
    release = asyncio.Event()

    async def process(key: Hashable) -> bool:
        log.append(f"pass {key} starts")
        if len(log) == 1:
            await release.wait()
        log.append(f"pass {key} ends")
        return True

    queue = WorkQueue(process, workers=4)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.05)

    async def hold() -> None:
        async with queue.exclusive("a"):
            log.append("held")
            queue.add("a")  # asked for meanwhile
            queue.add("b")  # other keys are not held back
            await asyncio.sleep(0.1)
            log.append("released")

    task = asyncio.create_task(hold())
    await asyncio.sleep(0.05)
    assert log == ["pass a starts"]  # the holder waits for the running pass
    release.set()
    await task
    await _until(lambda: log.count("pass a ends") == 2)
    await queue.stop()
    assert log.index("pass a ends") < log.index("held")
    assert "pass b starts" in log[log.index("held") : log.index("released")]
    assert log[log.index("released") + 1 :] == ["pass a starts", "pass a ends"]


async def test_a_key_queued_before_it_was_held_is_passed_after() -> None:
    passes: list[Hashable] = []

    async def process(key: Hashable) -> bool:
        passes.append(key)
        return True

    queue = WorkQueue(process, workers=1)
    queue.add("a")  # waiting, no worker yet
    async with queue.exclusive("a"):
        queue.start()
        await asyncio.sleep(0.1)
        assert passes == []
    await _until(lambda: passes == ["a"])
    await queue.stop()
    assert passes == ["a"]

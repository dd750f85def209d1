"""The jobs scheduler and the leader loop, on trio's MockClock (no test sleeps)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from appliance.errors import Unavailable
from appliance.metadata.leader import Fence, LeadershipLost
from appliance.runtime.jobs import Job, Scheduler, run_jobs

FENCE = Fence("jobs", 7)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_jobs_run_on_their_intervals(mock_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, float]] = []

    def job(name: str) -> Job:
        async def fn(fence: Fence) -> None:
            assert fence == FENCE
            seen.append((name, trio.current_time()))

        return Job(name, 10.0 if name == "fast" else 25.0, fn)

    scheduler = Scheduler([job("fast"), job("slow")])
    with trio.move_on_after(60):
        await scheduler.run(FENCE)
    assert [t for n, t in seen if n == "fast"] == [0, 10, 20, 30, 40, 50]
    assert [t for n, t in seen if n == "slow"] == [0, 25, 50]
    assert scheduler.runs == {"fast": 6, "slow": 3}


async def test_a_failing_job_is_retried_at_its_next_time(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []

    async def flaky(fence: Fence) -> None:
        calls.append(trio.current_time())
        if len(calls) == 1:
            raise Unavailable("database away")
        if len(calls) == 2:
            raise RuntimeError("a bug")

    with trio.move_on_after(35):
        await Scheduler([Job("flaky", 10.0, flaky)]).run(FENCE)
    assert calls == [0, 10, 20, 30]
    assert "job flaky failed: database away; will retry" in caplog.text
    assert "job flaky failed; will retry" in caplog.text


async def test_an_overrunning_job_skips_the_runs_it_missed(
    mock_clock: trio.testing.MockClock,
) -> None:
    starts: list[float] = []

    async def slow(fence: Fence) -> None:
        starts.append(trio.current_time())
        if len(starts) == 1:
            await trio.sleep(25)

    with trio.move_on_after(45):
        await Scheduler([Job("slow", 10.0, slow)]).run(FENCE)
    assert starts == [0, 30, 40]


async def test_leadership_lost_stops_the_scheduler(mock_clock: trio.testing.MockClock) -> None:
    async def deleter(fence: Fence) -> None:
        raise LeadershipLost("moved on")

    async def ticker(fence: Fence) -> None:
        pass

    with trio.fail_after(5):
        await Scheduler([Job("deleter", 1.0, deleter), Job("ticker", 1.0, ticker)]).run(FENCE)


class FakeLock:
    """A LeaderLock whose answers the test scripts."""

    name = "jobs"

    def __init__(self, acquire: list[Fence | Exception | None], keep: list[bool]) -> None:
        self.acquire_answers = acquire
        self.keep_answers = keep
        self.released = 0

    async def acquire(self) -> Fence | None:
        answer = self.acquire_answers.pop(0) if self.acquire_answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def keep(self) -> bool:
        return self.keep_answers.pop(0) if self.keep_answers else True

    async def release(self) -> None:
        self.released += 1


async def test_the_leader_loop_campaigns_leads_and_steps_down(
    mock_clock: trio.testing.MockClock,
) -> None:
    lock = FakeLock(
        acquire=[Unavailable("db down"), None, Fence("jobs", 1), None, Fence("jobs", 2)],
        keep=[True, False],
    )
    led: list[tuple[int, float]] = []
    cancelled: list[float] = []

    async def work(fence: Fence) -> None:
        led.append((fence.generation, trio.current_time()))
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(trio.current_time())

    with trio.move_on_after(100):
        await run_jobs(lock, work, keep_interval=1.0, retry_interval=3.0)
    # Campaign at 0 (error), 3 (another leads), 6 (wins); keep at 7 ok, 8 lost;
    # campaign again at 11 (another leads), 14 (wins generation 2), then keeps forever.
    assert led == [(1, 6.0), (2, 14.0)]
    assert cancelled[0] == 8.0
    assert lock.released == 2

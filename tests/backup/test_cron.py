"""Cron expressions, and cron jobs firing under an injected wall clock (no test sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from appliance.errors import ConfigError
from appliance.metadata.leader import Fence
from appliance.runtime.cron import Cron
from appliance.runtime.jobs import Job, Scheduler

FENCE = Fence("jobs", 1)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M %a")


def fires(expression: str, start: str, n: int = 4) -> list[str]:
    cron, t, out = Cron(expression), at(start), []
    for _ in range(n):
        t = cron.next_after(t)
        out.append(iso(t))
    return out


def test_daily_at_three() -> None:
    assert fires("0 3 * * *", "2026-11-27T02:59:00") == [
        "2026-11-27 03:00 Fri",
        "2026-11-28 03:00 Sat",
        "2026-11-29 03:00 Sun",
        "2026-11-30 03:00 Mon",
    ]


def test_the_next_time_is_strictly_later() -> None:
    assert fires("0 3 * * *", "2026-11-27T03:00:00", 1) == ["2026-11-28 03:00 Sat"]
    assert fires("*/15 * * * *", "2026-11-27T03:14:59", 2) == [
        "2026-11-27 03:15 Fri",
        "2026-11-27 03:30 Fri",
    ]


def test_ranges_lists_steps_and_names() -> None:
    assert fires("30 1,13 * * mon-fri", "2026-11-27T12:00:00", 3) == [
        "2026-11-27 13:30 Fri",
        "2026-11-30 01:30 Mon",
        "2026-11-30 13:30 Mon",
    ]
    assert fires("0 0 1 jan,jul *", "2026-11-27T00:00:00", 2) == [
        "2027-01-01 00:00 Fri",
        "2027-07-01 00:00 Thu",
    ]
    assert fires("5 10-20/5 * * *", "2026-11-27T11:00:00", 3) == [
        "2026-11-27 15:05 Fri",
        "2026-11-27 20:05 Fri",
        "2026-11-28 10:05 Sat",
    ]


def test_sunday_is_0_and_7_and_macros() -> None:
    assert fires("0 4 * * 7", "2026-11-27T00:00:00", 1) == fires("0 4 * * 0", "2026-11-27", 1)
    assert fires("@weekly", "2026-11-27T00:00:00", 1) == ["2026-11-29 00:00 Sun"]
    assert fires("@daily", "2026-11-27T00:00:00", 1) == ["2026-11-28 00:00 Sat"]
    assert fires("@hourly", "2026-11-27T00:30:00", 1) == ["2026-11-27 01:00 Fri"]


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: the 13th, and every Friday.
    assert fires("0 0 13 * fri", "2026-11-01T00:00:00", 4) == [
        "2026-11-06 00:00 Fri",
        "2026-11-13 00:00 Fri",
        "2026-11-20 00:00 Fri",
        "2026-11-27 00:00 Fri",
    ]


def test_a_leap_day() -> None:
    assert fires("0 12 29 2 *", "2026-03-01T00:00:00", 2) == [
        "2028-02-29 12:00 Tue",
        "2032-02-29 12:00 Sun",
    ]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("0 3 * *", "must have 5 fields"),
        ("61 * * * *", "outside 0-59"),
        ("* 24 * * *", "outside 0-23"),
        ("* * 0 * *", "outside 1-31"),
        ("* * * 13 *", "outside 1-12"),
        ("* * * * 8", "outside 0-7"),
        ("*/0 * * * *", "must be a positive number"),
        ("5-1 * * * *", "runs backwards"),
        ("x * * * *", "is not a number"),
        ("1,,2 * * * *", "empty item"),
        ("0 0 30 2 *", "never fires"),
        ("@fortnightly", "must have 5 fields"),
    ],
)
def test_bad_expressions_are_one_clear_line(expression: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Cron(expression)


async def test_a_cron_job_fires_at_its_wall_clock_times() -> None:
    """Start at 02:59:30 UTC on trio's MockClock; the 03:00 job fires after 30 simulated
    seconds, then every day; interval jobs keep running beside it."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    base = at("2026-11-27T02:59:30")
    fired: list[str] = []
    ticks: list[float] = []

    async def nightly(fence: Fence) -> None:
        assert fence == FENCE
        fired.append(iso(base + trio.current_time()))
        await trio.sleep(600)  # a run of ten minutes does not shift the next one

    async def tick(fence: Fence) -> None:
        ticks.append(trio.current_time())

    scheduler = Scheduler(
        [Job.scheduled("nightly", "0 3 * * *", nightly), Job("tick", 3600.0, tick)],
        wall_clock=lambda: base + trio.current_time(),
    )

    async def main() -> None:
        with trio.move_on_after(3 * 86400):
            await scheduler.run(FENCE)

    # A fresh trio run: the injected wall clock reads the mock clock from its start.
    await trio.to_thread.run_sync(lambda: trio.run(main, clock=clock))
    assert fired == ["2026-11-27 03:00 Fri", "2026-11-28 03:00 Sat", "2026-11-29 03:00 Sun"]
    assert scheduler.runs["nightly"] == 3
    assert len(ticks) == 72


async def test_a_wall_clock_set_back_does_not_fire_early() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    offset = [at("2026-11-27T02:00:00")]
    fired: list[float] = []

    async def job(fence: Fence) -> None:
        fired.append(offset[0] + trio.current_time())

    scheduler = Scheduler(
        [Job.scheduled("j", "0 3 * * *", job)],
        wall_clock=lambda: offset[0] + trio.current_time(),
    )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run, FENCE)
            await trio.sleep(1800)
            offset[0] -= 3600  # someone set the clock back an hour at 02:30
            await trio.sleep(2 * 3600 + 60)
            nursery.cancel_scope.cancel()

    await trio.to_thread.run_sync(lambda: trio.run(main, clock=clock))
    assert [iso(t) for t in fired] == ["2026-11-27 03:00 Fri"]


def test_config_check_reports_a_bad_backup_schedule() -> None:
    from appliance import config as settings  # noqa: PLC0415
    from appliance.omnibus.checks import check_config  # noqa: PLC0415

    good = settings.load(None, environ={}, overrides={"backup.schedule": "0 3 * * *"})
    check_config(good)
    bad = settings.load(None, environ={}, overrides={"backup.schedule": "0 25 * * *"})
    with pytest.raises(ConfigError, match=r"backup.schedule: cron hour: 25 is outside 0-23"):
        check_config(bad)

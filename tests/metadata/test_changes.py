"""Change stamps (appliance/metadata/changes.py): a committed change is seen by every process of
the host before the write returns, and by other hosts (PostgreSQL) through LISTEN/NOTIFY."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from appliance.metadata.changes import EVERYTHING, SLOTS, ChangeBoard, StampedCache, slot_of
from appliance.metadata.db import Options, Tx, open_database
from appliance.metadata.sqlite import SqliteDatabase


async def _until(check: Callable[[], bool], seconds: float) -> None:
    """Poll `check` (a fact of another thread's making, which no trio event announces)."""
    with trio.fail_after(seconds):
        while not check():  # noqa: ASYNC110
            await trio.sleep(0.005)


def _touching(*topics: str) -> Callable[[Tx], None]:
    def fn(tx: Tx) -> None:
        tx.execute("SELECT 1")
        tx.touch(*topics)

    return fn


def test_a_bump_changes_the_topic_and_a_cache_entry_goes_stale(tmp_path: Path) -> None:
    board = ChangeBoard(tmp_path / "changes")
    cache: StampedCache[str, int] = StampedCache()
    before = board.stamp("auth")
    cache.put("alice", 1, before)
    assert cache.get("alice", board.stamp("auth")) == 1
    board.bump(["auth"])
    assert board.stamp("auth") != before
    assert cache.get("alice", board.stamp("auth")) is None


def test_slots_are_the_same_in_every_process() -> None:
    code = "from appliance.metadata.changes import slot_of; print(slot_of('repo:team/app'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert int(out) == slot_of("repo:team/app")
    assert 0 <= slot_of("") < SLOTS


def test_an_untrusted_board_never_repeats_a_stamp(tmp_path: Path) -> None:
    board = ChangeBoard(tmp_path / "changes", trusted=False)
    assert board.stamp("auth") != board.stamp("auth")
    board.trust()
    assert board.stamp("auth") == board.stamp("auth")


def test_the_cache_is_bounded() -> None:
    cache: StampedCache[int, int] = StampedCache(size=3)
    for i in range(5):
        cache.put(i, i, 7)
    assert [cache.get(i, 7) for i in range(5)] == [None, None, 2, 3, 4]


async def test_sqlite_writers_bump_the_shared_stamps_before_returning(tmp_path: Path) -> None:
    """Two opens of one database file stand for two worker processes of one host."""
    path = tmp_path / "berth.db"
    first, second = SqliteDatabase(path), SqliteDatabase(path)
    try:
        seen = second.changes.stamp("auth")
        await first.write(_touching("auth"))
        assert second.changes.stamp("auth") != seen
        unrelated = second.changes.stamp("repo:other")
        await first.write(_touching("repo:team/app"))
        if slot_of("repo:other") != slot_of("repo:team/app"):
            assert second.changes.stamp("repo:other") == unrelated
    finally:
        first.close()
        second.close()


async def test_a_rolled_back_write_bumps_nothing(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "berth.db")
    try:
        seen = db.changes.stamp("auth")

        def fails(tx: Tx) -> None:
            tx.touch("auth")
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            await db.write(fails)
        assert db.changes.stamp("auth") == seen
    finally:
        db.close()


def test_another_process_sees_the_change(tmp_path: Path) -> None:
    """A real second process (a CLI command, another worker) writes; this one sees it."""
    path = tmp_path / "berth.db"
    db = SqliteDatabase(path)
    try:
        seen = db.changes.stamp("rules")
        code = (
            "import sys\n"
            "from pathlib import Path\n"
            "from appliance.metadata.sqlite import SqliteDatabase\n"
            "db = SqliteDatabase(Path(sys.argv[1]))\n"
            "db.run_sync_write(lambda tx: tx.touch('rules'))\n"
            "db.close()\n"
        )
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
        assert db.changes.stamp("rules") != seen
    finally:
        db.close()


async def test_postgres_hosts_see_each_others_changes(
    postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    """Two hosts (their own stamp files) on one PostgreSQL database: a commit on one reaches
    the other's stamps through NOTIFY; a listener that lost its connection distrusts its
    stamps until it listens again."""
    url = postgres_database()
    here = open_database(url, Options(changes_path=tmp_path / "a" / "changes"))
    there = open_database(url, Options(changes_path=tmp_path / "b" / "changes"))
    try:
        assert not there.changes.trusted  # not listening yet: every stamp is new
        async with trio.open_nursery() as nursery:
            await nursery.start(there.watch_changes)
            await _until(lambda: there.changes.trusted, 10)
            seen = there.changes.stamp("auth")
            assert there.changes.stamp("auth") == seen
            await here.write(_touching("auth"))
            await _until(lambda: there.changes.stamp("auth") != seen, 1)

            # The listener's session ends (a database restart): the stamps are distrusted,
            # then trusted again once it listens anew.
            def kill_listeners(tx: Tx) -> None:
                tx.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()"
                )

            # The distrust may last only as long as a reconnection (milliseconds): what stays
            # is its effect, every stamp bumped once the listener trusts them again.
            untouched = there.changes.stamp("untouched")
            await here.write(kill_listeners)
            await _until(
                lambda: there.changes.trusted and there.changes.stamp("untouched") != untouched,
                10,
            )
            seen = there.changes.stamp("rules")
            await here.write(_touching("rules"))
            await _until(lambda: there.changes.stamp("rules") != seen, 1)
            nursery.cancel_scope.cancel()
    finally:
        here.close()
        there.close()


def test_the_cache_is_bounded_in_bytes_too() -> None:
    cache: StampedCache[int, bytes] = StampedCache(size=100, max_bytes=10, weight=len)
    cache.put(1, b"12345", 0)
    cache.put(2, b"12345", 0)
    cache.put(3, b"1", 0)  # over 10 bytes: the oldest goes
    assert cache.get(1, 0) is None
    assert cache.get(2, 0) == b"12345"
    cache.put(4, b"x" * 11, 0)  # heavier than the whole cache: not kept
    assert cache.get(4, 0) is None
    assert cache.get(2, 0) == b"12345"


def test_everything_bumps_every_topic(tmp_path: Path) -> None:
    """What a restore touches: no cached fact of any topic survives it."""
    board = ChangeBoard(tmp_path / "changes")
    before = {t: board.stamp(t) for t in ("auth", "rules", "repo:a/b", "repo:c")}
    board.bump([EVERYTHING])
    assert all(board.stamp(t) != s for t, s in before.items())


def test_a_host_skips_its_own_notifications(tmp_path: Path) -> None:
    """Every process mapping one stamp file is one host (one `origin`); a notification from
    that host changes nothing there (its commit bumped already), one from another host does."""
    here = ChangeBoard(tmp_path / "a" / "changes")
    same_host = ChangeBoard(tmp_path / "a" / "changes")
    elsewhere = ChangeBoard(tmp_path / "b" / "changes")
    assert here.origin == same_host.origin
    assert here.origin != elsewhere.origin
    seen = here.stamp("auth")
    here.notice(f"{same_host.origin} auth")
    assert here.stamp("auth") == seen
    here.notice(f"{elsewhere.origin} auth")
    assert here.stamp("auth") != seen
    seen = here.stamp("repo:team/app")
    here.notice("repo:team/app")  # a sender that names no origin: taken as another host
    assert here.stamp("repo:team/app") != seen

"""`berth import distribution` against storage written by the reference registry: every good
image pulls from Berth byte for byte, the broken ones are reported and nothing of them shows,
a second run copies nothing, an interrupted run finishes when run again, and a dry run
changes nothing."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.importer.conftest import (
    ReferenceStore,
    berth_env,
    database,
    pulled_identical,
    repositories_with_manifests,
    run_import,
    stored_files,
    tags_in,
)
from tests.support.clients import Skopeo
from tests.support.servers import berth_command


def berth_blob_files(data: Path) -> dict[str, Path]:
    """Berth's stored blob files by digest."""
    out = {}
    for path in (data / "storage" / "blobs" / "sha256").glob("*/*/*"):
        out[f"sha256:{path.parent.name}"] = path
    return out


def test_import_pull_and_run_again(
    tmp_path: Path, reference_store: ReferenceStore, serve: Any
) -> None:
    store = reference_store
    data = tmp_path / "berth"
    first = run_import(data, "distribution", str(store.root))

    # Broken images are reported and make the exit status 1; everything good is imported.
    assert first.code == 1, first.stderr
    imported = first.items("imported")
    assert set(imported) == set(store.good), first.report
    for ref, digest in store.digests.items():
        assert imported[ref]["digest"] == digest
    broken = first.items("broken")
    assert set(broken) == set(store.broken)
    for ref, reason in store.broken.items():
        assert reason in broken[ref]["reason"]
    skipped = first.items("skipped")
    assert set(skipped) == set(store.skipped)
    assert "schema 1" in skipped["old/schema1:v1"]["reason"]
    assert not any(i["repository"] == "team/gone" for i in first.report["items"])
    assert sorted(first.report["namespaces_created"]) == ["multi", "team"]

    # Hard links, no copies: each blob is the very file of the source store.
    assert first.blobs["copied"] == 0
    assert first.blobs["linked"] == len(store.blob_digests())
    files = berth_blob_files(data)
    for digest in store.blob_digests():
        assert files[digest].stat().st_ino == store.data_file(digest).stat().st_ino, digest

    # Nothing half-imported is visible: the broken images left no repository with a manifest.
    assert repositories_with_manifests(data) == store.good_repositories
    assert tags_in(data) == store.digests
    with database(data) as db:
        pushes = db.execute(
            "SELECT COUNT(*) FROM audit_events WHERE actor = 'import' AND action = 'manifest.push'"
        ).fetchone()[0]
        runs = db.execute(
            "SELECT target FROM audit_events WHERE action = 'import.distribution'"
        ).fetchall()
        pushed_by = {r[0] for r in db.execute("SELECT DISTINCT pushed_by FROM manifests")}
        events = db.execute(
            "SELECT COUNT(*) FROM webhook_events WHERE action = 'push' "
            'AND payload LIKE \'%"actor": {"name": "import"}%\''
        ).fetchone()[0]
    # One push per manifest and per tag of one: 2 busybox tags, schema2, layers, multi + 2 children.
    assert pushes == 7
    assert runs == [(str(store.root),)]
    assert pushed_by == {"import"}
    assert events == pushes  # webhooks hear of each imported manifest as of a push

    # Run again: everything is present, nothing is copied or linked, no file changes.
    before = stored_files(data)
    second = run_import(data, "distribution", str(store.root))
    assert second.code == 1
    assert set(second.items("present")) == set(store.good)
    assert second.blobs["linked"] == second.blobs["copied"] == second.blobs["shared"] == 0
    assert stored_files(data) == before
    assert tags_in(data) == store.digests

    # Every good image pulls from Berth exactly as it was pushed to the reference registry.
    server = serve(data)
    skopeo = Skopeo(tmp_path / "skopeo")
    for ref, image in store.good.items():
        pulled_identical(skopeo, server, ref, image, tmp_path)


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from appliance.metadata.store import MetadataStore
    from appliance.storage.filesystem import FilesystemStore

    placed = 0
    recorded = 0
    place_file, record_blobs = FilesystemStore.place_file, MetadataStore.record_blobs

    async def placing(self, *args, **kwargs):
        global placed
        placed += 1
        if placed == int(os.environ["KILL_AT_FILE"]):
            Path(os.environ["RECORDED_FILE"]).write_text(str(recorded))
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, in the middle of an import
        return await place_file(self, *args, **kwargs)

    async def recording(self, *args, **kwargs):
        global recorded
        records = await record_blobs(self, *args, **kwargs)
        recorded += len(records)
        return records

    FilesystemStore.place_file = placing
    MetadataStore.record_blobs = recording
    from appliance.cli import main
    main(sys.argv[1:])
    """
)


def test_interrupted_import_is_finished_by_running_it_again(
    tmp_path: Path, reference_store: ReferenceStore, serve: Any
) -> None:
    store = reference_store
    data = tmp_path / "berth"
    # Repositories go in name order: `multi` (5 blobs), `old/schema1` (skipped), then
    # `team/app/layers` (21 blobs, in groups of 16 and 5): killed as its third file is placed.
    args = ["import", "distribution", str(store.root), "--copy", "--data-dir", str(data)]
    recorded_file = tmp_path / "recorded"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, *args],
        env=berth_env(KILL_AT_FILE=str(5 + 3), RECORDED_FILE=str(recorded_file)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    recorded = int(recorded_file.read_text())
    assert recorded == 5

    # What was whole is there; the half-copied image is not visible. The group being placed
    # is an upload, which goes with the expired ones.
    assert repositories_with_manifests(data) == {"multi"}
    assert tags_in(data) == {"multi:latest": store.digests["multi:latest"]}
    with database(data) as db:
        left = [data / "storage" / "uploads" / r[0] for r in db.execute("SELECT id FROM uploads")]
    assert any(upload.is_dir() for upload in left)  # the one whose files were being placed

    resumed = run_import(data, "distribution", str(store.root), "--copy")
    assert resumed.code == 1
    total = len(store.blob_digests())
    # Nothing stored before the crash is copied again.
    assert resumed.blobs["copied"] == total - recorded
    assert resumed.items()["multi:latest"]["outcome"] == "present"
    assert set(resumed.items("imported")) == set(store.good) - {"multi:latest"}
    assert tags_in(data) == store.digests

    # The same result as an import that was never interrupted.
    clean = tmp_path / "clean"
    run_import(clean, "distribution", str(store.root), "--copy")
    assert tags_in(clean) == tags_in(data)
    assert set(berth_blob_files(clean)) == set(berth_blob_files(data))

    # The interrupted group's upload expires like any other, with what was placed in it.
    server = serve(data, BERTH_UPLOADS_EXPIRY="0.5", BERTH_UPLOADS_PURGE_INTERVAL="0.2")

    def uploads() -> int:
        with database(data) as db:
            return int(db.execute("SELECT COUNT(*) FROM uploads").fetchone()[0])

    deadline = time.monotonic() + 60
    while (uploads() or any(u.exists() for u in left)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert uploads() == 0, server.log()[-2000:]
    assert not any(upload.exists() for upload in left)


def snapshot(data: Path) -> tuple[dict[str, int], dict[str, tuple[int, float]]]:
    with database(data) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    return rows, stored_files(data)


def test_dry_run_changes_nothing(tmp_path: Path, reference_store: ReferenceStore) -> None:
    store = reference_store
    data = tmp_path / "berth"
    # Berth exists and holds one of the repositories already.
    first = run_import(data, "distribution", str(store.root), "--repository", "multi")
    assert first.code == 0, first.stderr
    before = snapshot(data)
    mtime = os.stat(data / "berth.db").st_mtime

    dry = run_import(data, "distribution", str(store.root), "--dry-run")
    assert dry.code == 1  # the broken images are reported as in a real run
    assert dry.report["dry_run"] is True
    assert set(dry.items("imported")) == set(store.good) - {"multi:latest"}
    assert set(dry.items("present")) == {"multi:latest"}
    assert set(dry.items("broken")) == set(store.broken)
    assert dry.report["namespaces_created"] == ["team"]  # would be
    layers = dry.items()["team/app/layers:1"]
    assert layers["blobs"] == 21
    assert dry.blobs["linked"] == dry.blobs["copied"] == 0
    assert snapshot(data) == before
    assert os.stat(data / "berth.db").st_mtime == mtime


def test_untagged_manifests_on_request(tmp_path: Path, reference_store: ReferenceStore) -> None:
    store = reference_store
    data = tmp_path / "berth"
    run = run_import(
        data, "distribution", str(store.root), "--repository", "team/app/**", "--untagged"
    )
    assert run.code == 0, run.stderr
    untagged = store.untagged["team/app/layers"]
    assert run.items("imported").keys() == {"team/app/layers:1", f"team/app/layers:{untagged}"}
    with database(data) as db:
        held = {r[0] for r in db.execute("SELECT digest FROM manifests")}
    assert untagged in held
    assert tags_in(data) == {"team/app/layers:1": store.digests["team/app/layers:1"]}


def test_into_a_namespace_and_patterns(tmp_path: Path, reference_store: ReferenceStore) -> None:
    data = tmp_path / "berth"
    run = run_import(
        data,
        "distribution",
        str(reference_store.root),
        "--repository",
        "multi",
        "--repository",
        "team/*",  # one component: not team/app/layers
        "--into",
        "moved",
    )
    assert run.code == 1  # team/broken, team/dangling
    assert repositories_with_manifests(data) == {
        "moved/multi",
        "moved/team/busybox",
        "moved/team/schema2",
    }
    assert run.report["namespaces_created"] == ["moved"]

    bad = run_import(data, "distribution", str(reference_store.root), "--repository", "Team/*")
    assert bad.code == 2
    assert "invalid --repository pattern 'Team/*'" in bad.stderr


def test_progress_on_a_terminal_only(tmp_path: Path, reference_store: ReferenceStore) -> None:
    """A progress line when stderr is a terminal; not a byte on stderr otherwise."""
    quiet = run_import(tmp_path / "quiet", "distribution", str(reference_store.root))
    assert quiet.stderr == ""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [*berth_command(), "import", "distribution", str(reference_store.root),
             "--repository", "multi", "--data-dir", str(tmp_path / "tty")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=follower,
            env=berth_env(), timeout=300, check=False,
        )  # fmt: skip
        os.close(follower)
        shown = b""
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not data:
                break
            shown += data
    finally:
        os.close(leader)
    assert proc.returncode == 0
    assert b"\r[0/1] multi: " in shown
    assert shown.endswith(b"\r\x1b[K")  # the line is cleared before the report
    assert b"multi: 1 imported" in proc.stdout

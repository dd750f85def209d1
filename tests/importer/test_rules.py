"""An import meets Berth's rules as a push does: a tag Berth has at another digest is left
alone (reported) unless --force; an immutable-tag rule refuses even then; a quota refuses what
does not fit; a proxy namespace takes no import. The tag check is atomic with the write."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.importer.conftest import (
    CREDS,
    ReferenceStore,
    berth_env,
    database,
    repositories_with_manifests,
    run_import,
    tags_in,
)
from tests.support.clients import Skopeo
from tests.support.images import ImageCache
from tests.support.servers import berth_command


def berth(data: Path, *args: str) -> str:
    proc = subprocess.run(
        [*berth_command(), *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=berth_env(),
        timeout=120,
        check=True,
    )
    return proc.stdout


def test_existing_tags_force_and_immutable_rules(
    tmp_path: Path, reference_store: ReferenceStore, images: ImageCache, serve: Any
) -> None:
    store = reference_store
    data = tmp_path / "berth"
    server = serve(data)
    # Someone pushed another image to the tag the source has.
    other = Skopeo(tmp_path / "skopeo").push(
        images.docker_schema2(), f"docker://{server.host}/team/busybox:1.35", creds=CREDS
    )
    source = store.digests["team/busybox:1.35"]
    assert other != source

    # The import runs while Berth serves; the pushed tag is reported and left alone.
    run = run_import(data, "distribution", str(store.root), "--repository", "team/busybox")
    assert run.code == 1
    conflict = run.items("conflict")["team/busybox:1.35"]
    assert other in conflict["reason"]
    assert source in conflict["reason"]
    assert "--force" in conflict["reason"]
    assert set(run.items("imported")) == {"team/busybox:stable"}
    assert tags_in(data)["team/busybox:1.35"] == other

    # An immutable-tag rule refuses even a forced import.
    said = berth(data, "immutable", "add", "team", r"1\..*")
    rule = said.split()[1].rstrip(":")
    forced = run_import(
        data, "distribution", str(store.root), "--repository", "team/busybox", "--force"
    )
    assert forced.code == 1
    assert "immutable" in forced.items("refused")["team/busybox:1.35"]["reason"]
    assert tags_in(data)["team/busybox:1.35"] == other

    # Without the rule, --force moves the tag, as a push would, and says so in the audit log.
    berth(data, "immutable", "remove", "team", rule)
    moved = run_import(
        data, "distribution", str(store.root), "--repository", "team/busybox", "--force"
    )
    assert moved.code == 0, moved.report
    assert set(moved.items("imported")) == {"team/busybox:1.35"}
    assert tags_in(data)["team/busybox:1.35"] == source
    with database(data) as db:
        move = db.execute(
            "SELECT actor, details FROM audit_events WHERE action = 'tag.move' "
            "AND target = 'team/busybox:1.35'"
        ).fetchall()
    assert len(move) == 1
    assert move[0][0] == "import"
    assert source in move[0][1]
    assert other in move[0][1]


def test_quota_and_proxy_namespace(tmp_path: Path, reference_store: ReferenceStore) -> None:
    store = reference_store
    data = tmp_path / "berth"
    first = run_import(data, "distribution", str(store.root), "--repository", "team/busybox")
    assert first.code == 0
    berth(data, "quota", "set", "team", "1")
    refused = run_import(data, "distribution", str(store.root), "--repository", "team/app/layers")
    assert refused.code == 1
    assert "quota" in refused.items("refused")["team/app/layers:1"]["reason"]
    assert "team/app/layers" not in repositories_with_manifests(data)

    # A proxy namespace (configured here, not yet registered by a server) takes no import.
    env = berth_env(BERTH_PROXY_UPSTREAMS="multi=http://127.0.0.1:9")
    proxy = run_import(data, "distribution", str(store.root), "--repository", "multi", env=env)
    assert proxy.code == 1
    assert "proxy namespace" in proxy.items("refused")["multi:*"]["reason"]
    assert "multi" not in repositories_with_manifests(data)

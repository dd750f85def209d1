"""A rolling upgrade on PostgreSQL: version N and version N+1 serve one database together.

N is an earlier commit of this repository (ROLLING_FROM, exported with `git archive` and run
from source on this environment); N+1 is this checkout. N migrates a new database and serves;
N+1 applies its (expand) migrations while N keeps serving, then serves beside it. Images pushed
through either are pulled byte for byte through both, and N keeps working on the schema that
N+1 left, which is what docs/upgrades.md promises.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from appliance.metadata.db import migrations, open_database
from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.earlier import FROM_SOURCE, now_version, source_env
from tests.support.images import ImageCache, compare_images
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server, require_binary
from tests.upgrade.conftest import EarlierSource

# The last commit before migrations 0009 (ALTER TABLE manifests/tags ADD COLUMN pushed_by) and
# 0010 (scanning): so N+1 changes tables N writes on every push.
ROLLING_FROM = "f8f1fce"
N_SCHEMA = 8


def serve(tree: Path, data: Path, url: str, log: Path) -> Server:
    cmd = [*FROM_SOURCE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
    env = source_env(tree, BERTH_METADATA_URL=url, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    server, _ = start_command(cmd, env=env, cwd=tree, log_path=log)
    return server


def migrate(tree: Path, url: str) -> str:
    done = subprocess.run(
        [*FROM_SOURCE, "migrate"],
        cwd=tree,
        env=source_env(tree, BERTH_METADATA_URL=url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_versions_n_and_n_plus_1_serve_one_postgres_database(
    earlier_source: EarlierSource,
    postgres_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    require_binary("skopeo", "skopeo")
    require_binary("busybox", "busybox-static")
    old = earlier_source(ROLLING_FROM)
    new = Path(__file__).resolve().parents[2]
    url = postgres_database()
    shared = tmp_path / "shared"  # one blob store and one server secret, as on shared storage
    images = ImageCache(tmp_path / "images")
    skopeo = Skopeo(tmp_path / "skopeo")
    creds = f"{ADMIN}:{ADMIN_PASSWORD}"

    assert "now at schema version 8" in migrate(old, url)
    n = serve(old, shared, url, tmp_path / "n.log")
    servers = [n]
    try:
        first = images.busybox()
        assert skopeo.push(first, f"docker://{n.host}/roll/first:1", creds=creds) == (
            first.manifest_digest
        )

        # N+1 migrates while N serves: expand migrations only (tests/metadata/
        # test_migration_rules.py), so N goes on working.
        out = migrate(new, url)
        latest = migrations("postgresql")[-1].version
        assert f"now at schema version {latest}" in out
        assert latest > N_SCHEMA
        n1 = serve(new, shared, url, tmp_path / "n1.log")
        servers.append(n1)

        second = images.docker_schema2()
        third = images.multi_arch()
        pushed = {
            "roll/first:1": first,
            "roll/second:1": second,
            "roll/third:1": third,
        }
        # Pushes through both versions, after the migration.
        assert skopeo.push(second, f"docker://{n.host}/roll/second:1", creds=creds) == (
            second.manifest_digest
        )
        assert skopeo.push(third, f"docker://{n1.host}/roll/third:1", creds=creds) == (
            third.manifest_digest
        )
        for server, name in ((n, "n"), (n1, "n1")):
            for ref, image in pushed.items():
                layout = tmp_path / f"pulled-{name}-{ref.replace('/', '-').replace(':', '-')}"
                skopeo.copy(
                    f"docker://{server.host}/{ref}",
                    f"oci:{layout}:{image.tag}",
                    all=bool(image.child_manifests),
                    creds=creds,
                )
                assert compare_images(image.layout, image.tag, layout, image.tag) == [], (
                    name,
                    ref,
                )
            assert sorted(skopeo.list_tags(f"docker://{server.host}/roll/first", creds=creds)) == [
                "1"
            ]
        # N+1 recorded itself as the Berth that applied its migrations; N's rows say nothing.
        db = open_database(url)
        try:
            status = db.schema_status()
        finally:
            db.close()
        by = {m.version: m.berth_version for m in status.applied}
        assert all(by[v] is None for v in range(1, N_SCHEMA + 1))
        assert by[latest] == now_version()
    finally:
        for server in servers:
            code = server.stop()
            assert code == 0, server.log()[-3000:]
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-3000:]

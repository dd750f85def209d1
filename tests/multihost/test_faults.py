"""Two Berth hosts behind nginx when things break: S3 gone for one host, PostgreSQL restarted,
a host killed with SIGKILL in the middle of pushes.

The cluster here has a PostgreSQL server of its own (this module restarts it) and reaches the
shared SeaweedFS bucket directly, except host1, whose S3 traffic goes through a proxy that can
drop every connection (tests/support/faultproxy.py): as a host sees an S3 service it cannot
reach. Every fault is undone by the test that made it, and no host is restarted by hand except
the one a test killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import OCI_MANIFEST, sha
from tests.support.clients import Skopeo, ToolError
from tests.support.cluster import (
    Balancer,
    Cluster,
    Host,
    basic,
    leaders,
    make_user,
    push_small_image,
    start_haproxy,
    until,
)
from tests.support.faultproxy import FaultProxy
from tests.support.images import BuiltImage, ImageCache, compare_images
from tests.support.postgres import PostgresServer, migrated
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import ADMIN, ADMIN_PASSWORD, descendants, free_port

LEASE = 3.0  # seconds: jobs.lease


@dataclass
class Faulty:
    cluster: Cluster
    postgres: PostgresServer
    s3_of_host1: FaultProxy


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS) -> Iterator[Faulty]:
    postgres = PostgresServer.create().start()
    proxy = FaultProxy(seaweedfs.endpoint)
    try:
        shared = {
            "BERTH_METADATA_URL": migrated(postgres.create_database()),
            "BERTH_METADATA_POOL_TIMEOUT": "2",
            **seaweedfs.env(seaweedfs.new_bucket("berth-faults")),
            "BERTH_STORAGE_S3_MAX_ATTEMPTS": "2",
            "BERTH_SCAN_ENABLED": "false",
            "BERTH_JOBS_LEASE": str(LEASE),
        }
        cluster = Cluster(tmp_path_factory.mktemp("faults"), shared, count=2)
        cluster.hosts[1].env["BERTH_STORAGE_S3_ENDPOINT"] = proxy.url
        cluster.start()
        try:
            yield Faulty(cluster, postgres, proxy)
        finally:
            codes = cluster.stop()
        for host in cluster.hosts:  # a killed host was started again: it too ends cleanly
            assert codes[host.name] == 0, host.log()[-4000:]
    finally:
        proxy.close()
        postgres.destroy()


@pytest.fixture(scope="module")
def haproxy(faulty: Faulty, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    """HAProxy with docs/scaling.md's example configuration in front of the same two hosts."""
    balancer = start_haproxy(tmp_path_factory.mktemp("haproxy"), faulty.cluster.hosts, free_port())
    try:
        yield balancer
    finally:
        balancer.stop()


def blob_gets(host: Host) -> int:
    """Blob GETs `host` answered (its access log, every run)."""
    return sum(
        1
        for line in host.log().splitlines()
        if '"logger": "berth.access"' in line and " GET /v2/" in line and "/blobs/" in line
    )


def ready(host: Host) -> tuple[int, dict[str, object]]:
    with host.client(auth=None) as anyone:
        got = anyone.get("/-/ready")
    return got.status_code, got.json()


def test_a_host_that_loses_s3_answers_503_and_recovers_by_itself(
    faulty: Faulty, haproxy: Balancer
) -> None:
    a, b = faulty.cluster.hosts
    pid = b.server.proc.pid if b.server is not None else 0
    layer = os.urandom(64 << 10)
    with a.client() as api:
        push_small_image(api, "team/s3-lost", "1", layer)
    faulty.s3_of_host1.down = True
    try:
        until("host1 not ready without S3", lambda: ready(b)[0] == 503, 20, 0.2)
        answer = ready(b)[1]
        checks = answer["checks"]
        assert isinstance(checks, dict)
        assert checks["database"] == "ok"
        assert checks["storage"] != "ok"
        assert answer["host"] == "host1"
        assert ready(a) == (
            200,
            {"status": "ok", "checks": {"database": "ok", "storage": "ok"}, "host": "host0"},
        )
        with b.client() as direct:  # the host itself says so, in the OCI error shape
            got = direct.get(f"/v2/team/s3-lost/blobs/{sha(layer)}")
        assert got.status_code == 503
        assert got.json()["errors"][0]["code"] == "UNAVAILABLE"
        # Through the balancer every download still succeeds: host1's 503 sends nginx on.
        assert faulty.cluster.front is not None
        with faulty.cluster.front.client() as front:
            for _ in range(4):
                got = front.get(f"/v2/team/s3-lost/blobs/{sha(layer)}")
                assert got.status_code == 200
                assert got.content == layer
        # HAProxy checks /-/ready: once host1 fails it twice, every request goes to host0.
        with httpx.Client(base_url=haproxy.url, auth=(ADMIN, ADMIN_PASSWORD), verify=False) as lb:

            def all_served(n: int) -> bool:
                gots = [lb.get(f"/v2/team/s3-lost/blobs/{sha(layer)}") for _ in range(n)]
                return all(g.status_code == 200 and g.content == layer for g in gots)

            until("HAProxy passing over host1", lambda: all_served(4), 20, 0.2)
            assert all_served(10)
    finally:
        faulty.s3_of_host1.down = False
    until("host1 ready again", lambda: ready(b)[0] == 200, 20, 0.2)
    with b.client() as direct:
        got = direct.get(f"/v2/team/s3-lost/blobs/{sha(layer)}")
    assert got.status_code == 200
    assert got.content == layer
    # And HAProxy sends it requests again once its checks pass.
    served = blob_gets(b)
    with httpx.Client(base_url=haproxy.url, auth=(ADMIN, ADMIN_PASSWORD), verify=False) as lb:

        def back() -> bool:
            assert lb.get(f"/v2/team/s3-lost/blobs/{sha(layer)}").status_code == 200
            return blob_gets(b) > served

        until("HAProxy sending requests to host1 again", back, 20, 0.2)
    assert b.server is not None
    assert b.server.proc.pid == pid
    assert b.alive


def test_postgresql_restarted_every_host_recovers_without_a_restart(faulty: Faulty) -> None:
    hosts = faulty.cluster.hosts
    a, b = hosts
    pids = [h.server.proc.pid for h in hosts if h.server is not None]
    password = make_user(faulty.cluster, "percy")
    with a.client() as api:
        before = push_small_image(api, "team/pg-restart", "before", b"before the restart")
    until("a leader", lambda: any(leaders(h) for h in hosts), 30, 0.2)
    generation = max(g for h in hosts for g in leaders(h))

    faulty.postgres.stop()
    try:
        for host in hosts:
            until(
                f"{host.name} not ready without PostgreSQL", lambda h=host: ready(h)[0] == 503, 20
            )
            checks = ready(host)[1]["checks"]
            assert isinstance(checks, dict)
            assert checks["database"] != "ok"
        with a.client() as api:  # a request that needs the database: 503, the OCI error shape
            got = api.get("/v2/team/pg-restart/tags/list")
        assert got.status_code == 503
        assert got.json()["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        faulty.postgres.start()
    for host in hosts:
        until(f"{host.name} ready again", lambda h=host: ready(h)[0] == 200, 30, 0.2)
    assert [h.server.proc.pid for h in hosts if h.server is not None] == pids

    # Reads and writes work on both; the manifest pushed before is intact.
    with b.client() as api:
        got = api.get("/v2/team/pg-restart/manifests/before", headers={"accept": OCI_MANIFEST})
        assert got.status_code == 200
        assert sha(got.content) == before
        after = push_small_image(api, "team/pg-restart", "after", b"after the restart")
    with a.client() as api:
        got = api.get("/v2/team/pg-restart/manifests/after", headers={"accept": OCI_MANIFEST})
        assert sha(got.content) == after

    # Each host listens again: a revocation on one is refused on the other within a second.
    with a.client(auth=("percy", password)) as percy:
        made = percy.post("/api/v1/tokens", json={"name": "ci", "scopes": ["read_registry"]})
        assert made.status_code == 201, made.text
    pat, pat_id = made.json()["token"], made.json()["id"]
    with b.client(auth=None) as there:
        assert there.get("/v2/", headers=basic("percy", pat)).status_code == 200
        with a.client(auth=("percy", password)) as percy:
            assert percy.delete(f"/api/v1/tokens/{pat_id}").status_code == 200
        until(
            "a revocation seen on the other host after the restart",
            lambda: there.get("/v2/", headers=basic("percy", pat)).status_code == 401,
            1.0,
        )

    # And the jobs have a leader again (its session ended with the server).
    until(
        "a leader after the restart",
        lambda: max(g for h in hosts for g in leaders(h)) > generation,
        LEASE + 15,
        0.2,
    )


def test_a_frozen_leader_is_replaced_within_the_lease_and_steps_down(faulty: Faulty) -> None:
    """The leader's host stops answering without closing anything (SIGSTOP: a hung machine,
    a network partition): its database session ends after the lease (`idle_session_timeout`),
    another host leads, and the frozen one, thawed, finds it no longer leads."""
    hosts = faulty.cluster.hosts
    until("a leader", lambda: any(leaders(h) for h in hosts), 30, 0.2)
    generation = max(g for h in hosts for g in leaders(h))
    (leader,) = [h for h in hosts if generation in leaders(h)]
    assert leader.server is not None
    frozen = [leader.server.proc.pid, *descendants(leader.server.proc.pid)]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        took = until(
            "another host leading",
            lambda: any(max(leaders(h), default=0) > generation for h in hosts if h is not leader),
            LEASE + 10,
            0.1,
        )
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert took <= LEASE + 5, took
    until(
        "the thawed leader stepping down",
        lambda: f"no longer leading jobs (generation {generation})" in leader.log(),
        LEASE + 10,
        0.1,
    )
    assert ready(leader)[0] == 200


@dataclass
class Pushed:
    repo: str
    tag: str
    manifest: str
    layer: bytes


def pusher(front_url: str, name: str, count: int, out: list[Pushed], errors: list[str]) -> None:
    """Push `count` images through the balancer, as a client does: a push that fails (a
    connection dropped, a 5xx) is retried from the start, up to ten times."""
    auth = (ADMIN, ADMIN_PASSWORD)
    with httpx.Client(base_url=front_url, auth=auth, timeout=60, verify=False) as client:
        for i in range(count):
            layer = os.urandom(256 << 10)
            repo, tag = f"team/crash-{name}", str(i)
            for attempt in range(10):
                try:
                    digest = push_small_image(client, repo, tag, layer)
                except (httpx.TransportError, AssertionError) as e:
                    if attempt == 9:
                        errors.append(f"{repo}:{tag}: {e}")
                    time.sleep(0.3)
                    continue
                out.append(Pushed(repo, tag, digest, layer))  # acknowledged
                break


def skopeo_pusher(
    skopeo: Skopeo, image: BuiltImage, target: str, count: int, out: list[str], errors: list[str]
) -> None:
    """skopeo pushes of `image` to `count` tags, each run again when it fails (as a CI job's
    retry does), up to five times; `out` gets the tags acknowledged."""
    for i in range(count):
        for attempt in range(5):
            try:
                skopeo.push(image, f"{target}:{i}", creds=f"{ADMIN}:{ADMIN_PASSWORD}")
            except ToolError as e:
                if attempt == 4:
                    errors.append(f"skopeo {target}:{i}: {e}")
                time.sleep(0.5)
                continue
            out.append(str(i))
            break


def test_a_host_killed_in_the_middle_of_pushes(
    faulty: Faulty, images: ImageCache, tmp_path: Path
) -> None:
    """SIGKILL to every process of host0 while three clients and skopeo push through nginx:
    the clients' retries succeed, and every acknowledged manifest and its blobs are served
    byte for byte, by the survivor and by the killed host once it is back."""
    cluster = faulty.cluster
    assert cluster.front is not None
    victim, survivor = cluster.hosts
    pushed: list[Pushed] = []
    errors: list[str] = []
    per_client = 8
    image = images.busybox()
    skopeo = Skopeo(tmp_path / "skopeo")
    by_skopeo: list[str] = []
    target = f"docker://{cluster.front.host}/team/crash-skopeo"
    threads = [
        threading.Thread(
            target=pusher, args=(cluster.front.url, f"c{i}", per_client, pushed, errors)
        )
        for i in range(3)
    ]
    threads.append(
        threading.Thread(target=skopeo_pusher, args=(skopeo, image, target, 3, by_skopeo, errors))
    )
    for t in threads:
        t.start()
    until("the first pushes acknowledged", lambda: len(pushed) >= 3, 60, 0.01)
    victim.kill()
    killed_with = len(pushed)
    for t in threads:
        t.join(300)
    assert errors == []
    assert len(pushed) == 3 * per_client
    assert by_skopeo == ["0", "1", "2"]
    assert killed_with < len(pushed), "the kill came after every push"
    assert served_by(victim) > 0
    assert served_by(survivor) > 0

    def check(client: httpx.Client) -> None:
        for image in pushed:
            got = client.get(
                f"/v2/{image.repo}/manifests/{image.tag}", headers={"accept": OCI_MANIFEST}
            )
            assert got.status_code == 200, (image.repo, image.tag, got.text)
            assert sha(got.content) == image.manifest
            blob = client.get(f"/v2/{image.repo}/blobs/{sha(image.layer)}")
            assert blob.status_code == 200
            assert blob.content == image.layer

    with cluster.front.client() as front:
        check(front)
    for tag in by_skopeo:
        layout = skopeo.pull_to_layout(
            f"{target}:{tag}", tmp_path / f"pulled-{tag}", tag, creds=f"{ADMIN}:{ADMIN_PASSWORD}"
        )
        assert compare_images(image.layout, image.tag, layout, tag) == []
    victim.start()
    with victim.client() as direct:
        check(direct)


def served_by(host: Host) -> int:
    """Manifest PUTs a host answered with 201, over all its runs (its access log)."""
    return sum(
        1
        for line in host.log().splitlines()
        if '"logger": "berth.access"' in line
        and " PUT /v2/" in line
        and "/manifests/" in line
        and " 201 " in line
    )

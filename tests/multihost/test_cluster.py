"""Three Berth hosts on one PostgreSQL and one S3 bucket (SeaweedFS), behind nginx with the
pool configuration `berth ctl reconfigure` renders (tests/support/cluster.py). Started once for
the module; every test talks to the hosts as clients do.

Real clients push and pull through the balancer; tokens, sessions, uploads and SAML sign-in
state work whichever host a request reaches; revocations and rule changes reach every host
within a second; rate limits and sign-in lockouts count across hosts; the jobs leader moves
when its host dies and the collector still runs once; `/-/ready`, the metrics and `berth ctl
doctor` say which host is which and whether the hosts agree. The longest scenarios (a host
killed in the middle of pushes, PostgreSQL restarted, S3 going away) are in test_faults.py,
on a cluster of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.test_docker import load_busybox
from tests.server.helpers import OCI_MANIFEST, sha
from tests.support.clients import DockerDaemon, Podman, Skopeo
from tests.support.cluster import (
    Cluster,
    Host,
    basic,
    leaders,
    make_user,
    path_of,
    push_small_image,
    until,
)
from tests.support.images import ImageCache, compare_images
from tests.support.postgres import PostgresServer, migrated
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import ADMIN, ADMIN_PASSWORD, berth_command
from tests.support.simplesamlphp import SAML_USERS, SimpleSamlPhp

PULL_RATE, PULL_BURST = 2.0, 6.0
LOCKOUT = 4  # failed sign-ins that lock an account
LEASE = 3.0  # seconds: jobs.lease


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    seaweedfs: SeaweedFS,
    simplesamlphp: SimpleSamlPhp,
) -> Iterator[Cluster]:
    database = migrated(postgres_server.create_database())
    shared = {
        "BERTH_METADATA_URL": database,
        **seaweedfs.env(seaweedfs.new_bucket("berth-cluster")),
        "BERTH_SAML_IDP_METADATA_URL": simplesamlphp.metadata_url,
        "BERTH_SAML_GROUP_ROLES": "registry-devs=devs:developer",
        "BERTH_SCAN_ENABLED": "false",
        "BERTH_JOBS_LEASE": str(LEASE),
        "BERTH_GC_INTERVAL": "1",
        "BERTH_RATELIMIT_PULL_RATE": str(PULL_RATE),
        "BERTH_RATELIMIT_PULL_BURST": str(PULL_BURST),
        "BERTH_AUTH_LOCKOUT_THRESHOLD": str(LOCKOUT),
    }
    # host0 runs two workers: the host agent (one of them) applies the other hosts' counts.
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), shared, workers={0: 2}).start()
    try:
        with httpx.Client(verify=False, timeout=30) as c:
            simplesamlphp.trust_sp(c.get(cluster.public_url + "/saml/metadata").text)
        yield cluster
    finally:
        codes = cluster.stop()
    for host in cluster.hosts:
        if host.starts == 1:  # a host a test killed ends with the signal's code
            assert codes[host.name] == 0, host.log()[-4000:]


def served_by(host: Host, path: str) -> int:
    """Access-log lines of `host` (any of its runs) for requests whose path starts so."""
    count = 0
    for line in host.log().splitlines():
        if '"logger": "berth.access"' in line and f'"{path}' in line.replace(" ", ""):
            count += 1
    return count


def admin_api(host: Host) -> httpx.Client:
    return host.client()


def clean_environment() -> dict[str, str]:
    """This process's environment without any `BERTH_*` variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}


# -- real clients through the balancer ---------------------------------------------------------


def test_skopeo_podman_and_docker_push_and_pull_through_the_balancer(
    cluster: Cluster, images: ImageCache, dockerd: DockerDaemon, tmp_path: Path
) -> None:
    assert cluster.front is not None
    front = cluster.front.host
    skopeo = Skopeo(tmp_path / "skopeo")
    skopeo.login(front, ADMIN, ADMIN_PASSWORD)
    image = images.busybox()
    pushed = skopeo.push(image, f"docker://{front}/team/busybox:1")
    layout = skopeo.pull_to_layout(f"docker://{front}/team/busybox:1", tmp_path / "pulled", "1")
    assert compare_images(image.layout, image.tag, layout, "1") == []
    podman = Podman(tmp_path / "podman")
    podman.login(front, ADMIN, ADMIN_PASSWORD)
    pulled = podman.pull(f"{front}/team/busybox:1")
    podman.push(f"{front}/team/busybox:1", f"{front}/team/from-podman:1")
    again = Podman(tmp_path / "podman-again")
    again.login(front, ADMIN, ADMIN_PASSWORD)
    assert again.pull(f"{front}/team/from-podman:1") == pulled
    docker = dockerd.client(tmp_path / "docker-config")
    docker.login(front, ADMIN, ADMIN_PASSWORD)
    local = load_busybox(docker, skopeo, images, "cluster-local/busybox:1", tmp_path)
    docker.tag(local, f"{front}/team/from-docker:1")
    digest = docker.push(f"{front}/team/from-docker:1")
    docker.rmi(f"{front}/team/from-docker:1", local)
    assert docker.pull(f"{front}/team/from-docker:1") == digest
    assert docker.inspect(f"{front}/team/from-docker:1")["Id"] == image.config_digest
    assert pushed.startswith("sha256:")
    # The balancer spread the work: every host answered registry requests.
    for host in cluster.hosts:
        assert served_by(host, "/v2/") > 0, f"{host.name} answered nothing"


# -- one registry, whichever host answers ------------------------------------------------------


def test_a_token_issued_by_one_host_is_accepted_by_the_others(cluster: Cluster) -> None:
    with cluster.hosts[0].client() as api:
        push_small_image(api, "team/tokens", "1", b"a layer for tokens")
    issuer = cluster.hosts[1]
    with issuer.client() as c:
        got = c.get("/token", params={"service": "berth", "scope": "repository:team/tokens:pull"})
    assert got.status_code == 200, got.text
    token = got.json()["token"]
    for host in cluster.hosts:
        with host.client(auth=None) as c:
            answer = c.get(
                "/v2/team/tokens/manifests/1",
                headers={"authorization": f"Bearer {token}", "accept": OCI_MANIFEST},
            )
        assert answer.status_code == 200, (host.name, answer.text)


def test_a_revocation_on_one_host_is_refused_on_another_within_a_second(
    cluster: Cluster,
) -> None:
    a, b, c = cluster.hosts
    password = make_user(cluster, "rita")
    with a.client(auth=("rita", password)) as rita:
        made = rita.post("/api/v1/tokens", json={"name": "laptop", "scopes": ["read_registry"]})
        assert made.status_code == 201, made.text
    pat, pat_id = made.json()["token"], made.json()["id"]
    with b.client(auth=("rita", pat)) as via_b:
        bearer = via_b.get(
            "/token", params={"service": "berth", "scope": "repository:team/app:pull"}
        ).json()["token"]
    # Every host has checked (and cached) the PAT and the registry token made with it.
    for host in cluster.hosts:
        with host.client(auth=None) as anyone:
            assert anyone.get("/v2/", headers={"authorization": f"Bearer {bearer}"}).is_success
            assert anyone.get("/v2/", headers=basic("rita", pat)).is_success

    with a.client(auth=("rita", password)) as rita:
        assert rita.delete(f"/api/v1/tokens/{pat_id}").status_code == 200
    revoked_at = time.monotonic()
    with c.client(auth=None) as there:
        until(
            "the revoked PAT's registry token refused on another host",
            lambda: (
                there.get("/v2/", headers={"authorization": f"Bearer {bearer}"}).status_code == 401
            ),
            1.0,
        )
        assert there.get("/v2/", headers=basic("rita", pat)).status_code == 401
    assert time.monotonic() - revoked_at < 1.5

    # Disabling the user on one host: their password stops working on the others.
    for host in (b, c):
        with host.client(auth=None) as anyone:
            assert anyone.get("/v2/", headers=basic("rita", password)).is_success
    with a.client() as admin:
        assert admin.patch("/api/v1/users/rita", json={"disabled": True}).status_code == 200
    for host in (b, c):
        with host.client(auth=None) as anyone:
            until(
                f"a disabled user refused on {host.name}",
                lambda anyone=anyone: (
                    anyone.get("/v2/", headers=basic("rita", password)).status_code == 401
                ),
                1.0,
            )


def test_a_chunked_upload_whose_requests_land_on_every_host(cluster: Cluster) -> None:
    a, b, c = cluster.hosts
    chunks = [os.urandom(5 << 20), os.urandom(6 << 20), os.urandom(1234)]
    body = b"".join(chunks)
    clients = [a.client(), b.client(), c.client()]
    try:
        location = path_of(clients[0].post("/v2/team/chunked/blobs/uploads/").headers["location"])
        offset = 0
        for i, chunk in enumerate(chunks):
            end = offset + len(chunk) - 1
            got = clients[(i + 1) % 3].patch(
                location, content=chunk, headers={"content-range": f"{offset}-{end}"}
            )
            assert got.status_code == 202, got.text
            assert got.headers["range"] == f"0-{end}"
            location = path_of(got.headers["location"])
            offset = end + 1
        status = clients[1].get(location)
        assert status.status_code == 204
        assert status.headers["range"] == f"0-{offset - 1}"
        wrong = clients[2].put(location, params={"digest": sha(b"not this")})
        assert wrong.status_code == 400
        assert wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
        # A wrong digest ends the upload: nothing is stored, the session is gone everywhere.
        assert clients[0].get(location).status_code == 404

        location = path_of(clients[2].post("/v2/team/chunked/blobs/uploads/").headers["location"])
        offset = 0
        for i, chunk in enumerate(chunks):
            end = offset + len(chunk) - 1
            got = clients[i % 3].patch(
                location, content=chunk, headers={"content-range": f"{offset}-{end}"}
            )
            assert got.status_code == 202, got.text
            location, offset = path_of(got.headers["location"]), end + 1
        done = clients[1].put(location, params={"digest": sha(body)})
        assert done.status_code == 201, done.text
        assert done.headers["docker-content-digest"] == sha(body)
    finally:
        for client in clients:
            client.close()
    assert cluster.front is not None
    with cluster.front.client() as front:
        got = front.get(f"/v2/team/chunked/blobs/{sha(body)}")
    assert got.status_code == 200
    assert sha(got.content) == sha(body)


def test_a_saml_response_replayed_to_another_host_is_refused(
    cluster: Cluster, browser: Any
) -> None:
    sally = SAML_USERS[0]
    posted: list[str] = []
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.on(
            "request",
            lambda r: (
                posted.append(r.post_data or "")
                if r.url.endswith("/saml/acs") and r.method == "POST"
                else None
            ),
        )
        page.goto(cluster.public_url + "/signin")
        page.click("#saml-signin")
        page.wait_for_selector("input[name=username]")
        page.fill("input[name=username]", sally.username)
        page.fill("input[name=password]", sally.password)
        page.click("button[type=submit], input[type=submit] >> nth=0")
        page.wait_for_url(cluster.public_url + "/**")
        page.wait_for_load_state()
        assert sally.username in page.inner_text("header .who")
    finally:
        context.close()
    assert posted, "the IdP posted a SAML response"
    from urllib.parse import parse_qs  # noqa: PLC0415

    response = parse_qs(posted[0])["SAMLResponse"][0]
    # The request id it answers was used once: no host, whichever, takes it again.
    for host in cluster.hosts:
        with httpx.Client(base_url=host.url, timeout=30) as fresh:
            replay = fresh.post("/saml/acs", data={"SAMLResponse": response})
        assert replay.status_code == 401, (host.name, replay.status_code)
        assert "no pending sign-in" in replay.text
        assert "berth_session" not in fresh.cookies


def test_a_console_session_and_its_csrf_token_work_on_every_host(cluster: Cluster) -> None:
    """Signed in on one host, the same browser session (and its CSRF token) works on the
    others. The cookies are sent by hand: they are `Secure` (the public URL is https), and
    these requests go to each host's own plain-HTTP address, behind the balancer's back."""
    a, b, c = cluster.hosts
    with a.client(auth=None, follow_redirects=False) as on_a:
        form = on_a.get("/signin")
        assert form.status_code == 200
        token = form.cookies["berth_signin_csrf"]
        signed = on_a.post(
            "/signin",
            data={"username": ADMIN, "password": ADMIN_PASSWORD, "csrf_token": token},
            headers={"cookie": f"berth_signin_csrf={token}"},
        )
        assert signed.status_code in (302, 303), signed.text
        session = signed.cookies["berth_session"]
    cookie = {"cookie": f"berth_session={session}"}
    with b.client(auth=None, headers=cookie, follow_redirects=False) as on_b:
        page = on_b.get("/namespaces")
        assert page.status_code == 200
        assert ADMIN in page.text
        csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    with c.client(auth=None, headers=cookie, follow_redirects=False) as on_c:
        made = on_c.post("/namespaces", data={"name": "console-made", "csrf_token": csrf})
        assert made.status_code in (302, 303), made.text
        refused = on_c.post("/namespaces", data={"name": "forged", "csrf_token": "x" * 43})
        assert refused.status_code == 403
    with a.client() as api:
        assert api.get("/api/v1/namespaces/console-made").status_code == 200
        assert api.get("/api/v1/namespaces/forged").status_code == 404


# -- changes seen everywhere ------------------------------------------------------------------


def test_rules_set_on_one_host_hold_on_the_others_within_a_second(cluster: Cluster) -> None:
    a, b, c = cluster.hosts
    with a.client() as via_a, c.client() as via_c:
        push_small_image(via_c, "rules/app", "v1", b"first v1")
        added = via_a.post("/api/v1/namespaces/rules/immutable-rules", json={"pattern": "v.*"})
        assert added.status_code == 201, added.text
        started = time.monotonic()

        def refused() -> bool:
            got = via_c.delete("/v2/rules/app/manifests/v1")
            return got.status_code == 403 and got.json()["errors"][0]["code"] == "DENIED"

        until("an immutable rule made on another host", refused, 1.0)
        assert time.monotonic() - started < 1.5
    with b.client() as via_b, c.client() as via_c:
        assert via_b.put("/api/v1/namespaces/rules/quota", json={"limit_bytes": 10}).is_success
        until(
            "a quota set on another host",
            lambda: (
                via_c.post(
                    "/v2/rules/big/blobs/uploads/",
                    params={"digest": sha(b"more than ten bytes")},
                    content=b"more than ten bytes",
                ).status_code
                == 403
            ),
            1.0,
        )


def test_a_pull_policy_set_on_one_host_holds_on_the_others_within_a_second(
    cluster: Cluster,
) -> None:
    """Scanning is off here, so every image is unscanned: a policy that refuses unscanned
    images, set through one host, refuses pulls on another within a second; removed through a
    third, pulls work again."""
    a, b, c = cluster.hosts
    with c.client() as via_c:
        assert via_c.post("/api/v1/namespaces", json={"name": "gated"}).status_code == 201
        push_small_image(via_c, "gated/app", "1", b"an unscanned layer")

        def pull() -> int:
            return via_c.get(
                "/v2/gated/app/manifests/1", headers={"accept": OCI_MANIFEST}
            ).status_code

        assert pull() == 200  # and its verdict is cached on c
        with a.client() as via_a:
            set_policy = via_a.put(
                "/api/v1/namespaces/gated/scan-policy", json={"unscanned": "deny"}
            )
            assert set_policy.status_code == 200, set_policy.text
        until("a pull policy made on another host", lambda: pull() == 403, 1.0)
        with b.client() as via_b:
            assert via_b.delete("/api/v1/namespaces/gated/scan-policy").status_code in (200, 204)
        until("a pull policy removed on another host", lambda: pull() == 200, 1.0)


# -- limits that count across hosts ----------------------------------------------------------


def test_rate_limits_count_across_hosts_within_the_documented_precision(
    cluster: Cluster,
) -> None:
    """A client sending pulls round-robin to the three hosts as fast as it can: over the
    period, the hosts together admit no more than the rate plus the documented slack
    ((hosts - 1) x (burst + rate x interval), runtime/limitsync.py), where hosts that did not tell
    each other would admit three times the rate."""
    password = make_user(cluster, "limited")
    with cluster.hosts[0].client() as api:
        push_small_image(api, "team/limited", "1", b"the limited layer")
    address = {"x-forwarded-for": "198.51.100.7"}  # a client of its own (trusted proxy: us)
    clients = [h.client(auth=("limited", password), headers=address) for h in cluster.hosts]
    try:
        for client in clients:  # sign in once on each host (Basic is remembered)
            assert client.get("/v2/").status_code == 200
        admitted = refused = 0
        started = time.monotonic()
        period = 5.0
        while time.monotonic() - started < period:
            for client in clients:
                got = client.get("/v2/team/limited/manifests/1", headers={"accept": OCI_MANIFEST})
                if got.status_code == 200:
                    admitted += 1
                else:
                    assert got.status_code == 429, got.text
                    assert int(got.headers["retry-after"]) >= 1
                    refused += 1
        elapsed = time.monotonic() - started
    finally:
        for client in clients:
            client.close()
    hosts = len(cluster.hosts)
    one_host = PULL_BURST + PULL_RATE * elapsed
    slack = (hosts - 1) * (PULL_BURST + PULL_RATE * 1.0)
    assert admitted <= one_host + slack, (admitted, one_host, slack)
    assert admitted < hosts * one_host - PULL_BURST, "the hosts counted alone"
    assert refused > admitted


def test_a_lockout_on_one_host_holds_on_the_others(cluster: Cluster) -> None:
    a, b, c = cluster.hosts
    password = make_user(cluster, "locky")
    address = {"x-forwarded-for": "198.51.100.9"}
    with a.client(auth=None, headers=address) as via_a:
        for _ in range(LOCKOUT):
            got = via_a.get("/v2/", headers=basic("locky", "wrong-password"))
            assert got.status_code in (401, 429)
        assert via_a.get("/v2/", headers=basic("locky", password)).status_code == 429
    time.sleep(2.0)  # two sync intervals: the lock has been told (not polled: a success resets)
    for host in (b, c):
        with host.client(auth=None, headers={"x-forwarded-for": "198.51.100.10"}) as there:
            got = there.get("/v2/", headers=basic("locky", password))
            assert got.status_code == 429, (host.name, got.status_code)


def test_keys_rotated_on_one_host_sign_and_verify_everywhere(cluster: Cluster) -> None:
    a, b, c = cluster.hosts
    with a.client() as via_a:
        old = via_a.get("/token", params={"service": "berth"}).json()["token"]
    done = subprocess.run(
        [*berth_command(), "keys", "rotate"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
            **cluster.host_env(1),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    new_kid = done.stdout.split("new signing key ", 1)[1].split()[0]
    time.sleep(2.5)  # PUBLISH_DELAY: every host has heard of the key before it signs
    with c.client() as via_c:
        new = via_c.get("/token", params={"service": "berth"}).json()["token"]
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    assert jwt.get_unverified_header(old)["kid"] != new_kid
    for host in (a, b, c):
        with host.client(auth=None) as anyone:
            for token in (old, new):
                got = anyone.get("/v2/", headers={"authorization": f"Bearer {token}"})
                assert got.status_code == 200, (host.name, got.text)


# -- operations ------------------------------------------------------------------------------


def test_ready_and_metrics_name_the_host(cluster: Cluster) -> None:
    for host in cluster.hosts:
        with host.client(auth=None) as anyone:
            ready = anyone.get("/-/ready")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ok",
                "checks": {"database": "ok", "storage": "ok"},
                "host": host.name,
            }
            metrics = anyone.get("/metrics").text
        assert f'berth_host_info{{host="{host.name}",version="' in metrics


def test_doctor_checks_that_the_hosts_agree(cluster: Cluster, tmp_path: Path) -> None:
    def doctor(env: dict[str, str]) -> str:
        done = subprocess.run(
            [*berth_command(), "ctl", "doctor", "--config", str(tmp_path / "none.toml")],
            env={**clean_environment(), **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return done.stdout

    report = doctor(cluster.host_env(0))
    for host in cluster.hosts:
        assert f"[  ok] hosts: {host.name} ({host.url}) agrees with host0" in report, report
    other = tmp_path / "other-secret"
    other.write_text(os.urandom(32).hex())
    other.chmod(0o600)
    report = doctor({**cluster.host_env(0), "BERTH_SERVER_SECRET_FILE": str(other)})
    assert "[fail] hosts: host1" in report
    assert "another server secret" in report


# -- the jobs leader -------------------------------------------------------------------------


def test_the_leaders_host_killed_another_leads_within_the_lease_and_gc_runs_once(
    cluster: Cluster, postgres_server: PostgresServer
) -> None:
    import psycopg  # noqa: PLC0415

    until("a leader", lambda: any(leaders(h) for h in cluster.hosts), 30)
    (leader,) = [h for h in cluster.hosts if h.alive and leaders(h)][-1:]
    generation = max(leaders(leader))
    leader.kill()
    killed_at = time.monotonic()
    others = [h for h in cluster.hosts if h is not leader]
    took = until(
        "another host leading",
        lambda: any(max(leaders(h), default=0) > generation for h in others),
        LEASE + 5,
    )
    assert took <= LEASE + 2, took
    del killed_at

    # The collector runs under the new leader, once: an unreferenced blob made due now.
    url = cluster.shared["BERTH_METADATA_URL"]
    data = os.urandom(4096)
    with others[0].client() as api:
        got = api.post("/v2/gc/orphan/blobs/uploads/", params={"digest": sha(data)}, content=data)
        assert got.status_code == 201
        since = time.time()
        with psycopg.connect(url, autocommit=True) as conn:
            moved = conn.execute(
                "UPDATE gc_blob_queue SET review_after = 0 WHERE digest = %s", (sha(data),)
            ).rowcount
        assert moved == 1
        until(
            "the orphan collected",
            lambda: api.get(f"/v2/gc/orphan/blobs/{sha(data)}").status_code == 404,
            15,
            0.2,
        )
        time.sleep(3)  # three more collector intervals: nothing is collected twice
    with psycopg.connect(url, autocommit=True) as conn:
        runs = conn.execute(
            "SELECT details FROM audit_events WHERE action = 'gc.collect' AND at >= %s",
            (since,),
        ).fetchall()
    blobs = [json.loads(row[0])["blobs"] for row in runs]
    assert sum(blobs) == 1, blobs
    leader.start()  # back for the tests after this one

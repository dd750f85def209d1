"""The operations layer in process: health and readiness, metrics in the Prometheus text
format, request ids on every response, the access log, and rate limits (on a fake clock)."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import appliance
from appliance.api.middleware import forwarded_client
from appliance.config import proxy_networks
from appliance.metadata import audit
from appliance.metadata.db import migrations
from appliance.version import identity
from tests.api import oci
from tests.api.conftest import FakeClock, api_client
from tests.console.test_sessions import sign_in
from tests.ops.conftest import add_user, operations


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a metrics page, by name and sorted labels (a real text parser)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


MANIFEST_PUT = (
    "berth_http_requests_total",
    (("method", "PUT"), ("route", "/v2/{name}/manifests/{reference}"), ("status", "201")),
)


async def test_health_ready_and_request_ids(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_, app), api_client(app) as client:
        resp = await client.get("/-/health")
        assert resp.status_code == 200
        assert resp.json() == {"status": "ok"}
        resp = await client.get("/-/ready")
        assert resp.status_code == 200
        assert resp.json()["checks"] == {"database": "ok", "storage": "ok"}
        for path in ("/v2/", "/v2/nope/tags/list", "/api/v1/me", "/token", "/nowhere", "/-/health"):
            resp = await client.get(path)
            assert len(resp.headers["x-request-id"]) == 32, path
            assert resp.headers.get_list("x-request-id") == [resp.headers["x-request-id"]]
        resp = await client.get("/v2/", headers={"x-request-id": "ci-job-42"})
        assert resp.headers["x-request-id"] == "ci-job-42"
        resp = await client.get("/v2/", headers={"x-request-id": "bad\rid<script>"})
        assert resp.headers["x-request-id"] != "bad\rid<script>"


async def test_version_in_the_api_and_its_document(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_, app), api_client(app) as client:
        resp = await client.get("/api/v1/version")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["version"] == appliance.__version__
        assert body["commit"] == identity()[1]
        latest = migrations("sqlite")[-1].version
        assert body["schema"] == {"current": latest, "latest": latest}
        spec = (await client.get("/api/v1/openapi.json")).json()
        returned = spec["paths"]["/version"]["get"]["responses"]["200"]["content"]
        assert set(returned["application/json"]["schema"]["properties"]) == set(body)
        assert spec["info"]["version"] == appliance.__version__
    async with operations(data_dir, clock) as (_, app), api_client(app, auth=None) as anonymous:
        assert (await anonymous.get("/api/v1/version")).status_code == 401


async def test_ready_says_which_part_is_down(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_, app), api_client(app) as client:
        shutil.rmtree(data_dir / "storage")
        (data_dir / "storage").write_text("not a directory")
        resp = await client.get("/-/ready")
        assert resp.status_code == 503
        checks = resp.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["storage"] != "ok"


async def test_metrics_change_after_a_push(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_, app), api_client(app) as client:
        before = samples((await client.get("/metrics")).text)
        await oci.push_image(client, "team/app", "v1")
        resp = await client.get("/v2/team/app/manifests/v1")
        assert resp.status_code == 200
        page = await client.get("/metrics")
        assert page.headers["content-type"].startswith("text/plain")
        after = samples(page.text)
    assert after[MANIFEST_PUT] == before.get(MANIFEST_PUT, 0) + 1
    assert (
        after[("berth_manifest_pushes_total", ())]
        == before[("berth_manifest_pushes_total", ())] + 1
    )
    assert after[("berth_manifest_pulls_total", ())] >= 1
    assert after[("berth_repositories", ())] == 1
    assert after[("berth_blobs", ())] == 3
    assert after[("berth_storage_bytes", ())] > 2000
    assert after[("berth_database_up", ())] == 1
    count = (
        "berth_http_request_duration_seconds_count",
        (("method", "PUT"), ("route", "/v2/{name}/manifests/{reference}")),
    )
    assert after[count] == before.get(count, 0) + 1
    # Labels are templates: no repository name or digest in any label value.
    for name, labels in after:
        for _, value in labels:
            assert "team/app" not in value, (name, labels)
            assert "sha256:" not in value, (name, labels)


async def test_totals_agree_on_the_overview_the_status_page_and_the_metrics(
    data_dir: Path, clock: FakeClock
) -> None:
    """A repository holding a blob but no manifest (a first push cut short) is not counted as
    a repository anywhere (`/v2/_catalog` does not list it), while its blob and bytes are."""
    async with operations(data_dir, clock) as (_, app), api_client(app) as client:
        await oci.push_image(client, "team/app", "v1")
        await oci.push_blob(client, "team/half", b"only a layer, no manifest yet")
        catalog = (await client.get("/v2/_catalog")).json()["repositories"]
        assert catalog == ["team/app"]
        metrics = samples((await client.get("/metrics")).text)
        async with api_client(app, auth=None) as browser:
            signed_in = await sign_in(browser)
            cookie = {"cookie": f"berth_session={signed_in.cookies['berth_session']}"}
            overview = (await browser.get("/", headers=cookie)).text
            status = (await browser.get("/status", headers=cookie)).text
    assert metrics[("berth_repositories", ())] == 1
    assert metrics[("berth_blobs", ())] == 4
    assert re.search(r'"figure">1</span> repositories', overview), overview
    assert re.search(r'"figure">4</span> blobs', overview), overview
    assert "<dt>Repositories</dt><dd>1</dd>" in status, status
    assert re.search(r"<dd>[^<]* in 4 blobs</dd>", status), status


async def test_metrics_behind_a_token(data_dir: Path, clock: FakeClock) -> None:
    async with (
        operations(data_dir, clock, **{"metrics.token": "scrape-secret"}) as (_, app),
        api_client(app, auth=None) as client,
    ):
        assert (await client.get("/metrics")).status_code == 401
        bad = await client.get("/metrics", headers={"authorization": "Bearer wrong"})
        assert bad.status_code == 401
        ok = await client.get("/metrics", headers={"authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200
        assert any(f.name == "berth_http_requests" for f in text_string_to_metric_families(ok.text))


async def test_access_log_names_route_actor_and_request(
    data_dir: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="berth.access")
    async with operations(data_dir, clock) as (_, app), api_client(app) as client:
        resp = await client.get("/v2/", params={"token": "very-secret-value"})
    records = [r for r in caplog.records if r.name == "berth.access"]
    assert len(records) == 1
    record = records[0]
    assert record.request_id == resp.headers["x-request-id"]  # type: ignore[attr-defined]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["actor"] == "admin"
    assert fields["route"] == "/v2/"
    assert fields["status"] == 200
    assert "very-secret-value" not in record.getMessage()
    assert "token=[redacted]" in record.getMessage() or "token=%5Bredacted%5D" in (
        record.getMessage()
    )


async def test_a_burst_over_the_limit_gets_429_and_recovers(
    data_dir: Path, clock: FakeClock
) -> None:
    limits = {"ratelimit.pull_rate": 2.0, "ratelimit.pull_burst": 5.0}
    async with operations(data_dir, clock, **limits) as (_, app), api_client(app) as admin:
        await add_user(admin, "alice", "alice-password-1")
        await oci.push_image(admin, "alice/app", "v1")
        async with api_client(app, auth=("alice", "alice-password-1")) as alice:
            statuses = [
                (await alice.get("/v2/alice/app/manifests/v1")).status_code for _ in range(5)
            ]
            assert statuses == [200] * 5
            over = await alice.get("/v2/alice/app/manifests/v1")
            assert over.status_code == 429
            assert oci.error_code(over) == "TOOMANYREQUESTS"
            assert over.headers["retry-after"] == "1"
            assert over.headers["ratelimit-limit"] == "5"
            assert over.headers["ratelimit-remaining"] == "0"
            assert int(over.headers["ratelimit-reset"]) >= 1
            # Admins are exempt; pushes have their own bucket.
            assert (await admin.get("/v2/alice/app/manifests/v1")).status_code == 200
            clock.advance(1.0)  # two tokens back
            assert (await alice.get("/v2/alice/app/manifests/v1")).status_code == 200
            assert (await alice.get("/v2/alice/app/manifests/v1")).status_code == 200
            assert (await alice.get("/v2/alice/app/manifests/v1")).status_code == 429
            clock.advance(10.0)
            statuses = [
                (await alice.get("/v2/alice/app/manifests/v1")).status_code for _ in range(5)
            ]
            assert statuses == [200] * 5


async def test_sign_ins_are_limited_per_address(data_dir: Path, clock: FakeClock) -> None:
    """The limit bounds password checks per user and per address; credentials this process
    has checked already (a client asks for a token before every pull) pass uncounted."""
    limits = {"ratelimit.signin_rate": 1.0, "ratelimit.signin_burst": 3.0}
    token = {"service": "berth"}
    async with (
        operations(data_dir, clock, **limits) as (_, app),
        api_client(app) as admin,
        api_client(app, auth=("nobody", "a-guess")) as guesser,
    ):
        codes = [(await guesser.get("/token", params=token)).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        resp = await admin.get("/token", params=token)  # the same address: its bucket is empty
        assert json.loads(resp.content)["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert resp.headers["retry-after"] == "1"
        async with api_client(app, auth=None) as anonymous:  # anonymous tokens are no sign-in
            assert (await anonymous.get("/token", params=token)).status_code == 200
        clock.advance(1.0)
        # one token back: the admin's password is checked once, then remembered
        codes = [(await admin.get("/token", params=token)).status_code for _ in range(6)]
        assert codes == [200] * 6
        assert (await guesser.get("/token", params=token)).status_code == 429, "still counted"


def test_the_grafana_dashboard_uses_metrics_that_exist() -> None:
    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "packaging/grafana/berth-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    source = "\n".join(p.read_text() for p in (root / "appliance").rglob("*.py"))
    names = {
        re.sub(r"_(total|bucket|count|sum)$", "", n)
        for e in exprs
        for n in re.findall(r"berth_[a-z_]+", e)
    }
    assert len(names) > 15
    for name in sorted(names):
        declared = name in source or name.removeprefix("berth_db_") in source
        assert declared, f"{name} is on the dashboard but Berth declares no such metric"


def test_client_address_walks_forwarded_for_through_trusted_proxies_only() -> None:
    trusted = proxy_networks("127.0.0.1/32, 10.0.0.0/8")
    # Straight from nginx on loopback: the client is the hop it added.
    assert forwarded_client("127.0.0.1", "203.0.113.7", trusted) == "203.0.113.7"
    # Through two trusted proxies; the leftmost entry is whatever the client claimed.
    assert forwarded_client("127.0.0.1", "198.51.100.1, 203.0.113.7, 10.1.2.3", trusted) == (
        "203.0.113.7"
    )
    # A peer that is not a trusted proxy is the client, whatever it sends.
    assert forwarded_client("192.0.2.9", "203.0.113.7", trusted) == "192.0.2.9"
    # A malformed hop stops the walk at the last good address.
    assert forwarded_client("127.0.0.1", "203.0.113.7, not-an-ip", trusted) == "127.0.0.1"
    assert forwarded_client("127.0.0.1", "2001:db8::1", trusted) == "2001:db8::1"
    with pytest.raises(ValueError, match="not an address"):
        proxy_networks("10.0.0.0/8, nonsense")


async def test_forwarded_client_reaches_the_audit_log_only_from_trusted_proxies(
    data_dir: Path, clock: FakeClock
) -> None:
    """The in-process client connects from 127.0.0.1, a trusted proxy by default."""
    forwarded = {"x-forwarded-for": "203.0.113.7"}
    async with operations(data_dir, clock) as (services, app), api_client(app) as client:
        resp = await client.post(
            "/api/v1/users",
            json={"name": "erin", "password": "erin-password-1"},
            headers=forwarded,
        )
        assert resp.status_code == 201, resp.text
        events = await services.db.read(lambda tx: audit.events(tx, action="user.create"))
    assert events[0]["source"] == "203.0.113.7"
    async with (
        operations(data_dir, clock, **{"server.trusted_proxies": ""}) as (services, app),
        api_client(app) as client,
    ):
        resp = await client.post(
            "/api/v1/users",
            json={"name": "finn", "password": "finn-password-1"},
            headers=forwarded,
        )
        assert resp.status_code == 201, resp.text
        events = await services.db.read(lambda tx: audit.events(tx, action="user.create"))
    assert events[0]["target"] == "finn"
    assert events[0]["source"] == "127.0.0.1"


async def _failed_sign_ins(app: object, headers: dict[str, str]) -> None:
    """One wrong password through each way in: /v2, /token, /api/v1 and the console form."""
    async with api_client(app, auth=("gina", "wrong-password")) as wrong:
        assert (await wrong.get("/v2/", headers=headers)).status_code == 401
        assert (await wrong.get("/token", headers=headers)).status_code == 401
        assert (await wrong.get("/api/v1/me", headers=headers)).status_code == 401
    async with api_client(app, auth=None) as browser:
        form = await browser.get("/signin", headers=headers)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        cookie = f"berth_signin_csrf={form.cookies['berth_signin_csrf']}"
        resp = await browser.post(
            "/signin",
            data={"csrf_token": token.group(1), "username": "gina", "password": "wrong"},
            headers={**headers, "cookie": cookie},
        )
        assert resp.status_code != 303


@pytest.mark.parametrize(
    ("trusted", "expected"), [("127.0.0.1/32", "203.0.113.7"), ("10.0.0.0/8", "127.0.0.1")]
)
async def test_every_sign_in_path_names_the_same_client_address(
    data_dir: Path, clock: FakeClock, trusted: str, expected: str
) -> None:
    """The address a sign-in is throttled and audited under is the one `X-Forwarded-For`
    names only when the peer (127.0.0.1 here) is a trusted proxy, through every way in."""
    forwarded = {"x-forwarded-for": "203.0.113.7"}
    async with operations(data_dir, clock, **{"server.trusted_proxies": trusted}) as (
        services,
        app,
    ):
        await _failed_sign_ins(app, forwarded)
        events = await services.db.read(lambda tx: audit.events(tx, action="signin.failure"))
    assert len(events) == 4, events
    assert {(e["source"], e["details"]["address"]) for e in events} == {(expected, expected)}

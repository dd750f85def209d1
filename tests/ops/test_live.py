"""The operations layer on a real `berth serve`: a token-authenticated push by skopeo leaves no
secret in the (JSON) log and reaches a webhook receiver through the jobs leader; metrics add up
over `--workers 2`."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.live import wait_for
from tests.ops.conftest import Receiver
from tests.support.clients import Skopeo
from tests.support.images import ImageCache
from tests.support.servers import Server, require_binary, running, start_berth


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageCache:
    require_binary("busybox", "busybox-static")
    return ImageCache(tmp_path_factory.mktemp("images"))


@pytest.fixture
def server(tmp_path: Path, receiver: Receiver) -> Iterator[Server]:
    env = {
        "BERTH_LOG_FORMAT": "json",
        "BERTH_WEBHOOKS_ENDPOINTS": receiver.url,
        "BERTH_WEBHOOKS_SECRET": "hook-signing-key",
        "BERTH_WEBHOOKS_INTERVAL": "0.1",
        "BERTH_JOBS_LEASE": "1",
    }
    with running(start_berth(tmp_path / "data", env=env)) as s:
        yield s


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_token_push_logs_no_secret_and_notifies(
    server: Server, receiver: Receiver, images: ImageCache, tmp_path: Path
) -> None:
    assert server.credentials is not None
    admin_password = server.credentials[1]
    with httpx.Client(base_url=server.url, auth=server.credentials, timeout=30) as admin:
        user_password = "ci-user-password-123"
        resp = admin.post("/api/v1/users", json={"name": "ci", "password": user_password})
        assert resp.status_code == 201, resp.text
        with httpx.Client(base_url=server.url, auth=("ci", user_password), timeout=30) as ci:
            resp = ci.post(
                "/api/v1/tokens", json={"name": "pipeline", "scopes": ["write_registry"]}
            )
            assert resp.status_code == 201, resp.text
            pat = resp.json()["token"]
        before = admin.get("/metrics").text
    skopeo = Skopeo(tmp_path / "skopeo")
    image = images.busybox()
    digest = skopeo.push(image, f"docker://{server.host}/ci/busybox:1", creds=f"ci:{pat}")
    skopeo.inspect_raw(f"docker://{server.host}/ci/busybox:1", creds=f"ci:{pat}")

    events = wait_for(
        "the push event", lambda: [e for e in receiver.events() if e["action"] == "push"] or None
    )
    assert events[0]["target"]["repository"] == "ci/busybox"
    assert events[0]["target"]["digest"] == digest
    assert events[0]["target"]["tag"] == "1"
    assert events[0]["actor"] == {"name": "ci"}

    with httpx.Client(base_url=server.url, auth=server.credentials, timeout=30) as admin:
        after = admin.get("/metrics").text
        pushes = admin.get("/api/v1/audit", params={"action": "manifest.push"}).json()
    route = "/v2/{name}/manifests/{reference}"
    assert (
        counter(after, "berth_http_requests_total", route=route, method="PUT")
        == counter(before, "berth_http_requests_total", route=route, method="PUT") + 1
    )
    assert counter(after, "berth_manifest_pushes_total") >= 1
    assert counter(after, "berth_http_request_bytes_total") > counter(
        before, "berth_http_request_bytes_total"
    )
    assert [(e["actor"], e["target"]) for e in pushes["events"]] == [("ci", f"ci/busybox@{digest}")]

    log = server.log()
    for secret in (pat, pat[len("berth_pat_") :], user_password, admin_password):
        assert secret not in log
    lines: list[dict[str, Any]] = [json.loads(line) for line in log.splitlines() if line]
    assert "eyJ" not in log  # no registry bearer token (JWT)
    access = [line for line in lines if line["logger"] == "berth.access"]
    assert access, "no access-log lines"
    assert all(len(line["request_id"]) >= 16 for line in access)
    assert any(line["actor"] == "ci" and line["method"] == "PUT" for line in access)
    assert all(line["request_id"] for line in lines)


def test_metrics_add_up_over_workers(tmp_path: Path) -> None:
    with running(start_berth(tmp_path / "data", args=["--workers", "2"])) as server:
        with httpx.Client(timeout=10) as client:
            for _ in range(20):
                # A new connection each time, so the workers share the requests.
                resp = client.get(server.url + "/v2/", headers={"connection": "close"})
                assert resp.status_code == 401
        metrics = tmp_path / "data" / "metrics"
        assert metrics.is_dir()
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        total = counter(text, "berth_http_requests_total", route="/v2/", status="401")
        assert total == 20
        with urllib.request.urlopen(server.url + "/-/ready", timeout=10) as resp:
            assert json.loads(resp.read())["status"] == "ok"

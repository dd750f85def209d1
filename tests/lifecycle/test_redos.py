"""The ReDoS attack on a real Berth, as it was found: an ordinary user adds the immutable tag
rule `(a+)+$` in their personal namespace and pushes a tag of 100 `a`s and a `b`. With a
backtracking engine that one push blocked the whole process (every request, `/-/health`
too) for longer than the universe has existed; with patterns on RE2 it is an ordinary push.

Correctness is asserted, not timing: the push answers 201, a matching tag is protected, and
`/-/health` answers 200 all along (each request has a generous client timeout only so that
a hang fails the test instead of stalling the run).
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.api.oci import digest, image_manifest
from tests.support.servers import start_berth

ATTACK = "(a+)+$"
EVIL_TAG = "a" * 100 + "b"  # makes `(a+)+$` backtrack 2^100 times on Python's re
GENEROUS = 60.0  # seconds: a hang guard, not a speed target


def push(api: httpx.Client, repo: str, tag: str, layer: bytes) -> httpx.Response:
    for data in (b"{}", layer):
        r = api.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest(data)}, content=data)
        assert r.status_code == 201, r.text
    return api.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image_manifest(b"{}", [layer]),
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )


def test_a_catastrophic_pattern_does_not_block_the_server(tmp_path: Path) -> None:
    server = start_berth(tmp_path / "data")
    try:
        assert server.credentials is not None
        with httpx.Client(base_url=server.url, auth=server.credentials, timeout=GENEROUS) as admin:
            created = admin.post(
                "/api/v1/users", json={"name": "mallory", "password": "a-long-password-1"}
            )
            assert created.status_code == 201, created.text
        mallory = httpx.Client(
            base_url=server.url, auth=("mallory", "a-long-password-1"), timeout=GENEROUS
        )
        with mallory:
            rule = mallory.post(
                "/api/v1/namespaces/mallory/immutable-rules", json={"pattern": ATTACK}
            )
            assert rule.status_code == 201, rule.text

            health: list[int] = []
            stop = threading.Event()

            def poll() -> None:
                with httpx.Client(base_url=server.url, timeout=GENEROUS) as anyone:
                    while not stop.is_set():
                        health.append(anyone.get("/-/health").status_code)

            poller = threading.Thread(target=poll)
            poller.start()
            try:
                # The tag the pattern does not match: pushed, and moved, like any other.
                assert push(mallory, "mallory/app", EVIL_TAG, b"one").status_code == 201
                assert push(mallory, "mallory/app", EVIL_TAG, b"two").status_code == 201
                # A tag it does match is immutable: the rule still works.
                assert push(mallory, "mallory/app", "a" * 100, b"one").status_code == 201
                refused = push(mallory, "mallory/app", "a" * 100, b"two")
                assert refused.status_code == 403
                assert refused.json()["errors"][0]["code"] == "DENIED"
            finally:
                stop.set()
                poller.join(GENEROUS)
            assert health, "the health check never answered"
            assert set(health) == {200}
    finally:
        assert server.stop() == 0, server.log()[-4000:]

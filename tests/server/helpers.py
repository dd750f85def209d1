"""Helpers for tests that run several real Berth processes (and real PostgreSQL servers):
an httpx client signed in as the admin, and a tiny image pushed over the wire."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from tests.support.servers import Server, start_berth

ADMIN_PASSWORD = "processes-test-password"
AUTH = {"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client_for(server: Server, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=("admin", ADMIN_PASSWORD), timeout=timeout)


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    resp = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    assert resp.status_code == 201, resp.text
    return sha(data)


def push_streamed_blob(client: httpx.Client, repo: str, chunks: Iterator[bytes]) -> tuple[str, int]:
    """POST, one streamed PATCH, PUT, as clients push a large layer (to Berth or to the
    reference registry, which keeps its upload state in the location's query); returns the
    digest and size of what was sent."""
    hasher = hashlib.sha256()
    size = 0

    def body() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
            yield chunk

    start = client.post(f"/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    patched = client.patch(
        start.headers["location"],
        content=body(),
        headers={"content-type": "application/octet-stream"},
    )
    patched.raise_for_status()
    digest = "sha256:" + hasher.hexdigest()
    location = patched.headers["location"]
    separator = "&" if "?" in location else "?"
    client.put(f"{location}{separator}digest={quote(digest)}").raise_for_status()
    return digest, size


def one_layer_manifest(config: bytes, layer: bytes) -> bytes:
    """The OCI manifest of an image with `config` and one `layer`."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()


def push_image(client: httpx.Client, repo: str, tag: str, layer: bytes) -> tuple[str, bytes]:
    """Push a one-layer image; return its manifest digest and bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    manifest = one_layer_manifest(config, layer)
    resp = client.put(
        f"/v2/{repo}/manifests/{tag}", content=manifest, headers={"content-type": OCI_MANIFEST}
    )
    assert resp.status_code == 201, resp.text
    return sha(manifest), manifest


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    """Poll `check` until true (never a fixed sleep); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


LEADING = re.compile(r"leading jobs \(generation (\d+), pid (\d+)\)")


def leaders(server: Server) -> list[tuple[int, int]]:
    """(generation, pid) of every time a process of `server` became the jobs leader."""
    return [(int(g), int(p)) for g, p in LEADING.findall(server.log())]


def start(data_dir: Path, name: str, env: dict[str, str], args: tuple[str, ...] = ()) -> Server:
    """A Berth on `data_dir` with a log file of its own (several may share a data dir)."""
    return start_berth(
        data_dir, env={**AUTH, **env}, args=args, log_path=data_dir.parent / f"{name}.log"
    )

"""`berth import remote` against the reference registry over HTTP with Basic auth (htpasswd):
the catalog is listed, every tag copied through the pull-through client and pullable byte for
byte; a second run fetches no blob; named repositories need no catalog; bad credentials and a
hostile registry get clear refusals."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.importer.conftest import pulled_identical, run_import, tags_in
from tests.proxy.conftest import htpasswd
from tests.support.clients import Skopeo
from tests.support.faultproxy import FaultProxy
from tests.support.images import ImageCache
from tests.support.servers import start_reference_registry

USER, PASSWORD = "mover", "s3cret-import-pass"


def test_remote_import_with_basic_auth(tmp_path: Path, images: ImageCache, serve: Any) -> None:
    users = htpasswd(tmp_path / "htpasswd", USER, PASSWORD)
    registry = start_reference_registry(tmp_path / "registry", htpasswd=users)
    front = FaultProxy(registry.url)
    try:
        skopeo = Skopeo(tmp_path / "skopeo")
        pushed = {
            "team/busybox:1.35": images.busybox(),
            "team/schema2:v1": images.docker_schema2(),
            "multi:latest": images.multi_arch(),
        }
        digests = {
            ref: skopeo.push(image, f"docker://{registry.host}/{ref}", creds=f"{USER}:{PASSWORD}")
            for ref, image in pushed.items()
        }
        creds = tmp_path / "creds"
        creds.write_text(f"{USER}:{PASSWORD}\n")
        data = tmp_path / "berth"

        first = run_import(data, "remote", front.url, "--credentials-file", str(creds))
        assert first.code == 0, first.stderr
        assert {k: v["digest"] for k, v in first.items("imported").items()} == digests
        assert first.blobs["copied"] == len({d for i in pushed.values() for d in i.blob_digests})
        assert tags_in(data) == digests
        assert PASSWORD not in first.stdout + first.stderr
        fetched = [p for m, p, _ in front.requests if m == "GET" and "/blobs/" in p]
        assert fetched

        # Again: everything is present, and not one blob is fetched.
        front.requests.clear()
        again = run_import(data, "remote", front.url, "--credentials", f"{USER}:{PASSWORD}")
        assert again.code == 0, again.stderr
        assert set(again.items("present")) == set(digests)
        assert not [p for m, p, _ in front.requests if "/blobs/" in p]
        # Each tag is checked with a HEAD: no manifest is read again.
        assert not [p for m, p, _ in front.requests if m == "GET" and "/manifests/" in p]
        assert len([p for m, p, _ in front.requests if m == "HEAD"]) == len(digests)

        # Named repositories: no catalog.
        front.requests.clear()
        named = run_import(
            tmp_path / "named",
            "remote",
            front.url,
            "--credentials-file",
            str(creds),
            "--repository",
            "team/busybox",
        )
        assert named.code == 0, named.stderr
        assert set(named.items("imported")) == {"team/busybox:1.35"}
        assert not [p for _, p, _ in front.requests if "_catalog" in p]

        # Wrong credentials: one clear line, nothing imported, the password never shown.
        wrong = run_import(tmp_path / "wrong", "remote", front.url, "--credentials", "mover:nope")
        assert wrong.code == 2
        assert "did not list its repositories" in wrong.stderr
        assert "nope" not in wrong.stderr

        server = serve(data)
        for ref, image in pushed.items():
            pulled_identical(Skopeo(tmp_path / "pull"), server, ref, image, tmp_path)
    finally:
        front.close()
        registry.stop()


class _Hostile(BaseHTTPRequestHandler):
    """A registry whose catalog pages point elsewhere, or loop."""

    mode = "elsewhere"

    def do_GET(self) -> None:
        if self.path.startswith("/v2/_catalog"):
            body = json.dumps({"repositories": ["a"]}).encode()
            self.send_response(200)
            if self.mode == "elsewhere":
                self.send_header("Link", '<http://198.51.100.7/v2/_catalog?last=a>; rel="next"')
            else:
                self.send_header("Link", '</v2/_catalog?n=1000>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[tuple[str, type[_Hostile]]]:
    handler = type("Handler", (_Hostile,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_hostile_catalog_is_refused(tmp_path: Path, hostile: tuple[str, Any]) -> None:
    url, handler = hostile
    # A next page on another host would receive the credentials: refused.
    away = run_import(tmp_path / "a", "remote", url, "--credentials", "u:p")
    assert away.code == 2
    assert "the next page is elsewhere" in away.stderr
    # A next page seen before would go on for ever: refused.
    handler.mode = "loop"
    loop = run_import(tmp_path / "b", "remote", url)
    assert loop.code == 2
    assert "the pages do not end" in loop.stderr


def test_remote_urls_are_checked(tmp_path: Path) -> None:
    for url, said in [
        ("ftp://registry.example", "must be http(s)://HOST[:PORT]"),
        ("http://user:pw@registry.example", "must not hold credentials"),
        ("http://registry.example/v2/", "must be http(s)://HOST[:PORT]"),
    ]:
        run = run_import(tmp_path / "x", "remote", url)
        assert run.code == 2, url
        assert said in run.stderr, run.stderr
        assert "pw" not in run.stderr
    creds = tmp_path / "creds"
    creds.write_text("no-colon-here\n")
    for args, said in [
        (["--credentials", "u:p", "--credentials-file", str(creds)], "not both"),
        (["--credentials-file", str(creds)], "credentials must be USER:PASSWORD"),
    ]:
        run = run_import(tmp_path / "y", "remote", "http://127.0.0.1:9", *args)
        assert run.code == 2
        assert said in run.stderr
        assert "no-colon-here" not in run.stderr
    assert not (tmp_path / "x" / "berth.db").exists()  # refused before Berth is opened

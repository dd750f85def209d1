"""A larger import (`make test-slow`): a store holding a 1 GiB layer, written by the reference
registry, imported by copy, by hard link and over the network; memory stays flat (nothing
buffers a blob) and the bytes Berth keeps are the layer's."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.importer.conftest import berth_env, tags_in
from tests.server.helpers import push_streamed_blob
from tests.slow.test_large_blobs import GIB, _RssSampler
from tests.support.servers import berth_command, start_reference_registry

pytestmark = pytest.mark.slow

MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _chunks(size: int) -> Iterator[bytes]:
    block = os.urandom(MIB)
    for i in range(size // MIB):
        yield i.to_bytes(8, "big") + block[8:]


def _import(data: Path, *args: str) -> tuple[dict[str, object], int]:
    """Run `berth import ARGS --json`; its report and peak RSS in KiB."""
    proc = subprocess.Popen(
        [*berth_command(), "import", *args, "--data-dir", str(data), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=berth_env(),
    )
    sampler = _RssSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate(timeout=1800)
    sampler.done.set()
    sampler.join()
    assert proc.returncode == 0, err.decode()
    report: dict[str, object] = json.loads(out)
    return report, sampler.peak


def test_a_large_layer_imported_three_ways(tmp_path: Path) -> None:
    registry = start_reference_registry(tmp_path / "registry")
    try:
        with httpx.Client(base_url=registry.url, timeout=1800) as client:
            config = b'{"architecture":"amd64","os":"linux"}'
            config_digest, _ = push_streamed_blob(client, "big/image", iter([config]))
            layer, size = push_streamed_blob(client, "big/image", _chunks(GIB))
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config_digest,
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                     "size": size},
                ],
            }  # fmt: skip
            put = client.put(
                "/v2/big/image/manifests/1",
                content=json.dumps(manifest).encode(),
                headers={"content-type": OCI_MANIFEST},
            )
            assert put.status_code == 201, put.text
            digest = put.headers["docker-content-digest"]
        assert registry.data_dir is not None
        store = str(registry.data_dir)
        for mode, args in [
            ("copied", ["distribution", store, "--copy"]),
            ("linked", ["distribution", store]),
            ("copied", ["remote", registry.url]),
        ]:
            data = tmp_path / f"berth-{mode}-{args[0]}"
            report, peak_kib = _import(data, *args)
            blobs = report["blobs"]
            assert isinstance(blobs, dict)
            assert blobs[mode] == 2, (args, blobs)
            assert tags_in(data) == {"big/image:1": digest}
            # Streamed: the import never holds the 1 GiB layer (nor a good part of it).
            assert peak_kib < 300 * 1024, (args, peak_kib)
            hexpart = layer.split(":", 1)[1]
            (kept,) = (data / "storage" / "blobs" / "sha256" / hexpart[:2] / hexpart).iterdir()
            h = hashlib.sha256()
            with kept.open("rb") as f:
                while piece := f.read(8 * MIB):
                    h.update(piece)
            assert "sha256:" + h.hexdigest() == layer
    finally:
        registry.stop()

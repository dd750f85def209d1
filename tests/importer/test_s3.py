"""Imports that involve S3 (SeaweedFS): a Distribution store the reference registry wrote into
a bucket, read with `s3://BUCKET/PREFIX`; and a Berth whose own blobs are in S3, into which
blobs are streamed (nothing can be hard-linked there)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.importer.conftest import (
    ReferenceStore,
    berth_env,
    pulled_identical,
    run_import,
    tags_in,
)
from tests.support.clients import Skopeo
from tests.support.images import ImageCache
from tests.support.seaweedfs import SeaweedFS
from tests.support.servers import ADMIN_PASSWORD, start_berth, start_reference_registry


def test_import_from_a_store_in_s3(
    tmp_path: Path, seaweedfs: SeaweedFS, images: ImageCache, serve: Any
) -> None:
    bucket = seaweedfs.new_bucket("distribution")
    storage = (
        f"  s3:\n    accesskey: {seaweedfs.access_key}\n    secretkey: {seaweedfs.secret_key}\n"
        f"    region: {seaweedfs.region}\n    regionendpoint: {seaweedfs.endpoint}\n"
        f"    bucket: {bucket}\n    rootdirectory: /registry\n    secure: false\n"
    )
    registry = start_reference_registry(tmp_path / "registry", storage=storage)
    pushed = {"team/busybox:1.35": images.busybox(), "multi:latest": images.multi_arch()}
    try:
        skopeo = Skopeo(tmp_path / "skopeo")
        digests = {
            ref: skopeo.push(image, f"docker://{registry.host}/{ref}")
            for ref, image in pushed.items()
        }
    finally:
        registry.stop()
    secret = tmp_path / "secret"
    secret.write_text(seaweedfs.secret_key + "\n")
    source = [
        "distribution",
        f"s3://{bucket}/registry",
        "--s3-endpoint",
        seaweedfs.endpoint,
        "--s3-access-key",
        seaweedfs.access_key,
        "--s3-secret-key-file",
        str(secret),
    ]
    data = tmp_path / "berth"
    run = run_import(data, *source)
    assert run.code == 0, run.stderr
    assert {k: v["digest"] for k, v in run.items("imported").items()} == digests
    assert run.blobs["linked"] == 0
    assert run.blobs["copied"] == len({d for i in pushed.values() for d in i.blob_digests})
    assert tags_in(data) == digests
    again = run_import(data, *source)
    assert again.code == 0
    assert again.blobs["copied"] == 0
    assert set(again.items("present")) == set(digests)

    # Wrong keys: one clear line.
    (tmp_path / "wrong-secret").write_text("not-the-secret\n")
    wrong = run_import(tmp_path / "wrong", *source[:-1], str(tmp_path / "wrong-secret"))
    assert wrong.code == 2
    assert "the S3 source: S3 refused access" in wrong.stderr
    assert "not-the-secret" not in wrong.stderr
    server = serve(data)
    for ref, image in pushed.items():
        pulled_identical(Skopeo(tmp_path / "pull"), server, ref, image, tmp_path)


def test_import_into_a_berth_on_s3(
    tmp_path: Path, seaweedfs: SeaweedFS, reference_store: ReferenceStore
) -> None:
    env = seaweedfs.env(seaweedfs.new_bucket("berth-import"))
    data = tmp_path / "berth"
    run = run_import(
        data,
        "distribution",
        str(reference_store.root),
        "--repository",
        "team/busybox",
        "--repository",
        "multi",
        env=berth_env(**env),
    )
    assert run.code == 0, run.stderr
    assert run.blobs["linked"] == 0
    assert "not a filesystem store" in run.blobs["copy_reasons"][0]
    wanted = {
        k: v
        for k, v in reference_store.digests.items()
        if k.split(":")[0]
        in {
            "team/busybox",
            "multi",
        }
    }
    assert tags_in(data) == wanted
    server = start_berth(data, env={**env, "BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD})
    try:
        for ref in wanted:
            pulled_identical(
                Skopeo(tmp_path / "pull"), server, ref, reference_store.good[ref], tmp_path
            )
    finally:
        server.stop()

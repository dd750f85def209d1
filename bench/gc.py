"""The garbage collector: how fast it reclaims, and what it costs the hot path.

    python -m bench.gc [--blobs 100000] [--seconds 10] [--only sqlite|postgresql|latency]

1. Throughput: 100,000 unreferenced blobs (one small file each, filesystem store) are queued as
   due, then one `Collector.run()` reclaims them all: items per second, on SQLite and on
   PostgreSQL (a server started in a temporary directory, as the tests do).
2. Hot path: a `berth serve` at its defaults (`server.workers = "auto"`; SQLite, filesystem,
   gc.interval 0.2 s) serves a manifest GET in
   a closed loop (4 connections); p99 latency idle, then while its collector works through
   100,000 due blobs. Target: under 2x idle.

Rows and files are written directly (not pushed), which is what the collector sees after
pushes anyway: a blobs row, a repository link, a queue row and the file at its storage key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from bench import load  # noqa: E402
from tests.support.servers import ADMIN, ADMIN_PASSWORD, descendants, start_berth  # noqa: E402

REPO = "bench/gc"
EXTRA_ENV = dict(e.split("=", 1) for e in os.environ.get("BENCH_GC_ENV", "").split() if e)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fake_blobs(n: int, seed: str) -> list[tuple[str, str]]:
    """(digest, storage key) of `n` distinct blobs."""
    from appliance.oci.digest import Digest  # noqa: PLC0415
    from appliance.storage import layout  # noqa: PLC0415

    out = []
    for i in range(n):
        digest = Digest("sha256", hashlib.sha256(f"{seed}-{i}".encode()).hexdigest())
        out.append((str(digest), layout.blob_key(digest)))
    return out


def write_files(root: Path, blobs: list[tuple[str, str]]) -> None:
    for _, key in blobs:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def insert_rows(run_write: Callable[[Callable[[Any], None]], None], blobs: list[tuple[str, str]],
                review_after: float) -> None:  # fmt: skip
    now = time.time()

    def fn(tx: Any) -> None:
        tx.execute(
            "INSERT INTO repositories (name, created_at) VALUES (:n, :t) "
            "ON CONFLICT (name) DO NOTHING",
            {"n": REPO, "t": now},
        )
        repo = tx.scalar("SELECT id FROM repositories WHERE name = :n", {"n": REPO})
        for i in range(0, len(blobs), 5000):
            chunk = blobs[i : i + 5000]
            tx.executemany(
                "INSERT INTO blobs (digest, size, storage_key, created_at) VALUES (:d, 1, :k, :t)",
                [{"d": d, "k": k, "t": now} for d, k in chunk],
            )
            tx.executemany(
                "INSERT INTO repository_blobs (repository_id, digest, created_at) "
                "VALUES (:r, :d, :t)",
                [{"r": repo, "d": d, "t": now} for d, _ in chunk],
            )
            tx.executemany(
                "INSERT INTO gc_blob_queue (digest, review_after) VALUES (:d, :a)",
                [{"d": d, "a": review_after} for d, _ in chunk],
            )

    run_write(fn)


def throughput(dialect: str, n: int) -> dict[str, Any]:
    from appliance.lifecycle.gc import Collector, GcSettings  # noqa: PLC0415
    from appliance.metadata.db import open_database  # noqa: PLC0415
    from appliance.storage.filesystem import FilesystemStore  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-gc-"))
    pg = None
    try:
        if dialect == "sqlite":
            url = f"sqlite:///{tmp / 'berth.db'}"
        else:
            from tests.support.postgres import PostgresServer  # noqa: PLC0415

            pg = PostgresServer.create().start()
            url = pg.create_database()
        db = open_database(url)
        db.migrate()
        store = FilesystemStore(tmp / "storage")
        blobs = fake_blobs(n, dialect)
        log(f"{dialect}: writing {n} files and rows")
        write_files(store.root, blobs)
        insert_rows(db.run_sync_write, blobs, review_after=0.0)
        collector = Collector(db, store, time.time, GcSettings(delay=0.0, batch=500))
        log(f"{dialect}: collecting")
        started = time.perf_counter()
        result = trio.run(collector.run)
        elapsed = time.perf_counter() - started
        left = sum(1 for _ in (store.root / "blobs").rglob("*") if _.is_file())
        db.close()
        assert result.blobs == n, result
        assert left == 0, left
        return {
            "dialect": dialect,
            "blobs": n,
            "seconds": round(elapsed, 2),
            "items_per_s": round(n / elapsed),
        }
    finally:
        if pg is not None:
            pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def p99(url: str, seconds: float) -> dict[str, float]:
    result = load.run(
        url,
        method="GET",
        connections=4,
        duration=seconds,
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json",
                 "Authorization": basic()},
    )  # fmt: skip
    return {
        "p50_ms": result.latency_ms.get("p50", 0.0),
        "p99_ms": result.latency_ms.get("p99", 0.0),
        "rps": round(result.rps),
        "non_2xx": result.non_2xx,
    }


def basic() -> str:
    import base64  # noqa: PLC0415

    return "Basic " + base64.b64encode(f"{ADMIN}:{ADMIN_PASSWORD}".encode()).decode()


def push_one(url: str) -> str:
    """Push a one-layer image; return the manifest GET URL."""
    headers = {"Authorization": basic()}
    layer, config = os.urandom(1024), b"{}"
    for data in (layer, config):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request(
            f"{url}/v2/{REPO}/blobs/uploads/?digest={digest}", data=data, method="POST",
            headers=headers,
        )  # fmt: skip
        urllib.request.urlopen(req).close()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": 1024}],
    }).encode()  # fmt: skip
    req = urllib.request.Request(
        f"{url}/v2/{REPO}/manifests/v1", data=manifest, method="PUT",
        headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    urllib.request.urlopen(req).close()
    return f"{url}/v2/{REPO}/manifests/v1"


def queue_depth(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM gc_blob_queue").fetchone()[0])
    finally:
        conn.close()


def latency(n: int, seconds: float, berth_args: list[str] | None = None) -> dict[str, Any]:
    """Manifest GET latency idle, then while the collector works through `n` due blobs, of a
    new `berth serve` (at its defaults, or with `berth_args`)."""
    from appliance.metadata.db import open_database  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-gc-lat-"))
    env = {"BERTH_GC_INTERVAL": "0.2", "BERTH_GC_DELAY": "3600", **EXTRA_ENV}
    server = start_berth(tmp / "data", args=berth_args or [], env=env)
    try:
        url = push_one(server.url)
        blobs = fake_blobs(n, "latency")
        log(f"latency: writing {n} files and rows (not yet due)")
        write_files(tmp / "data" / "storage", blobs)
        db = open_database(f"sqlite:///{tmp / 'data' / 'berth.db'}")
        insert_rows(db.run_sync_write, blobs, review_after=time.time() + 86400)
        log("latency: idle")
        idle = p99(url, seconds)
        db.run_sync_write(lambda tx: tx.execute("UPDATE gc_blob_queue SET review_after = 0"))
        db.close()
        depth_before = queue_depth(tmp / "data" / "berth.db")
        log("latency: while collecting")
        busy = p99(url, seconds)
        depth_after = queue_depth(tmp / "data" / "berth.db")
        return {
            "idle": idle,
            "collecting": busy,
            "queue_before": depth_before,
            "queue_after": depth_after,
            "p99_ratio": round(busy["p99_ms"] / idle["p99_ms"], 2) if idle["p99_ms"] else None,
            # Berth at its defaults (server.workers = "auto"): the processes that served
            "berth_serving_processes": len(descendants(server.proc.pid)) or 1,
        }
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    # A SIGTERM ends the run through `finally` blocks: the PostgreSQL server and temp dirs go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="each latency window")
    parser.add_argument("--only", choices=("sqlite", "postgresql", "latency"), action="append")
    args = parser.parse_args()
    only = args.only or ["sqlite", "postgresql", "latency"]
    out: dict[str, Any] = {"load_average": os.getloadavg()}
    for dialect in ("sqlite", "postgresql"):
        if dialect in only:
            out[dialect] = throughput(dialect, args.blobs)
            log(json.dumps(out[dialect]))
    if "latency" in only:
        out["latency"] = latency(args.blobs, args.seconds)
    out["load_average_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

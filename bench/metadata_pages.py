"""Latency of a catalog page and a tags page on a large registry, SQLite and PostgreSQL.

    python -m bench.metadata_pages                 # both dialects, default sizes
    python -m bench.metadata_pages --record        # also append a section to bench/RESULTS.md
    python -m bench.metadata_pages --repos 1000 --tags 500 --samples 50   # a quick look

The database is filled directly (one bulk transaction per table) with `--repos` repositories,
each holding one manifest (the catalog lists only repositories with a manifest), and one
repository holding `--tags` tags. Then `--samples` pages of n=100 are read through
`MetadataStore.catalog` / `MetadataStore.tags`, exactly as `GET /v2/_catalog?n=100&last=...`
and `GET /v2/<name>/tags/list?n=100&last=...` read them (a unit of work in a worker thread,
from trio), each starting after a random existing name, plus the first page. The figure is the
p95 of the wall time per page; the target is under 50 ms.

PostgreSQL runs in a temporary directory (tests/support/postgres.py) with its defaults except
fsync off (no effect on reads); SQLite is a file in a temporary directory with Berth's pragmas.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from appliance.metadata.db import Database, Tx, open_database
from appliance.metadata.store import MetadataStore
from bench.system import machine_info

TARGET_MS = 50.0
BIG_REPO = "big/tags"
RESULTS = Path(__file__).with_name("RESULTS.md")


def repo_name(i: int) -> str:
    return f"ns{i % 997:03d}/image-{i:06d}"


def fill(db: Database, repos: int, tags: int) -> None:
    """Bulk-load the registry: `repos` repositories with a manifest each, one with `tags` tags."""
    now = time.time()
    payload = b'{"schemaVersion":2}'

    def load(tx: Tx) -> None:
        tx.executemany(
            "INSERT INTO repositories (id, name, created_at) VALUES (:id, :name, :now)",
            [{"id": i + 1, "name": repo_name(i), "now": now} for i in range(repos)]
            + [{"id": repos + 1, "name": BIG_REPO, "now": now}],
        )
        tx.executemany(
            "INSERT INTO manifests (id, repository_id, digest, media_type, payload, total_size, "
            "created_at) VALUES (:id, :id, :digest, :mt, :payload, 20, :now)",
            [
                {
                    "id": i + 1,
                    "digest": f"sha256:{i:064x}",
                    "mt": "application/vnd.oci.image.manifest.v1+json",
                    "payload": payload,
                    "now": now,
                }
                for i in range(repos + 1)
            ],
        )
        tx.executemany(
            "INSERT INTO tags (repository_id, name, manifest_id, updated_at) "
            "VALUES (:repo, :name, :repo, :now)",
            [{"repo": repos + 1, "name": tag_name(i), "now": now} for i in range(tags)],
        )
        if tx.dialect == "postgresql":
            tx.execute("ANALYZE")

    db.run_sync_write(load)


def tag_name(i: int) -> str:
    return f"v{i // 1000}.{(i // 10) % 100}.{i % 10}-build{i:05d}"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(
    meta: MetadataStore, repos: int, tags: int, samples: int, seed: int
) -> dict[str, list[float]]:
    rng = random.Random(seed)
    names = sorted(repo_name(i) for i in range(repos))
    tag_names = sorted(tag_name(i) for i in range(tags))
    out: dict[str, list[float]] = {"catalog": [], "tags": []}

    async def timed(kind: str, call: Callable[[], object]) -> None:
        started = time.perf_counter()
        page = await call()  # type: ignore[misc]
        out[kind].append((time.perf_counter() - started) * 1000)
        assert len(page) == 100 or (kind == "tags" and len(page) <= 100), len(page)

    for _ in range(5):  # warm the connections and caches
        await meta.catalog(100, None)
        await meta.tags(BIG_REPO, 100, None)
    for i in range(samples):
        last = None if i == 0 else rng.choice(names[: len(names) - 100])
        tag_last = None if i == 0 else rng.choice(tag_names[: len(tag_names) - 100])
        await timed("catalog", lambda last=last: meta.catalog(100, last))
        await timed("tags", lambda tag_last=tag_last: meta.tags(BIG_REPO, 100, tag_last))
    return out


def run_dialect(dialect: str, url: str, args: argparse.Namespace) -> dict[str, object]:
    db = open_database(url)
    try:
        db.migrate()
        started = time.perf_counter()
        fill(db, args.repos, args.tags)
        filled = time.perf_counter() - started
        meta = MetadataStore(db, time.time)
        figures = trio.run(measure, meta, args.repos, args.tags, args.samples, args.seed)
    finally:
        db.close()
    result: dict[str, object] = {"dialect": dialect, "fill_s": filled}
    for kind, values in figures.items():
        result[kind] = {
            "p50": statistics.median(values),
            "p95": percentile(values, 95),
            "max": max(values),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--record", action="store_true", help=f"append to {RESULTS}")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-meta-"))
    try:
        if args.only in (None, "sqlite"):
            results.append(run_dialect("sqlite", f"sqlite:///{tmp / 'berth.db'}", args))
        if args.only in (None, "postgresql"):
            from tests.support.postgres import PostgresServer  # noqa: PLC0415

            server = PostgresServer.create().start()
            try:
                results.append(run_dialect("postgresql", server.create_database(), args))
            finally:
                server.destroy()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        "| dialect | page | p50 ms | p95 ms | max ms | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind, label in (("catalog", "catalog, n=100"), ("tags", "tags, n=100")):
            f = r[kind]
            assert isinstance(f, dict)
            ok = "ok" if f["p95"] < TARGET_MS else "MISSED"
            rows.append(
                f"| {r['dialect']} | {label} | {f['p50']:.2f} | {f['p95']:.2f} | {f['max']:.2f} "
                f"| p95 < {TARGET_MS:.0f} ms | {ok} |"
            )
    fills = ", ".join(f"{r['dialect']} {r['fill_s']:.1f} s" for r in results)
    print("\n".join(rows))
    print(f"(bulk load: {fills})")
    if args.record:
        info = machine_info()
        when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            "",
            f"## {when}: metadata pages (bench/metadata_pages.py)",
            "",
            f"- Machine: `nproc` {info['nproc']}, {info['cpu']}, {info['memory']} RAM, "
            f"kernel {info['kernel']}",
            f"- Python {info['python']}; Berth {info['berth']}; PostgreSQL "
            f"{_pg_version()}; SQLite {_sqlite_version()}",
            f"- {args.repos:,} repositories (one manifest each), one repository of "
            f"{args.tags:,} tags; {args.samples} pages of each kind after a random `last`; "
            f"bulk load: {fills}",
            f"- Load average (1 min) at the start and end: {load_before:.1f}, "
            f"{os.getloadavg()[0]:.1f} (other work on the machine inflates the tail)",
            "",
            *rows,
            "",
        ]
        with RESULTS.open("a") as f:
            f.write("\n".join(section))


def _pg_version() -> str:
    from bench.system import tool_version  # noqa: PLC0415
    from tests.support.postgres import find_pg_bin  # noqa: PLC0415

    text = tool_version([str(find_pg_bin() / "postgres"), "--version"])
    found = re.search(r"\(PostgreSQL\) (\S+)", text)
    return found.group(1) if found else text


def _sqlite_version() -> str:
    import sqlite3  # noqa: PLC0415

    return sqlite3.sqlite_version


if __name__ == "__main__":
    main()

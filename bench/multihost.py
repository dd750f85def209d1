"""Several Berth hosts behind nginx on this machine: what one, two and three hosts serve through
the balancer, and how long a write on one host takes to reach another host's caches.

    .venv/bin/python -m bench.multihost                 # 3 hosts, 8 s per figure, ~3 min
    .venv/bin/python -m bench.multihost --seconds 4 --blob-mib 32
    .venv/bin/python -m bench.multihost --record        # also append a section to RESULTS.md

Set-up: a PostgreSQL server and a SeaweedFS (S3) of its own, N `berth serve` hosts (one worker
each, separate data directories, one shared secret), nginx with the pool configuration
`berth ctl reconfigure` renders (tests/support/cluster.py). For each pool size the same nginx
port is restarted over the first 1, 2, ... hosts, then:

- manifest GET: `wrk -t2 -c32` through nginx (HTTPS) on a one-layer image's tag, with a bearer
  token, after a 2 s warm-up; requests/s and latency percentiles;
- blob download: 4 concurrent `curl` GETs of one `--blob-mib` blob through nginx (Berth relays
  the bytes from S3), twice; total MB/s (10^6 B/s).

The figure for N hosts is compared with the one for one host (the ratio is the scaling). On a
machine with two cores, every host, nginx, PostgreSQL, SeaweedFS and the load generator share
those two cores: expect little scaling, and read it as "adding hosts costs nothing", not as
what separate machines would do.

Invalidation: `--writes` times, a new manifest is PUT to one tag through host0 and host1 is
polled (keep-alive GETs of that tag, which host1 answers from its manifest cache while the
cache is good) until it serves the new digest. Reported: the PUT's latency and the delay from
the PUT's answer to the first GET on host1 that sees the change (p50, p95, max).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.run import BENCH_DIR
from bench.system import machine_info
from tests.server.helpers import OCI_MANIFEST, one_layer_manifest, push_blob, sha
from tests.support.cluster import Cluster, push_small_image
from tests.support.postgres import PostgresServer, migrated
from tests.support.seaweedfs import start_seaweedfs
from tests.support.servers import ADMIN, ADMIN_PASSWORD

MB = 1e6


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wrk_manifest_get(url: str, token: str, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [
            "wrk", "-t2", "-c32", f"-d{seconds:g}s", "--timeout", "5s",
            "-s", str(BENCH_DIR / "manifest_get.lua"), url,
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
        env={**os.environ, "BENCH_AUTHORIZATION": f"Bearer {token}"},
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}{done.stderr}")
    data: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["errors"]
    if data["requests"] == 0 or errors["status"] or errors["timeout"] or errors["connect"]:
        raise RuntimeError(f"wrk GET {url}: {data['requests']} requests, errors {errors}")
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def curl_download(url: str, token: str, size: int) -> float:
    """Seconds for one GET of `size` bytes (curl, TLS unchecked: the bench's own cert)."""
    done = subprocess.run(
        [
            "curl", "-sk", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
            "-H", f"Authorization: Bearer {token}", url,
        ],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    got, seconds = done.stdout.split()
    if int(got) != size:
        raise RuntimeError(f"curl GET {url}: {got} bytes, not {size}")
    return float(seconds)


def download_rate(url: str, token: str, size: int, parallel: int = 4, rounds: int = 2) -> float:
    """MB/s of `parallel` concurrent downloads, best of `rounds`."""
    best = 0.0
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for _ in range(rounds):
            started = time.monotonic()
            list(pool.map(lambda _: curl_download(url, token, size), range(parallel)))
            best = max(best, parallel * size / (time.monotonic() - started) / MB)
    return best


def invalidation(cluster: Cluster, writes: int) -> dict[str, list[float]]:
    """PUT a new manifest to one tag through host0; poll host1 until it serves it."""
    writer, reader = cluster.hosts[0], cluster.hosts[1]
    repo, tag = "bench/moving", "latest"
    put_ms: list[float] = []
    seen_ms: list[float] = []
    with writer.client() as w, reader.client() as r:
        layer = b"the moving layer"
        push_blob(w, repo, layer)
        for i in range(writes):
            config = json.dumps({"architecture": "amd64", "os": "linux", "write": i}).encode()
            manifest = one_layer_manifest(config, layer)
            push_blob(w, repo, config)
            r.get(f"/v2/{repo}/manifests/{tag}", headers={"accept": OCI_MANIFEST})  # cached
            started = time.monotonic()
            put = w.put(
                f"/v2/{repo}/manifests/{tag}",
                content=manifest,
                headers={"content-type": OCI_MANIFEST},
            )
            answered = time.monotonic()
            if put.status_code != 201:
                raise RuntimeError(f"manifest PUT: {put.status_code} {put.text}")
            while True:
                got = r.get(f"/v2/{repo}/manifests/{tag}", headers={"accept": OCI_MANIFEST})
                if got.headers.get("docker-content-digest") == sha(manifest):
                    break
                if time.monotonic() - answered > 10:
                    raise RuntimeError("host1 never saw the write")
            put_ms.append((answered - started) * 1000)
            seen_ms.append((time.monotonic() - answered) * 1000)
    return {"put_ms": put_ms, "seen_ms": seen_ms}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    postgres = PostgresServer.create().start()
    weed = start_seaweedfs(tmp / "weed")
    cluster: Cluster | None = None
    try:
        shared = {
            "BERTH_METADATA_URL": migrated(postgres.create_database()),
            **weed.env(weed.new_bucket("bench-multihost")),
            "BERTH_SCAN_ENABLED": "false",
            "BERTH_LOG_ACCESS": "false",
            "BERTH_RATELIMIT_PULL_RATE": "0",
        }
        cluster = Cluster(tmp / "cluster", shared, count=args.hosts).start()
        blob = os.urandom(args.blob_mib << 20)
        with cluster.hosts[0].client() as api:
            push_small_image(api, "bench/small", "latest", b"a small layer")
            digest = push_blob(api, "bench/small", blob)
        with httpx.Client(verify=False, auth=(ADMIN, ADMIN_PASSWORD), timeout=30) as c:
            token = c.get(
                cluster.public_url + "/token",
                params={"service": "berth", "scope": "repository:bench/small:pull"},
            ).json()["token"]
        manifest_url = cluster.public_url + "/v2/bench/small/manifests/latest"
        blob_url = f"{cluster.public_url}/v2/bench/small/blobs/{digest}"
        pools = []
        for n in range(1, args.hosts + 1):
            cluster.restart_front(cluster.hosts[:n], f"front-{n}")
            wrk_manifest_get(manifest_url, token, 2.0)  # warm-up: caches, connections
            get = wrk_manifest_get(manifest_url, token, args.seconds)
            rate = download_rate(blob_url, token, len(blob))
            pools.append({"hosts": n, "manifest_get": get, "download_mbps": rate})
            log(f"{n} host(s): manifest GET {get['rps']:.0f}/s, download {rate:.0f} MB/s")
        moved = invalidation(cluster, args.writes)
        return {
            "pools": pools,
            "invalidation": {k: percentiles(v) for k, v in moved.items()},
            "writes": args.writes,
            "blob_mib": args.blob_mib,
            "seconds": args.seconds,
            "load_average": os.getloadavg(),
            "machine": machine_info(),
        }
    finally:
        if cluster is not None:
            cluster.stop()
        weed.stop()
        postgres.destroy()


def table(result: dict[str, Any]) -> str:
    one = result["pools"][0]
    lines = [
        "| hosts | manifest GET req/s | p50 ms | p99 ms | vs 1 host | download MB/s | vs 1 host |",
        "|---|---|---|---|---|---|---|",
    ]
    for pool in result["pools"]:
        get = pool["manifest_get"]
        lines.append(
            f"| {pool['hosts']} | {get['rps']:,.0f} | {get['latency_us']['p50'] / 1000:.1f} "
            f"| {get['latency_us']['p99'] / 1000:.1f} "
            f"| {get['rps'] / one['manifest_get']['rps']:.2f}x "
            f"| {pool['download_mbps']:.0f} | {pool['download_mbps'] / one['download_mbps']:.2f}x |"
        )
    inv = result["invalidation"]
    lines += [
        "",
        f"Cross-host invalidation over {result['writes']} tag moves (PUT through host0, "
        "host1 polled):",
        "",
        "| | p50 ms | p95 ms | max ms |",
        "|---|---|---|---|",
        *(
            f"| {label} | {inv[key]['p50']:.1f} | {inv[key]['p95']:.1f} | {inv[key]['max']:.1f} |"
            for key, label in (
                ("put_ms", "manifest PUT (the write, its NOTIFY included)"),
                ("seen_ms", "from the PUT's answer until host1 serves the new digest"),
            )
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multihost", description=__doc__)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per manifest GET figure")
    parser.add_argument("--blob-mib", type=int, default=64)
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--record", action="store_true", help="append a section to RESULTS.md")
    args = parser.parse_args(argv)
    if args.hosts < 2:
        parser.error("--hosts must be at least 2 (the invalidation needs two)")
    with tempfile.TemporaryDirectory(prefix="bench-multihost-") as tmp:
        result = run(args, Path(tmp))
    text = table(result)
    print(text)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    if args.record:
        machine = result["machine"]
        when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load = ", ".join(f"{x:.1f}" for x in result["load_average"])
        section = (
            f"\n## {when}: several hosts behind nginx (`python -m bench.multihost`)\n\n"
            f"- Machine: `nproc` {machine['nproc']}, {machine['cpu']}, {machine['memory']}; "
            f"Berth {machine['berth']}; wrk {machine['wrk']}\n"
            f"- PostgreSQL and SeaweedFS on the same machine; one worker per host; manifest GET "
            f"`wrk -t2 -c32 -d{result['seconds']:g}s` through nginx (HTTPS); download: 4 "
            f"concurrent GETs of a {result['blob_mib']} MiB blob, best of 2\n"
            f"- Load average after the run: {load}\n\n{text}\n"
        )
        with (BENCH_DIR / "RESULTS.md").open("a") as out:
            out.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Berth measured side by side against the reference registry (CNCF Distribution 2.8).

    python -m bench.run [--quick] [--only NAME ...] [--json [PATH]] [--record]
                        [--berth-target berth|reference] [--repeats N] [--mixed-seconds S]
                        [--check]

Starts three registries on loopback (each in its own temp dir): Berth at its defaults
(`server.workers = "auto"`), Berth with `--workers 1`, and the reference. Every measurement
loads one registry at a time, never two at once, rotating which goes first on each repeat.
Figures are the median of `--repeats` runs (default 3). Ratios are always "higher is better":
Berth/reference for rates, reference/Berth for times. See bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import functools
import hashlib
import http.client
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import gc, load, proxy, report, system  # noqa: E402
from bench import image as oci  # noqa: E402
from bench.report import BERTH_SIDES, SIDES, Row  # noqa: E402
from tests.support.servers import Server, start_berth, start_reference_registry  # noqa: E402

T = TypeVar("T")
MiB = 1024 * 1024
MEASUREMENTS = (
    "upload", "download", "manifest", "skopeo", "docker", "mixed", "memory", "proxy", "gc",
)  # fmt: skip
ROW_ORDER = (
    "upload", "download",
    "manifest-get-basic", "manifest-get-bearer", "manifest-head-basic", "manifest-head-bearer",
    "skopeo-push", "skopeo-pull", "docker-pull",
    "mixed-ops", "mixed-skopeo", "mixed-p50", "mixed-p99", "mixed-errors",
    "memory-idle-worker", "memory-idle-supervisor", "memory-upload", "memory-idle-after",
    "proxy-cold", "proxy-warm", "gc-p99",
)  # fmt: skip
SKOPEO_CACHE_DIR = Path("/var/lib/containers/cache")
SKOPEO_CACHE_FILE = SKOPEO_CACHE_DIR / "blob-info-cache-v1.boltdb"
MEMORY_TARGET_MIB = 100.0  # idle RSS of one serving process, and its growth during an upload
SUPERVISOR_TARGET_MIB = 40.0
MANIFEST_TARGET = 1.5
# Berth's bearer tokens last auth.token_ttl (300 s by default): a mixed load longer than this
# sends Basic credentials on its manifest reads instead of one token for the whole run.
TOKEN_SAFE_SECONDS = 240.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Settings:
    blob_bytes: int = 1024 * MiB
    repeats: int = 3
    wrk_seconds: float = 10.0
    warmup_seconds: float = 2.0
    connections: int = 32
    wrk_threads: int = 2
    layers: int = 50
    layer_payload_bytes: int = 128 * 1024
    rss_interval: float = 0.05
    gets_per_download_run: int = 3  # one 1 GiB GET lasts ~0.5 s: too short to time alone
    busy_retries: int = 1  # times a run is repeated when other processes took the CPUs
    # (f) docker pull: about the size of debian:12 (49 MiB compressed), in several layers
    docker_layer_mib: tuple[int, ...] = (28, 12, 6, 2, 1)
    # (g) mixed load, once per registry
    mixed_seconds: float = 60.0
    mixed_pushers: int = 2
    mixed_pullers: int = 2
    mixed_readers: int = 16  # keep-alive connections reading one manifest (wrk)
    mixed_push_layers: int = 4
    mixed_pull_layers: int = 8
    mixed_layer_bytes: int = 256 * 1024
    # (h) pull-through: an image of this many random layers, pulled with skopeo
    proxy_layers: int = 8
    proxy_layer_mib: int = 32
    # (i) manifest GETs (4 connections) idle, then while the collector reclaims this many blobs
    gc_blobs: int = 100_000
    gc_seconds: float = 10.0

    @classmethod
    def make(
        cls,
        quick: bool,
        repeats: int | None,
        busy_retries: int | None,
        mixed_seconds: float | None = None,
    ) -> Settings:
        s = (
            cls(
                blob_bytes=256 * MiB,
                wrk_seconds=3.0,
                warmup_seconds=1.0,
                mixed_seconds=15.0,
                proxy_layer_mib=8,
                gc_blobs=20_000,
                gc_seconds=4.0,
            )
            if quick
            else cls()
        )
        if repeats is not None:
            s.repeats = repeats
        if busy_retries is not None:
            s.busy_retries = busy_retries
        if mixed_seconds is not None:
            s.mixed_seconds = mixed_seconds
        return s


def run_cmd(cmd: list[str], *, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env=full_env
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} ... exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc.stdout


def order(rep: int) -> tuple[str, ...]:
    """Rotate which registry goes first, so warm caches and drift favour none."""
    k = rep % len(SIDES)
    return SIDES[k:] + SIDES[:k]


# --------------------------------------------------------------------------- the registries


@dataclass
class Side:
    name: str  # the slot: "berth" or "reference"
    kind: str  # what runs in it: "berth" or "reference"
    server: Server
    credentials: tuple[str, str] | None = None
    client: oci.RegistryClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = oci.RegistryClient(self.url, self.credentials)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.proc.pid

    def auth(self, repo: str, actions: str = "pull,push") -> dict[str, str]:
        """Headers for requests on `repo`; fetched before a timed run, never during one."""
        return self.client.auth_headers(repo, actions)

    def basic(self) -> dict[str, str]:
        """HTTP Basic credentials, sent as is on every request (none for an open registry)."""
        return self.client.basic_headers()

    def processes(self) -> tuple[int | None, list[int]]:
        """(supervisor PID or None, serving PIDs): a Berth with workers supervises them; a
        single process (Berth --workers 1, the reference) serves by itself. Scan workers
        (`berth scan-worker`, started by the jobs leader for each pushed image) serve nothing."""
        serving = [c for c in system.children(self.pid) if "scan-worker" not in system.cmdline(c)]
        if self.kind == "berth" and serving:
            return self.pid, serving
        return None, [self.pid]

    def scanning(self) -> int:
        """Images Berth still has to scan (due in its scan queue) plus scan workers running:
        background work that pushes leave behind (scan.enabled is on by default)."""
        if self.kind != "berth" or self.server.data_dir is None:
            return 0
        workers = sum("scan-worker" in system.cmdline(p) for p in system.proc_tree(self.pid)[1:])
        db = self.server.data_dir / "berth.db"
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                row = conn.execute(
                    "SELECT COUNT(*) FROM scan_queue WHERE not_before <= ?", (time.time(),)
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return workers
        return workers + int(row[0])

    def skopeo_creds(self, flag: str) -> list[str]:
        if self.client.auth_kind == "anonymous" or self.credentials is None:
            return []
        return [f"{flag}={self.credentials[0]}:{self.credentials[1]}"]


def start_side(
    name: str, kind: str, tmp: Path, berth_args: list[str], credentials: tuple[str, str] | None
) -> Side:
    if kind == "berth":
        data_dir = tmp / f"{name}-data"
        if name == "berth-1w":
            berth_args = ["--workers", "1", *berth_args]
        server = start_berth(data_dir, args=berth_args)
        # tests/support starts Berth with a known first admin; else Berth generated a password
        generated = data_dir / "initial-admin-password"
        if credentials is None:
            credentials = getattr(server, "credentials", None)
        if credentials is None and generated.exists():
            credentials = ("admin", generated.read_text().strip())
    else:
        server = start_reference_registry(tmp / f"{name}-reference")
    side = Side(name, kind, server, credentials)
    log(
        f"started the {name} slot ({kind}) at {server.url}, pid {server.proc.pid}, "
        f"requests {side.client.auth_kind}"
    )
    return side


@dataclass
class Bench:
    sides: dict[str, Side]
    settings: Settings
    tmp: Path
    berth_args: list[str] = field(default_factory=list)  # --berth-arg, for every Berth started
    background: system.BackgroundLoad = field(default_factory=system.BackgroundLoad)
    retried: int = 0

    def wait_for_scans(self, timeout: float = 180.0) -> None:
        """Let every Berth finish scanning what was pushed to it before the next timed run, so
        one registry's background scans are not billed to another's run. A Berth's scans that
        start during its own runs (its pushes, its mixed load) stay in its figures: they are
        part of its defaults."""
        deadline = time.monotonic() + timeout
        waited = False
        while time.monotonic() < deadline:
            left = {n: side.scanning() for n, side in self.sides.items()}
            if not any(left.values()):
                break
            if not waited:
                log(f"  waiting for background scans: {left}")
                waited = True
            time.sleep(0.5)
        else:
            log(f"  background scans still running after {timeout:g} s: measuring anyway")

    def quiet_run(
        self, row: Row, side: str, label: str, fn: Callable[[], T], retries: int | None = None
    ) -> T:
        """Run one timed measurement; run it again if other processes took the CPUs meanwhile
        (at most `retries` times, default `--busy-retries`).

        `fn` must measure something new each call (fresh content, fresh repository).
        """
        retries = self.settings.busy_retries if retries is None else retries
        for attempt in range(retries + 1):
            self.wait_for_scans()
            system.settle()
            with self.background.watch() as usage:
                value = fn()
            if not usage.busy:
                break
            if attempt < retries:
                self.retried += 1
                log(f"  {label}: {usage.describe()}; running it again")
            else:
                log(f"  {label}: {usage.describe()}; kept anyway")
        row.other_cpu[side].append(usage.other_cpu_fraction)
        return value


# --------------------------------------------------------------------------- (a) (b) (e) blobs


class BlobFile:
    """A large random file; `fresh()` stamps a counter into its first bytes and re-hashes, so
    every upload sends a blob the registry has never seen, without rewriting the whole file."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size, self.count = path, size, 0
        with path.open("wb") as f:
            left = size
            while left:
                data = os.urandom(min(4 * MiB, left))
                f.write(data)
                left -= len(data)

    def fresh(self) -> str:
        self.count += 1
        with self.path.open("r+b") as f:
            f.write(f"berth-bench {self.count:08d} {time.time_ns()}\n".encode())
        h = hashlib.sha256()
        with self.path.open("rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        return "sha256:" + h.hexdigest()


def header_args(headers: dict[str, str]) -> list[str]:
    return [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")]


def curl_upload(side: Side, repo: str, path: Path, digest: str, size: int) -> float:
    """POST a session, then one PUT ?digest= carrying the whole file; returns seconds."""
    base, auth = side.url, header_args(side.auth(repo))
    out = run_cmd(
        [
            "curl", "-sS", "-X", "POST", "-o", "/dev/null", "-D", "-", *auth,
            "-w", "\nBENCH %{http_code} %{time_total}",
            f"{base}/v2/{repo}/blobs/uploads/",
        ]
    )  # fmt: skip
    headers, _, tail = out.rpartition("\nBENCH ")
    code, post_time = tail.split()
    location = next(
        (
            line.split(":", 1)[1].strip()
            for line in headers.splitlines()
            if line.lower().startswith("location:")
        ),
        None,
    )
    if code != "202" or not location:
        raise RuntimeError(f"POST /v2/{repo}/blobs/uploads/ answered {code}, location {location}")
    location = urllib.parse.urljoin(base + "/", location)
    sep = "&" if "?" in location else "?"
    out = run_cmd(
        [
            "curl", "-sS", "-T", str(path), "-o", "/dev/null", *auth,
            # Registry clients never send Expect: 100-continue; curl would, above 1 MiB.
            "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
            "-w", "%{http_code} %{time_total} %{size_upload}",
            f"{location}{sep}digest={digest}",
        ]
    )  # fmt: skip
    code, put_time, uploaded = out.split()
    if code != "201" or int(float(uploaded)) != size:
        raise RuntimeError(f"PUT blob answered {code} after sending {uploaded} of {size} bytes")
    return float(post_time) + float(put_time)


def curl_download(side: Side, repo: str, digest: str, size: int, times: int = 1) -> float:
    """GET the blob to /dev/null `times` times, one after the other; returns total seconds."""
    base, auth = side.url, header_args(side.auth(repo, "pull"))
    total = 0.0
    for _ in range(times):
        out = run_cmd(
            [
                "curl", "-sS", "-L", "-o", "/dev/null", *auth,
                "-w", "%{http_code} %{size_download} %{time_total}",
                f"{base}/v2/{repo}/blobs/{digest}",
            ]
        )  # fmt: skip
        code, got, seconds = out.split()
        if code != "200" or int(float(got)) != size:
            raise RuntimeError(f"GET blob answered {code} with {got} of {size} bytes")
        total += float(seconds)
    return total


def measure_blobs(bench: Bench, wanted: set[str]) -> list[Row]:
    s = bench.settings
    size = s.blob_bytes
    size_text = f"{size // MiB} MiB" if size < 1024 * MiB else f"{size / (1024 * MiB):g} GiB"
    up = Row("upload", f"(a) upload {size_text}, curl POST + one PUT", "MB/s", True, 2.0)
    down = Row("download", f"(b) download {size_text}, curl GET", "MB/s", True, 1.0)
    down.details["gets_per_run"] = s.gets_per_download_run
    idle_worker = Row(
        "memory-idle-worker", "(e) idle RSS, largest serving process, at start", "MiB", False,
        MEMORY_TARGET_MIB, absolute_target=True,
    )  # fmt: skip
    idle_super = Row(
        "memory-idle-supervisor", "(e) idle RSS, supervisor", "MiB", False,
        SUPERVISOR_TARGET_MIB, absolute_target=True,
    )  # fmt: skip
    growth = Row(
        "memory-upload", f"(e) RSS growth during the {size_text} uploads, largest per process",
        "MiB", False, MEMORY_TARGET_MIB, absolute_target=True,
    )  # fmt: skip
    up.details["bytes"] = down.details["bytes"] = size
    memory_rows = [idle_worker, idle_super, growth]
    rows = [r for r in (up, down) if r.key in wanted] + (memory_rows if "memory" in wanted else [])
    log(f"writing a {size_text} random blob")
    blob = BlobFile(bench.tmp / "blob.bin", size)
    stored: dict[str, tuple[str, str]] = {}  # side -> (repo, digest) of a blob it holds
    try:
        if wanted & {"upload", "memory"}:
            idle = {
                name: idle_memory(side, idle_worker, idle_super)
                for name, side in bench.sides.items()
            }
            peak = {name: dict(per_pid) for name, per_pid in idle.items()}

            def upload(side: Side) -> tuple[float, int]:
                digest = blob.fresh()
                repo = f"bench/blob{blob.count}"
                with system.PerProcessPeak(side.pid, s.rss_interval) as sampler:
                    seconds = curl_upload(side, repo, blob.path, digest, size)
                stored[side.name] = (repo, digest)
                mine = peak[side.name]
                for pid, rss in sampler.peaks.items():  # retried runs count here too
                    mine[pid] = max(mine.get(pid, 0), rss)
                return seconds, max(sampler.peaks.values())

            for rep in range(s.repeats):
                for name in order(rep):
                    label = f"upload run {rep + 1}/{s.repeats} {name}"
                    seconds, rss = bench.quiet_run(
                        up, name, label, functools.partial(upload, bench.sides[name])
                    )
                    up.runs[name].append(size / seconds / 1e6)
                    log(
                        f"  {label}: {size / seconds / 1e6:7.1f} MB/s ({seconds:.2f} s), "
                        f"largest process RSS peak {rss / MiB:.1f} MiB"
                    )
            for name in SIDES:
                grown = {
                    pid: (rss - idle[name].get(pid, rss)) / MiB for pid, rss in peak[name].items()
                }
                growth.details[name] = {
                    "idle_mib": {str(p): v / MiB for p, v in idle[name].items()},
                    "peak_mib": {str(p): v / MiB for p, v in peak[name].items()},
                    "growth_mib": {str(p): v for p, v in grown.items()},
                }
                growth.runs[name].append(max(grown.values()))
            growth.details["sample_interval_s"] = s.rss_interval
            growth.details["per_process"] = "VmRSS of each process; peak minus its idle figure"
        if "download" in wanted:
            for name, side in bench.sides.items():
                if name not in stored:  # --only download: put one blob there, untimed
                    digest = blob.fresh()
                    curl_upload(side, "bench/blob-dl", blob.path, digest, size)
                    stored[name] = ("bench/blob-dl", digest)
            for rep in range(s.repeats):
                for name in order(rep):
                    repo, digest = stored[name]
                    label = f"download run {rep + 1}/{s.repeats} {name}"
                    n = s.gets_per_download_run
                    side = bench.sides[name]
                    get = functools.partial(curl_download, side, repo, digest, size, n)
                    seconds = bench.quiet_run(down, name, label, get)
                    down.runs[name].append(n * size / seconds / 1e6)
                    log(f"  {label}: {n * size / seconds / 1e6:7.1f} MB/s ({n} GETs)")
    except Exception as e:  # report what was measured, and why the rest was not
        for row in rows:
            row.errors.append(f"{type(e).__name__}: {e}")
        log(f"  blob measurements failed: {e}")
    finally:
        blob.path.unlink(missing_ok=True)
    return rows


def idle_memory(side: Side, worker: Row, supervisor: Row) -> dict[int, int]:
    """Idle RSS of each process of `side`, as bytes by PID; the largest serving process and
    the supervisor (if any) go into the two rows, in MiB."""
    per_pid = system.idle_rss_per_process(side.pid)
    boss, serving = side.processes()
    worker.runs[side.name].append(max(per_pid.get(p, 0) for p in serving) / MiB)
    worker.details[side.name] = {"serving_processes": len(serving)}
    if boss is not None:
        supervisor.runs[side.name].append(per_pid.get(boss, 0) / MiB)
    return per_pid


# --------------------------------------------------------------------------- (c) manifests


def wrk_get(url: str, s: Settings, seconds: float, headers: dict[str, str]) -> dict[str, object]:
    out = run_cmd(
        [
            "wrk", "-t", str(s.wrk_threads), "-c", str(s.connections), "-d", f"{seconds:g}s",
            "--timeout", "5s", "-s", str(BENCH_DIR / "manifest_get.lua"), url,
        ],
        timeout=seconds + 60,
        env={"BENCH_AUTHORIZATION": headers.get("Authorization", "")},
    )  # fmt: skip
    line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["errors"]
    if data["requests"] == 0 or errors["status"] or errors["timeout"] or errors["connect"]:
        raise RuntimeError(f"wrk GET {url}: {data['requests']} requests, errors {errors}")
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return dict(data)


def load_head(url: str, s: Settings, seconds: float, headers: dict[str, str]) -> dict[str, object]:
    result = load.run(
        url,
        method="HEAD",
        headers={"Accept": oci.MANIFEST_ACCEPT, **headers},
        connections=s.connections,
        duration=seconds,
    )
    if result.requests == 0 or result.non_2xx or result.errors:
        raise RuntimeError(
            f"HEAD {url}: {result.requests} requests, statuses {result.statuses}, "
            f"{result.errors} dropped connections"
        )
    return result.to_json()


def manifest_headers(side: Side, auth: str, repo: str) -> dict[str, str]:
    """Basic credentials as they are, or a bearer token from the registry's token endpoint
    with `scope=repository:REPO:pull`, as `docker pull` asks for one (nothing when open)."""
    return side.basic() if auth == "basic" else side.auth(repo, "pull")


def prime(side: Side, url: str, headers: dict[str, str], connections: int = 8) -> None:
    """A few requests one after the other, each on a new connection (so every serving process
    likely gets some), before the warm-up: Berth remembers a Basic sign-in per process after
    the first, but 32 connections arriving at once would each check the password first."""
    parsed = urllib.parse.urlsplit(url)
    for _ in range(connections):
        conn = http.client.HTTPConnection(parsed.netloc, timeout=60)
        try:
            conn.request("GET", parsed.path, headers={"Accept": oci.MANIFEST_ACCEPT, **headers})
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"{side.name}: manifest GET answered {resp.status}")


def measure_manifests(bench: Bench) -> list[Row]:
    s = bench.settings
    repo, tag = "bench/small", "latest"
    Tool = Callable[[str, Settings, float, dict[str, str]], dict[str, object]]
    plan: list[tuple[Row, Tool, str]] = []
    tools: list[tuple[str, Tool, str]] = [
        ("GET", wrk_get, f"wrk -t{s.wrk_threads} -c{s.connections}"),
        ("HEAD", load_head, f"bench.load -c{s.connections}"),
    ]
    for method, tool, how in tools:
        for auth, shown in (("basic", "Basic"), ("bearer", "bearer token")):
            row = Row(
                f"manifest-{method.lower()}-{auth}", f"(c) manifest {method}, {shown}, {how}",
                "req/s", True, MANIFEST_TARGET,
            )  # fmt: skip
            plan.append((row, tool, auth))
    rows = [row for row, _, _ in plan]
    small = oci.build_image(1, 4096)
    urls = {}
    try:
        for name, side in bench.sides.items():
            side.client.push_image(repo, tag, small)
            for method in ("GET", "HEAD"):
                status = side.client.manifest_status(repo, tag, method)
                if status != 200:
                    raise RuntimeError(f"{name}: manifest {method} after push answered {status}")
            urls[name] = f"{side.url}/v2/{repo}/manifests/{tag}"
        for row in rows:
            row.details["manifest_bytes"] = len(small.manifest)
            row.details["auth"] = {n: side.client.auth_kind for n, side in bench.sides.items()}
    except Exception as e:
        for row in rows:
            row.errors.append(f"{type(e).__name__}: {e}")
        log(f"  manifest setup failed: {e}")
        return rows
    for row, tool, auth in plan:
        try:
            for name in SIDES:  # warm-up, not counted
                headers = manifest_headers(bench.sides[name], auth, repo)
                prime(bench.sides[name], urls[name], headers)
                tool(urls[name], s, s.warmup_seconds, headers)
            for rep in range(s.repeats):
                for name in order(rep):
                    label = f"{row.key} run {rep + 1}/{s.repeats} {name}"
                    # tokens last minutes: a new one for every run, fetched before it
                    headers = manifest_headers(bench.sides[name], auth, repo)
                    data = bench.quiet_run(
                        row,
                        name,
                        label,
                        functools.partial(tool, urls[name], s, s.wrk_seconds, headers),
                    )
                    rps = float(data["rps"])  # type: ignore[arg-type]
                    row.runs[name].append(rps)
                    runs: list[object] = row.details.setdefault(name, [])  # type: ignore[assignment]
                    runs.append(data)
                    log(f"  {label}: {rps:8.1f} req/s")
        except Exception as e:
            row.errors.append(f"{type(e).__name__}: {e}")
            log(f"  {row.key} failed: {e}")
    return rows


# --------------------------------------------------------------------------- (d) skopeo

# Each skopeo run gets its own empty blob-info cache: a private mount namespace with a tmpfs on
# the cache directory, which vanishes with the namespace. The wrapper checks the directory is
# empty before skopeo starts and holds skopeo's cache file afterwards, which proves skopeo used
# the private cache and not the host's (other test runs on the machine may be writing that one).
# Every push also sends a freshly generated image, so nothing could be mounted instead anyway.
SKOPEO_WRAPPER = (
    "set -e; mount -t tmpfs -o size=64m,mode=0700 bench-skopeo-cache {cache}; "
    'test -z "$(ls -A {cache})"; '
    'skopeo --insecure-policy "$@"; '
    "test -s {cache_file} || {{ echo 'skopeo did not use the private cache' >&2; exit 1; }}"
)


def skopeo_isolated(args: list[str]) -> float:
    """Run `skopeo ARGS` with a fresh blob-info cache; returns wall-clock seconds."""
    unshare = ["unshare", "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "-r")  # in a user namespace a non-root user may mount the tmpfs
    script = SKOPEO_WRAPPER.format(cache=SKOPEO_CACHE_DIR, cache_file=SKOPEO_CACHE_FILE)
    t0 = time.perf_counter()
    run_cmd([*unshare, "sh", "-c", script, "skopeo", *args], timeout=600)
    return time.perf_counter() - t0


@contextlib.contextmanager
def skopeo_cache_mountpoint() -> Iterator[None]:
    """Make sure the cache directory exists to mount on; remove what we created afterwards."""
    created = []
    for d in reversed([SKOPEO_CACHE_DIR, *SKOPEO_CACHE_DIR.parents]):
        if not d.exists():
            d.mkdir()
            created.append(d)
    try:
        yield
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()


def push_layout(side: Side, layout: Path, tag: str, repo: str) -> float:
    """skopeo copy of an OCI layout into `repo:tag` on `side`, with a fresh blob-info cache;
    returns seconds."""
    return skopeo_isolated(
        [
            "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
            *side.skopeo_creds("--dest-creds"), f"oci:{layout}:{tag}",
            f"docker://{side.server.host}/{repo}:{tag}",
        ]
    )  # fmt: skip


def pull_layout(side: Side, repo: str, tag: str, dest: Path, want: set[str]) -> float:
    """skopeo copy of `repo:tag` into an OCI layout at `dest` (removed afterwards), with a
    fresh blob-info cache; checks the blobs pulled are `want`; returns seconds."""
    try:
        seconds = skopeo_isolated(
            [
                "copy", "--quiet", "--src-tls-verify=false", "--preserve-digests",
                *side.skopeo_creds("--src-creds"),
                f"docker://{side.server.host}/{repo}:{tag}", f"oci:{dest}:{tag}",
            ]
        )  # fmt: skip
        got = {f"sha256:{p.name}" for p in (dest / "blobs" / "sha256").iterdir()}
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if got != want:
        raise RuntimeError(f"{side.name}: the pulled image differs from the pushed one")
    return seconds


def measure_skopeo(bench: Bench) -> list[Row]:
    s = bench.settings
    n, tag = s.layers, "v1"
    push = Row("skopeo-push", f"(d) skopeo push, {n} layers", "s", False, 1.0)
    pull = Row("skopeo-pull", f"(d) skopeo pull, {n} layers", "s", False, 1.0)
    pushes = 0

    def push_fresh(side: Side) -> tuple[float, str, oci.Image]:
        nonlocal pushes
        pushes += 1
        img = oci.build_image(n, s.layer_payload_bytes)
        layout = oci.write_layout(img, bench.tmp / f"layout{pushes}", tag)
        repo = f"bench/layers{pushes}"
        try:
            seconds = push_layout(side, layout, tag, repo)
        finally:
            shutil.rmtree(layout)
        push.details["image_bytes"] = img.size
        return seconds, repo, img

    def pull_once(side: Side, repo: str, img: oci.Image) -> float:
        return pull_layout(side, repo, tag, bench.tmp / "pulled", {*img.blobs, img.manifest_digest})

    try:
        with skopeo_cache_mountpoint():
            for rep in range(s.repeats):
                for name in order(rep):
                    side = bench.sides[name]
                    label = f"skopeo run {rep + 1}/{s.repeats} {name}"
                    seconds, repo, img = bench.quiet_run(
                        push, name, label + " push", functools.partial(push_fresh, side)
                    )
                    for digest in img.layer_digests:
                        if side.client.blob_status(repo, digest) != 200:
                            raise RuntimeError(f"{name}: layer {digest} missing after push")
                    push.runs[name].append(seconds)
                    pulled = bench.quiet_run(
                        pull, name, label + " pull", functools.partial(pull_once, side, repo, img)
                    )
                    pull.runs[name].append(pulled)
                    log(f"  {label}: push {seconds:.2f} s, pull {pulled:.2f} s")
        push.details["layer_payload_bytes"] = s.layer_payload_bytes
        push.details["blob_info_cache"] = "a fresh tmpfs per skopeo run (unshare -m), checked"
    except Exception as e:
        for row in (push, pull):
            row.errors.append(f"{type(e).__name__}: {e}")
        log(f"  skopeo failed: {e}")
    return [push, pull]


# --------------------------------------------------------------------------- (f) docker pull


def measure_docker(bench: Bench) -> list[Row]:
    """`docker pull` of a Debian-sized image from a private Docker engine, the image removed
    from the engine after every pull, so each pull fetches and unpacks every layer."""
    from tests.support.clients import start_dockerd  # noqa: PLC0415 - needs the test extras

    s = bench.settings
    sizes = [m * MiB for m in s.docker_layer_mib]
    total_mib = sum(s.docker_layer_mib)
    row = Row(
        "docker-pull", f"(f) docker pull, {len(sizes)} layers, {total_mib} MiB", "s", False, 1.0
    )
    repo, tag = "bench/debian-sized", "12"
    try:
        log(f"building a {total_mib} MiB image of {len(sizes)} random layers")
        img = oci.build_image_sized(sizes)
        layout = oci.write_layout(img, bench.tmp / "docker-layout", tag)
        with skopeo_cache_mountpoint():
            for side in bench.sides.values():
                push_layout(side, layout, tag, repo)
        shutil.rmtree(layout)
        row.details["image_bytes"] = img.size
        row.details["layer_mib"] = list(s.docker_layer_mib)
        log("starting a private dockerd (vfs storage)")
        daemon = start_dockerd(bench.tmp / "dockerd")
    except Exception as e:
        row.errors.append(f"{type(e).__name__}: {e}")
        log(f"  docker setup failed: {e}")
        return [row]
    try:
        docker = daemon.client(bench.tmp / "docker-config")
        row.details["docker"] = docker.run(
            "version", "--format", "{{.Server.Version}}"
        ).text.strip()
        for side in bench.sides.values():
            if side.client.auth_kind != "anonymous" and side.credentials is not None:
                docker.login(side.server.host, *side.credentials)

        def pull(ref: str) -> float:
            if docker.has_image(ref):
                raise RuntimeError(f"{ref} is still in the engine before its pull")
            t0 = time.perf_counter()
            digest = docker.pull(ref)
            seconds = time.perf_counter() - t0
            if digest != img.manifest_digest:
                raise RuntimeError(f"docker pulled {digest}, not {img.manifest_digest}")
            docker.rmi(ref)  # untimed: the next pull starts from an empty engine again
            return seconds

        for rep in range(s.repeats):
            for name in order(rep):
                ref = f"{bench.sides[name].server.host}/{repo}:{tag}"
                label = f"docker pull run {rep + 1}/{s.repeats} {name}"
                seconds = bench.quiet_run(row, name, label, functools.partial(pull, ref))
                row.runs[name].append(seconds)
                log(f"  {label}: {seconds:.2f} s ({img.size / seconds / 1e6:.0f} MB/s)")
    except Exception as e:
        row.errors.append(f"{type(e).__name__}: {e}")
        log(f"  docker pull failed: {e}")
    finally:
        daemon.stop()
    return [row]


# --------------------------------------------------------------------------- (g) mixed load


@dataclass
class MixedTally:
    """What one mixed-load run did: operations finished inside the window, and failures."""

    pushes: int = 0
    pulls: int = 0
    gets: int = 0
    errors: list[str] = field(default_factory=list)
    skopeo_seconds: list[float] = field(default_factory=list)

    @property
    def operations(self) -> int:
        return self.pushes + self.pulls + self.gets


def mixed_load(bench: Bench, side: Side) -> dict[str, object]:
    """`mixed_seconds` of skopeo pushers (fresh images, fresh repositories), skopeo pullers
    (one image, its blobs checked) and wrk readers of one manifest, all at once on `side`."""
    s = bench.settings
    read_repo, pull_repo, tag = "bench/mixed-read", "bench/mixed-pull", "1"
    side.client.push_image(read_repo, tag, oci.build_image(1, 4096))
    pulled_image = oci.build_image(s.mixed_pull_layers, s.mixed_layer_bytes)
    side.client.push_image(pull_repo, tag, pulled_image)
    want = {*pulled_image.blobs, pulled_image.manifest_digest}
    if s.mixed_seconds <= TOKEN_SAFE_SECONDS:
        headers = side.auth(read_repo, "pull")
    else:
        headers = side.basic()
    prime(side, f"{side.url}/v2/{read_repo}/manifests/{tag}", headers)
    tally = MixedTally()
    lock = threading.Lock()
    work = bench.tmp / f"mixed-{side.name}"
    work.mkdir(exist_ok=True)
    start = time.monotonic()
    deadline = start + s.mixed_seconds

    def one(kind: str, index: int, n: int) -> None:
        t0 = time.monotonic()
        error = None
        try:
            if kind == "push":
                img = oci.build_image(s.mixed_push_layers, s.mixed_layer_bytes)
                layout = oci.write_layout(img, work / f"push{index}-{n}", tag)
                try:
                    push_layout(side, layout, tag, f"bench/mixed-push{index}-{n}")
                finally:
                    shutil.rmtree(layout, ignore_errors=True)
            else:
                pull_layout(side, pull_repo, tag, work / f"pull{index}-{n}", want)
        except Exception as e:
            error = f"{kind}: {type(e).__name__}: {str(e)[-300:]}"
        done = time.monotonic()
        with lock:
            if error is not None:
                tally.errors.append(error)
            elif done <= deadline:  # what finishes after the window is not counted
                tally.skopeo_seconds.append(done - t0)
                if kind == "push":
                    tally.pushes += 1
                else:
                    tally.pulls += 1

    def client(kind: str, index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            one(kind, index, n)

    def readers() -> dict[str, object]:
        out = run_cmd(
            [
                "wrk", "-t1", "-c", str(s.mixed_readers), "-d", f"{s.mixed_seconds:g}s",
                "--timeout", "5s", "-s", str(BENCH_DIR / "manifest_get.lua"),
                f"{side.url}/v2/{read_repo}/manifests/{tag}",
            ],
            timeout=s.mixed_seconds + 60,
            env={"BENCH_AUTHORIZATION": headers.get("Authorization", "")},
        )  # fmt: skip
        line = next((x for x in out.splitlines() if x.startswith("BENCH_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary:\n{out}")
        return dict(json.loads(line.removeprefix("BENCH_JSON ")))

    kinds = ["push"] * s.mixed_pushers + ["pull"] * s.mixed_pullers
    with concurrent.futures.ThreadPoolExecutor(len(kinds) + 1) as pool:
        reading = pool.submit(readers)
        clients = [pool.submit(client, kind, i) for i, kind in enumerate(kinds)]
        for f in clients:
            f.result()
        wrk = reading.result()
    shutil.rmtree(work, ignore_errors=True)
    wrk_errors: dict[str, int] = wrk["errors"]  # type: ignore[assignment]
    # wrk counts a non-2xx/3xx answer as a "status" error and still counts it as a request
    tally.gets = int(wrk["requests"]) - wrk_errors["status"]  # type: ignore[call-overload]
    read_errors = sum(wrk_errors.values())
    latency: dict[str, float] = wrk["latency_us"]  # type: ignore[assignment]
    return {
        "seconds": s.mixed_seconds,
        "operations": tally.operations,
        "pushes": tally.pushes,
        "pulls": tally.pulls,
        "gets": tally.gets,
        "get_p50_ms": latency["p50"] / 1e3,
        "get_p99_ms": latency["p99"] / 1e3,
        "skopeo_median_s": statistics.median(tally.skopeo_seconds)
        if tally.skopeo_seconds
        else None,
        "error_count": len(tally.errors) + read_errors,
        "read_errors": wrk_errors,
        "skopeo_errors": tally.errors[:10],
        "read_auth": "bearer" if "Bearer" in headers.get("Authorization", "") else "basic/none",
    }


def measure_mixed(bench: Bench) -> list[Row]:
    s = bench.settings
    what = (
        f"{s.mixed_pushers} skopeo pushers, {s.mixed_pullers} pullers, "
        f"{s.mixed_readers} manifest readers"
    )
    secs = f"{s.mixed_seconds:g} s"
    ops = Row("mixed-ops", f"(g) mixed load {secs} ({what}): operations", "operations", True, 1.0)
    p50 = Row("mixed-p50", f"(g) mixed load {secs}: manifest GET p50", "ms", False, None)
    p99 = Row("mixed-p99", f"(g) mixed load {secs}: manifest GET p99", "ms", False, 1.0)
    skopeo_ops = Row(
        "mixed-skopeo", f"(g) mixed load {secs}: of which skopeo pushes + pulls", "operations",
        True, None,
    )  # fmt: skip
    errs = Row(
        "mixed-errors", f"(g) mixed load {secs}: errors", "errors", False, 0.0, absolute_target=True
    )
    rows = [ops, skopeo_ops, p50, p99, errs]
    with skopeo_cache_mountpoint():
        for name in order(0):
            side = bench.sides[name]
            try:
                # a minute per registry: not run again when the machine was busy, but marked
                result = bench.quiet_run(
                    ops, name, f"mixed load {name}", functools.partial(mixed_load, bench, side), 0
                )
            except Exception as e:
                for row in rows:
                    row.errors.append(f"{name}: {type(e).__name__}: {e}")
                log(f"  mixed load {name} failed: {e}")
                continue
            ops.runs[name].append(float(result["operations"]))  # type: ignore[arg-type]
            skopeo_ops.runs[name].append(float(result["pushes"]) + float(result["pulls"]))  # type: ignore[arg-type]
            p50.runs[name].append(float(result["get_p50_ms"]))  # type: ignore[arg-type]
            p99.runs[name].append(float(result["get_p99_ms"]))  # type: ignore[arg-type]
            errs.runs[name].append(float(result["error_count"]))  # type: ignore[arg-type]
            ops.details[name] = result
            log(
                f"  mixed load {name}: {result['operations']} operations "
                f"({result['pushes']} pushes, {result['pulls']} pulls, {result['gets']} GETs), "
                f"GET p50 {result['get_p50_ms']:.1f} ms p99 {result['get_p99_ms']:.1f} ms, "
                f"{result['error_count']} errors"
            )
    return rows


# --------------------------------------------------------------------------- (h) pull-through

# The `server.workers` setting of the Berth each slot starts for (h) and (i).
WORKERS = {"berth": "auto", "berth-1w": "1"}


def measure_proxy(bench: Bench) -> list[Row]:
    """skopeo pulls of one image through a new Berth's proxy namespace, whose upstream is a
    reference registry: cold (every blob fetched upstream while it is streamed and stored),
    then warm (from the cache). The reference column is a direct pull from the upstream."""
    s = bench.settings
    image = f"{s.proxy_layers} x {s.proxy_layer_mib} MiB"
    cold = Row("proxy-cold", f"(h) pull-through {image}, cold (reference: direct)", "s", False, 0.9)
    warm = Row("proxy-warm", f"(h) pull-through {image}, warm (reference: direct)", "s", False, 1.0)
    # Every repeat and slot in one run (one upstream, one image): not run again when the
    # machine was busy, only marked (on the cold row's Berth column).
    pulls = bench.quiet_run(
        cold, "berth", "pull-through",
        functools.partial(
            proxy.measure, bench.tmp / "proxy", s.proxy_layers, s.proxy_layer_mib, s.repeats,
            list(WORKERS.values()), bench.berth_args,
        ),
        0,
    )  # fmt: skip
    shutil.rmtree(bench.tmp / "proxy", ignore_errors=True)
    cold.runs["reference"] = warm.runs["reference"] = [p.seconds for p in pulls.direct]
    cpu: dict[str, dict[str, float]] = {"direct": asdict(proxy.median_pull(pulls.direct))}
    for side, setting in WORKERS.items():
        cold.runs[side] = [p.seconds for p in pulls.cold[setting]]
        warm.runs[side] = [p.seconds for p in pulls.warm[setting]]
        cpu[f"cold {side}"] = asdict(proxy.median_pull(pulls.cold[setting]))
        cpu[f"warm {side}"] = asdict(proxy.median_pull(pulls.warm[setting]))
    cold.details["cpu_seconds"] = cpu  # each party's: client (skopeo), upstream, berth
    return [cold, warm]


# --------------------------------------------------------------------------- (i) GC running


def measure_gc(bench: Bench) -> list[Row]:
    """Manifest GET p99 while Berth's collector reclaims due blobs, over the idle p99 of the
    same server (a new Berth per run). The reference registry collects offline only: no
    figure of its own; the target is Berth's own ratio."""
    s = bench.settings
    row = Row(
        "gc-p99", f"(i) manifest GET p99 while collecting {s.gc_blobs:,} blobs / idle",
        "x idle", False, 2.0, absolute_target=True,
    )  # fmt: skip
    runs: dict[str, list[dict[str, object]]] = {}
    for rep in range(s.repeats):
        for side in order(rep):
            if side not in WORKERS:
                continue
            args = ["--workers", WORKERS[side], *bench.berth_args]
            result = bench.quiet_run(
                row, side, f"GC latency {side}",
                functools.partial(gc.latency, s.gc_blobs, s.gc_seconds, args),
            )  # fmt: skip
            if result["p99_ratio"] is None:
                row.errors.append(f"{side}: no idle latency measured")
                continue
            row.runs[side].append(float(result["p99_ratio"]))
            runs.setdefault(side, []).append(
                {k: result[k] for k in ("idle", "collecting", "queue_before", "queue_after")}
            )
            log(
                f"  GC latency {side}: p99 {result['collecting']['p99_ms']:.1f} ms collecting, "
                f"{result['idle']['p99_ms']:.1f} ms idle ({result['p99_ratio']:.2f}x); "
                f"queue {result['queue_before']} -> {result['queue_after']}"
            )
    row.details["runs"] = runs
    return [row]


# --------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run", description="Berth vs the reference registry, side by side."
    )
    p.add_argument("--quick", action="store_true", help="256 MiB blob, 3 s request-rate runs")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeatable or comma-separated): {', '.join(MEASUREMENTS)}",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const=str(BENCH_DIR / "results.json"),
        metavar="PATH",
        help="also write the results as JSON (default PATH: bench/results.json)",
    )
    p.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    p.add_argument(
        "--berth-target",
        choices=("berth", "reference"),
        default=os.environ.get("BENCH_BERTH_TARGET", "berth"),
        help="what runs in the Berth slot; 'reference' develops the harness (ratios ~1). "
        "Default: $BENCH_BERTH_TARGET or berth",
    )
    p.add_argument(
        "--berth-arg", action="append", default=[], help="extra argument for `berth serve`"
    )
    p.add_argument(
        "--berth-credentials",
        metavar="USER:PASSWORD",
        default=os.environ.get("BENCH_BERTH_CREDENTIALS"),
        help="sign in to Berth as this account when it asks (default: the first admin that "
        "tests/support/servers.py sets up); env BENCH_BERTH_CREDENTIALS",
    )
    p.add_argument("--repeats", type=int, help="runs per figure (default 3)")
    p.add_argument(
        "--mixed-seconds",
        type=float,
        help="length of the mixed load on each registry (default 60; 15 with --quick)",
    )
    p.add_argument(
        "--busy-retries",
        type=int,
        help="times to repeat a run during which other processes used >10%% of the CPUs "
        "(default 1)",
    )
    p.add_argument("--tmpdir", help="where the registries keep their data (default: $TMPDIR)")
    p.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = p.parse_args(argv)
    only = {n.strip() for item in args.only for n in item.split(",") if n.strip()}
    if unknown := only - set(MEASUREMENTS):
        p.error(f"unknown --only {', '.join(sorted(unknown))}; choose from {MEASUREMENTS}")
    args.wanted = only or set(MEASUREMENTS)
    if args.berth_credentials is not None:
        user, sep, password = args.berth_credentials.partition(":")
        if not sep:
            p.error("--berth-credentials takes USER:PASSWORD")
        args.berth_credentials = (user, password)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.make(args.quick, args.repeats, args.busy_retries, args.mixed_seconds)
    tools = ["curl", "wrk", "skopeo", "unshare", "docker-registry"]
    if "docker" in args.wanted:
        tools += ["docker", "dockerd"]
    if missing := [t for t in tools if not shutil.which(t)]:
        log(
            f"missing: {', '.join(missing)} (Debian packages curl wrk skopeo docker-registry "
            "docker.io)"
        )
        return 2
    load_start = os.getloadavg()[0]
    # SIGTERM (from make, CI, a timeout) unwinds like Ctrl-C: servers stop, files go.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-", dir=args.tmpdir))
    # (h) and (i) start Berths of their own: nothing to measure in the harness's check mode
    berth_runs = args.berth_target == "berth"
    bench = Bench({}, settings, tmp, args.berth_arg)
    rows: list[Row] = []
    exit_codes: dict[str, int] = {}
    berth_workers = 0
    try:
        try:
            bench.sides["reference"] = start_side("reference", "reference", tmp, [], None)
            for name in BERTH_SIDES:  # the defaults, and --workers 1 beside them
                bench.sides[name] = start_side(
                    name, args.berth_target, tmp, args.berth_arg, args.berth_credentials
                )
        except RuntimeError as e:
            log(
                f"{e}\n\ncould not start a registry (to check the harness alone, run it with "
                "--berth-target reference)"
            )
            return 2
        if args.wanted & {"upload", "download", "memory"}:
            log("== (a)(b)(e) blob upload, download, memory")
            with bench.background.phase("blobs"):
                rows += measure_blobs(bench, args.wanted)
        if "manifest" in args.wanted:
            log("== (c) manifest GET and HEAD")
            with bench.background.phase("manifests"):
                rows += measure_manifests(bench)
        if "skopeo" in args.wanted:
            log("== (d) skopeo push and pull")
            with bench.background.phase("skopeo"):
                rows += measure_skopeo(bench)
        if "docker" in args.wanted:
            log("== (f) docker pull")
            with bench.background.phase("docker"):
                rows += measure_docker(bench)
        if "mixed" in args.wanted:
            log(f"== (g) mixed load, {settings.mixed_seconds:g} s per registry")
            with bench.background.phase("mixed"):
                rows += measure_mixed(bench)
        if "proxy" in args.wanted and berth_runs:
            log("== (h) pull-through cache")
            rows += measure_proxy(bench)
        if "gc" in args.wanted and berth_runs:
            log("== (i) manifest GETs while the collector runs")
            rows += measure_gc(bench)
        if "memory" in args.wanted:
            after = Row(
                "memory-idle-after", "(e) idle RSS, largest serving process, after the run",
                "MiB", False, MEMORY_TARGET_MIB, absolute_target=True,
            )  # fmt: skip
            unused = Row("unused", "", "MiB", False, None)
            time.sleep(2)  # let the last load's connections close
            bench.wait_for_scans()
            for side in bench.sides.values():
                idle_memory(side, after, unused)
            rows.append(after)
        berth_workers = len(bench.sides["berth"].processes()[1])
    finally:
        for name, side in bench.sides.items():
            exit_codes[name] = side.server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    warnings = []
    for name, code in exit_codes.items():
        if code != 0 and bench.sides[name].kind == "berth":  # Distribution just dies of SIGTERM
            warnings.append(f"the {name} slot exited {code} on SIGTERM (expected 0)")
    for row in rows:
        for name in SIDES:
            busy = [f for f in row.other_cpu[name] if f > system.BUSY_FRACTION]
            if busy:
                warnings.append(
                    f"{row.key} {name}: {len(busy)} of {len(row.other_cpu[name])} runs kept "
                    f"while other processes used up to {max(busy):.0%} of the CPUs"
                )
    rows.sort(key=lambda r: ROW_ORDER.index(r.key))
    notes = []
    for row in rows:
        if row.key == "mixed-ops":
            for name in SIDES:
                d = row.details.get(name)
                if isinstance(d, dict):
                    notes.append(
                        f"mixed load, {name}: {d['pushes']} pushes, {d['pulls']} pulls, "
                        f"{d['gets']} manifest GETs ({d['read_auth']}), {d['error_count']} errors"
                    )
    cells = report.table(rows, "berth" if args.berth_target == "berth" else "berth(=ref)")
    result: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "berth_workers": berth_workers,
        "notes": notes,
        "mode": "quick" if args.quick else "full",
        "berth_target": args.berth_target,
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": system.machine_info(),
        "settings": asdict(settings),
        "exit_codes": exit_codes,
        "auth": {name: side.client.auth_kind for name, side in bench.sides.items()},
        "runs_repeated_because_busy": bench.retried,
        "background_load": {k: asdict(v) for k, v in bench.background.phases.items()},
        "warnings": warnings,
        "results": [r.to_json() for r in rows],
    }
    print()
    print(
        f"Berth vs the reference registry ({result['mode']} run, median of {settings.repeats}; "
        f"the Berth slot ran {args.berth_target}). Ratio > 1: Berth is better."
    )
    print(report.text_table(cells))
    print(
        f"1-minute load average: {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at "
        f"the end; Berth's defaults ran {berth_workers} serving processes"
    )
    for note in notes:
        print(note)
    for row in rows:
        for err in row.errors:
            print(f"ERROR {row.key}: {err}")
    for warning in warnings:
        print(f"WARNING: {warning}")
    for phase, usage in bench.background.phases.items():
        print(f"during {phase}: {usage.describe()}")
    print(f"{bench.retried} runs repeated because the machine was busy; {result['elapsed_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    if args.record:
        report.record(BENCH_DIR / "RESULTS.md", result, cells)
        log(f"appended to {BENCH_DIR / 'RESULTS.md'}")
    failed = any(r.errors for r in rows) or (args.check and any(r.ok is False for r in rows))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted: both registries stopped, temporary files removed")
        sys.exit(130)

"""Berth measured side by side against the reference registry (CNCF Distribution 2.8).

    python -m bench.run [--quick] [--only NAME ...] [--json [PATH]] [--record]
                        [--berth-target berth|reference] [--repeats N] [--check]

Starts both registries on loopback (each in its own temp dir), then runs every measurement on
one registry at a time, never both loads at once, alternating which goes first on each repeat.
Figures are the median of `--repeats` runs (default 3). Ratios are always "higher is better":
Berth/reference for rates, reference/Berth for times. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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

from bench import image as oci  # noqa: E402
from bench import load, report, system  # noqa: E402
from bench.report import SIDES, Row  # noqa: E402
from tests.support.servers import Server, start_berth, start_reference_registry  # noqa: E402

T = TypeVar("T")
MiB = 1024 * 1024
MEASUREMENTS = ("upload", "download", "manifest", "skopeo", "memory")
ROW_ORDER = (
    "upload", "download", "manifest-get", "manifest-head", "skopeo-push", "skopeo-pull", "memory",
)  # fmt: skip
SKOPEO_CACHE_DIR = Path("/var/lib/containers/cache")
SKOPEO_CACHE_FILE = SKOPEO_CACHE_DIR / "blob-info-cache-v1.boltdb"
MEMORY_TARGET_MIB = 100.0


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

    @classmethod
    def make(cls, quick: bool, repeats: int | None, busy_retries: int | None) -> Settings:
        s = cls(blob_bytes=256 * MiB, wrk_seconds=3.0, warmup_seconds=1.0) if quick else cls()
        if repeats is not None:
            s.repeats = repeats
        if busy_retries is not None:
            s.busy_retries = busy_retries
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
    """Alternate which registry goes first, so warm caches and drift favour neither."""
    return SIDES if rep % 2 == 0 else SIDES[::-1]


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

    def skopeo_creds(self, flag: str) -> list[str]:
        if self.client.auth_kind == "anonymous" or self.credentials is None:
            return []
        return [f"{flag}={self.credentials[0]}:{self.credentials[1]}"]


def start_side(
    name: str, kind: str, tmp: Path, berth_args: list[str], credentials: tuple[str, str] | None
) -> Side:
    if kind == "berth":
        data_dir = tmp / f"{name}-data"
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
    background: system.BackgroundLoad = field(default_factory=system.BackgroundLoad)
    retried: int = 0

    def quiet_run(self, row: Row, side: str, label: str, fn: Callable[[], T]) -> T:
        """Run one timed measurement; run it again if other processes took the CPUs meanwhile.

        `fn` must measure something new each call (fresh content, fresh repository).
        """
        for attempt in range(self.settings.busy_retries + 1):
            system.settle()
            with self.background.watch() as usage:
                value = fn()
            if not usage.busy:
                break
            if attempt < self.settings.busy_retries:
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
    mem = Row(
        "memory", "(e) RSS during the uploads", "MiB", False, MEMORY_TARGET_MIB,
        absolute_target=True,
    )  # fmt: skip
    up.details["bytes"] = down.details["bytes"] = size
    rows = [r for r in (up, down, mem) if r.key in wanted]
    log(f"writing a {size_text} random blob")
    blob = BlobFile(bench.tmp / "blob.bin", size)
    stored: dict[str, tuple[str, str]] = {}  # side -> (repo, digest) of a blob it holds
    try:
        if wanted & {"upload", "memory"}:
            idle = {name: system.idle_rss(side.pid) for name, side in bench.sides.items()}
            peak = dict(idle)

            def upload(side: Side) -> tuple[float, int]:
                digest = blob.fresh()
                repo = f"bench/blob{blob.count}"
                with system.RssSampler(side.pid, s.rss_interval) as sampler:
                    seconds = curl_upload(side, repo, blob.path, digest, size)
                stored[side.name] = (repo, digest)
                rss = max(sampler.samples)
                peak[side.name] = max(peak[side.name], rss)  # retried runs count here too
                return seconds, rss

            for rep in range(s.repeats):
                for name in order(rep):
                    label = f"upload run {rep + 1}/{s.repeats} {name}"
                    seconds, rss = bench.quiet_run(
                        up, name, label, functools.partial(upload, bench.sides[name])
                    )
                    up.runs[name].append(size / seconds / 1e6)
                    log(
                        f"  {label}: {size / seconds / 1e6:7.1f} MB/s ({seconds:.2f} s), "
                        f"RSS peak {rss / MiB:.1f} MiB"
                    )
            for name in SIDES:
                mem.details[name] = {
                    "idle_mib": idle[name] / MiB,
                    "peak_mib": peak[name] / MiB,
                    "delta_mib": (peak[name] - idle[name]) / MiB,
                }
                mem.runs[name].append((peak[name] - idle[name]) / MiB)
            mem.details["sample_interval_s"] = s.rss_interval
            mem.details["pid_tree"] = "the server's PID and its descendants, VmRSS summed"
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


def measure_manifests(bench: Bench) -> list[Row]:
    s = bench.settings
    repo, tag = "bench/small", "latest"
    get = Row(
        "manifest-get", f"(c) manifest GET, wrk -t{s.wrk_threads} -c{s.connections}",
        "req/s", True, 1.2,
    )  # fmt: skip
    head = Row(
        "manifest-head", f"(c) manifest HEAD, bench.load -c{s.connections}", "req/s", True, 1.2
    )
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
        get.details["manifest_bytes"] = head.details["manifest_bytes"] = len(small.manifest)
    except Exception as e:
        for row in (get, head):
            row.errors.append(f"{type(e).__name__}: {e}")
        log(f"  manifest setup failed: {e}")
        return [get, head]
    Tool = Callable[[str, Settings, float, dict[str, str]], dict[str, object]]
    tools: list[tuple[Row, Tool]] = [
        (get, wrk_get),
        (head, load_head),
    ]
    for row, tool in tools:
        try:
            for name in SIDES:  # warm-up, not counted
                tool(urls[name], s, s.warmup_seconds, bench.sides[name].auth(repo, "pull"))
            for rep in range(s.repeats):
                for name in order(rep):
                    label = f"{row.key} run {rep + 1}/{s.repeats} {name}"
                    auth = bench.sides[name].auth(
                        repo, "pull"
                    )  # tokens last minutes: get a new one
                    data = bench.quiet_run(
                        row,
                        name,
                        label,
                        functools.partial(tool, urls[name], s, s.wrk_seconds, auth),
                    )
                    rps = float(data["rps"])  # type: ignore[arg-type]
                    row.runs[name].append(rps)
                    row.details.setdefault(name, []).append(data)  # type: ignore[union-attr]
                    log(f"  {label}: {rps:8.1f} req/s")
        except Exception as e:
            row.errors.append(f"{type(e).__name__}: {e}")
            log(f"  {row.key} failed: {e}")
    return [get, head]


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
            seconds = skopeo_isolated(
                [
                    "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
                    *side.skopeo_creds("--dest-creds"), f"oci:{layout}:{tag}", f"docker://{side.server.host}/{repo}:{tag}",
                ]
            )  # fmt: skip
        finally:
            shutil.rmtree(layout)
        push.details["image_bytes"] = img.size
        return seconds, repo, img

    def pull_once(side: Side, repo: str, img: oci.Image) -> float:
        dest = bench.tmp / "pulled"
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
        if got != {*img.blobs, img.manifest_digest}:
            raise RuntimeError(f"{side.name}: the pulled image differs from the pushed one")
        return seconds

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
    settings = Settings.make(args.quick, args.repeats, args.busy_retries)
    tools = ("curl", "wrk", "skopeo", "unshare", "docker-registry")
    if missing := [t for t in tools if not shutil.which(t)]:
        log(f"missing: {', '.join(missing)} (Debian packages curl wrk skopeo docker-registry)")
        return 2
    # SIGTERM (from make, CI, a timeout) unwinds like Ctrl-C: servers stop, files go.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-", dir=args.tmpdir))
    bench = Bench({}, settings, tmp)
    rows: list[Row] = []
    exit_codes: dict[str, int] = {}
    try:
        try:
            bench.sides["reference"] = start_side("reference", "reference", tmp, [], None)
            bench.sides["berth"] = start_side(
                "berth", args.berth_target, tmp, args.berth_arg, args.berth_credentials
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
    cells = report.table(rows, "berth" if args.berth_target == "berth" else "berth(=ref)")
    result: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
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

"""Where the CPU time of one manifest GET goes: a sampling profile of one serving process.

    python -m bench.cpu_profile [--workers 1] [--seconds 15] [--rate 250] [--auth bearer|basic]
                            [--connections 32] [--record]

Starts Berth (`--workers 1` by default, so one process holds every request), pushes a small
image, and fetches a bearer token the way `docker` does (`/token?account=..&scope=repository:
bench/small:pull&service=..` with Basic credentials). Then:

1. a clean run: `wrk` for `--seconds` on the manifest, counting requests and the CPU the
   server's process tree used (`/proc/PID/stat` and `/proc/PID/task/*/stat`): CPU
   microseconds per request, and the share the event-loop thread took;
2. a profiled run: the same load while `py-spy record -f raw` samples every thread of the
   serving process (pip install py-spy; not a dependency of Berth).

Each sample (an on-CPU stack; py-spy leaves idle threads out) is put in one category by its
innermost frame that names one (see CATEGORIES), and the categories' shares of the samples are
turned into microseconds per request with the CPU per request of the clean run. Worker-thread
samples (trio's `to_thread` pool) are split into the metadata read and the rest of the hop.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import image as oci  # noqa: E402
from bench import system  # noqa: E402
from tests.support.servers import start_berth  # noqa: E402

# Innermost matching frame decides; the first pattern that matches a frame wins.
# py-spy names a frame "function (path/relative/to/site-packages.py:line)".
CATEGORIES: list[tuple[str, str]] = [
    ("logging (access log, JSON lines)", r"\((logging/|json/|appliance/runtime/logs)"),
    ("metrics", r"\((prometheus_client/|appliance/runtime/metrics)"),
    ("h11 (HTTP/1.1 parsing and framing)", r"\(h11/"),
    ("thread hops (to_thread, thread cache)", r"\(trio/(_threads|_core/_thread_cache)"),
    ("hypercorn (server, protocol, ASGI glue)", r"\(hypercorn/"),
    ("guard (credential check)", r"\((appliance/api/guard|appliance/auth/|jwt/|joserfc/)"),
    ("metadata read (cache, store)", r"\((appliance/metadata/|appliance/registry/|sqlite3/)"),
    (
        "middleware (ops: request id, limits)",
        r"\((appliance/api/middleware|appliance/operations|appliance/server|appliance/app)",
    ),
    ("response (API dispatch, headers, body)", r"\(appliance/api/"),
    ("trio: waiting for sockets (epoll)", r"\(trio/_core/_io_epoll|get_events"),
    # the send()/recv() system calls themselves: the kernel's loopback TCP work
    ("socket send/recv (kernel)", r"_nonblocking_helper \(trio/_socket\.py"),
    ("trio: scheduler, tasks", r"\(trio/|\(socket\.py|\(selectors"),
]
WORKER_THREAD = r"Thread\._bootstrap|threading\.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime+stime of the whole process tree, of the thread whose TID is `pid`: the event loop)."""
    total = 0
    for p in system.proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    try:
        main = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        loop = int(main[11]) + int(main[12])
    except OSError:
        loop = 0
    return total, loop


def wrk(url: str, seconds: float, connections: int, authorization: str) -> dict[str, object]:
    out = subprocess.run(
        [
            "wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
            "-s", str(BENCH_DIR / "manifest_get.lua"), url,
        ],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
        env={**os.environ, "BENCH_AUTHORIZATION": authorization},
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH_JSON "))
    data: dict[str, object] = json.loads(line.removeprefix("BENCH_JSON "))
    errors: dict[str, int] = data["errors"]  # type: ignore[assignment]
    if sum(errors.values()):
        raise RuntimeError(f"wrk: errors {errors}")
    return data


def classify(stack: list[str]) -> str:
    if stack and re.search(WORKER_THREAD, stack[0]):
        joined = ";".join(stack)
        if re.search(r"\(appliance/runtime/logs", joined):  # the access log's writer thread
            return "logging (access log, JSON lines)"
        if re.search(r"\((appliance/metadata/|appliance/registry/|sqlite3/)", joined):
            return "metadata read (cache, store)"
        return "thread hops (to_thread, thread cache)"
    for frame in reversed(stack):
        for name, pattern in CATEGORIES:
            if re.search(pattern, frame):
                return name
    return "other (Python start-up frames, unknown)"


LOOP, OTHERS = "event-loop thread", "other threads"


def breakdown(raw: Path) -> tuple[dict[str, collections.Counter[str]], int, dict[str, int]]:
    """Samples per thread kind and category, total samples, samples per thread kind; logs
    each category's most frequent innermost frames, to check the categories by eye."""
    counts: dict[str, collections.Counter[str]] = {
        LOOP: collections.Counter(),
        OTHERS: collections.Counter(),
    }
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    threads: dict[str, int] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, n_text = line.rstrip().rpartition(" ")
        if not stack_text or not n_text.isdigit():
            continue
        n = int(n_text)
        stack = stack_text.split(";")
        total += n
        category = classify(stack)
        kind = OTHERS if re.search(WORKER_THREAD, stack[0]) else LOOP
        counts[kind][category] += n
        leaves[category][stack[-1]] += n
        threads[kind] += n
    for category, frames in leaves.items():
        top = "; ".join(f"{f} {n}" for f, n in frames.most_common(4))
        log(f"  {category}: {top}")
    return counts, total, dict(threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.cpu_profile", description=__doc__.split("\n")[0]
    )
    p.add_argument("--workers", default="1", help="server.workers of the profiled Berth")
    p.add_argument("--seconds", type=float, default=15.0, help="each of the two wrk runs")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--auth", choices=("bearer", "basic"), default="bearer")
    p.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    p.add_argument("--raw", help="also keep py-spy's raw profile (collapsed stacks) here")
    p.add_argument(
        "--nonblocking",
        action="store_true",
        help="py-spy --nonblocking: less overhead, but sleeping threads may be sampled as busy",
    )
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() or not shutil.which("wrk"):
        log("needs py-spy (pip install py-spy) and wrk (Debian package wrk)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-profile-"))
    load_start = os.getloadavg()[0]
    server = start_berth(tmp / "data", args=["--workers", args.workers])
    try:
        client = oci.RegistryClient(server.url, server.credentials)
        client.push_image("bench/small", "latest", oci.build_image(1, 4096))
        headers = (
            client.auth_headers("bench/small", "pull")
            if args.auth == "bearer"
            else client.basic_headers()
        )
        authorization = headers["Authorization"]
        url = f"{server.url}/v2/bench/small/manifests/latest"
        serving = system.proc_tree(server.proc.pid)[1:] or [server.proc.pid]
        target = serving[0]
        wrk(url, 3, args.connections, authorization)  # warm-up
        log(f"clean run: {args.seconds:g} s of wrk on {url}")
        bg = system.BackgroundLoad()
        hz = os.sysconf("SC_CLK_TCK")
        with bg.watch() as usage:
            t0, loop0 = cpu_ticks(server.proc.pid)
            clean = wrk(url, args.seconds, args.connections, authorization)
            t1, loop1 = cpu_ticks(server.proc.pid)
        requests = int(clean["requests"])  # type: ignore[call-overload]
        seconds = int(clean["duration_us"]) / 1e6  # type: ignore[call-overload]
        cpu_us = (t1 - t0) / hz * 1e6 / requests
        loop_share = (loop1 - loop0) / max(1, t1 - t0)
        log(
            f"  {requests / seconds:.0f} req/s, {cpu_us:.0f} us CPU per request; {usage.describe()}"
        )
        log(f"profiled run: py-spy on pid {target} at {args.rate} Hz")
        raw = tmp / "profile.txt"
        load_proc = subprocess.Popen(
            [
                "wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds + 4:g}s",
                "-s", str(BENCH_DIR / "manifest_get.lua"), url,
            ],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "BENCH_AUTHORIZATION": authorization},
        )  # fmt: skip
        time.sleep(2)
        subprocess.run(
            [
                spy, "record", *(["--nonblocking"] if args.nonblocking else []),
                "-p", str(target), "-d", f"{args.seconds:g}",
                "-r", str(args.rate), "-f", "raw", "-o", str(raw),
            ],
            capture_output=True, check=True, timeout=args.seconds + 60,
        )  # fmt: skip
        load_proc.wait(timeout=60)
        counts, total, threads = breakdown(raw)
        if args.raw:
            shutil.copyfile(raw, args.raw)
    finally:
        server.stop()
    load_end = os.getloadavg()[0]
    # py-spy also samples a thread that is runnable but waiting for a CPU (the machine is
    # shared) or that wakes briefly from a short sleep, so its share of samples per thread is
    # not its share of CPU: each thread kind's samples split the CPU that kind really used.
    cpu_of = {LOOP: cpu_us * loop_share, OTHERS: cpu_us * (1 - loop_share)}
    per_request: collections.Counter[str] = collections.Counter()
    for kind, by_category in counts.items():
        kind_total = sum(by_category.values())
        for name, n in by_category.items():
            per_request[name] += cpu_of[kind] * n / kind_total
    rows = [f"| {name} | {us:.0f} | {us / cpu_us:.0%} |" for name, us in per_request.most_common()]
    thread_text = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(threads.items()))
    text = "\n".join(
        [
            f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: where a manifest GET's CPU goes "
            f"(`python -m bench.cpu_profile --workers {args.workers} --auth {args.auth}`)",
            "",
            f"- Machine: `nproc` {len(os.sched_getaffinity(0))}, shared; 1-minute load average "
            f"{load_start:.2f} at the start, {load_end:.2f} at the end; during the clean run "
            f"{usage.describe()}",
            f"- Clean run: wrk -t2 -c{args.connections} {args.seconds:g} s, {args.auth}: "
            f"{requests / seconds:.0f} req/s, {cpu_us:.0f} us of server CPU per request "
            f"(event-loop thread {loop_share:.0%} of it)",
            f"- Profile: py-spy {args.rate} Hz{' --nonblocking' if args.nonblocking else ''}, "
            f"{total} on-CPU samples "
            f"({thread_text}); each sample goes to the innermost frame that names a category; "
            "each thread's samples share out the CPU that thread used in the clean run",
            "",
            "| where | us of CPU per request | share |",
            "|---|---|---|",
            *rows,
            "",
        ]
    )
    print(text)
    if args.record:
        with (BENCH_DIR / "RESULTS.md").open("a") as f:
            f.write("\n" + text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

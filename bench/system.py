"""What the benchmark reads from the machine: RSS of a process tree, CPU used by everything
else (so a busy shared machine is noticed, not silently measured), machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

PF_KTHREAD = 0x00200000
# Other processes using more than this share of all CPUs during a timed run: run it again.
BUSY_FRACTION = 0.10


def settle() -> None:
    """Flush dirty pages, so one run's disk writeback is not billed to the next run."""
    os.sync()


def children(pid: int) -> list[int]:
    """The living child processes of `pid` (of any of its threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out.extend(int(c) for c in (task / "children").read_text().split())
    return out


def cmdline(pid: int) -> list[str]:
    """The command line of `pid` (empty once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_tree(pid: int) -> list[int]:
    """`pid` and all its living descendants (through /proc/PID/task/TID/children)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    todo.extend(int(c) for c in (task / "children").read_text().split())
    return pids


def process_rss_bytes(pid: int) -> int:
    """VmRSS of one process (0 once it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss_bytes(pid: int) -> int:
    """VmRSS of `pid` and its living descendants, summed."""
    return sum(process_rss_bytes(p) for p in proc_tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by `pid` and its living descendants, summed."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command name (which may hold spaces): utime and stime are the
            # 12th and 13th.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def children_cpu_seconds() -> float:
    """CPU time used by this process's finished children (the clients a bench ran)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def idle_rss_per_process(pid: int, seconds: float = 0.5, interval: float = 0.05) -> dict[int, int]:
    """Median RSS of each process of a tree (the server and its workers) over a quiet window."""
    samples: dict[int, list[int]] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in proc_tree(pid):
            if rss := process_rss_bytes(p):
                samples.setdefault(p, []).append(rss)
        time.sleep(interval)
    return {p: int(statistics.median(v)) for p, v in samples.items()}


class PerProcessPeak:
    """The largest RSS each process of a tree reached while in a `with`, sampled every
    `interval` seconds in a thread (processes that appear meanwhile are sampled too)."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for p in proc_tree(self.pid):
            rss = process_rss_bytes(p)
            self.peaks[p] = max(self.peaks.get(p, 0), rss)

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PerProcessPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --------------------------------------------------------------------------- background load


@dataclass(frozen=True)
class _Proc:
    name: str
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def _user_processes() -> dict[tuple[int, int], _Proc]:
    """User-space processes keyed by (pid, start time), so a reused pid is a new process."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            f = raw[raw.rindex(")") + 2 :].split()  # f[0] is field 3 of proc(5)
            if int(f[6]) & PF_KTHREAD:
                continue
            ticks = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            procs[(int(entry.name), int(f[19]))] = _Proc(name, int(f[1]), ticks)
    return procs


@dataclass
class Usage:
    """CPU used by processes outside the benchmark's tree during one window."""

    seconds: float = 0.0
    other_cpu_fraction: float = 0.0  # of all CPUs
    top: dict[str, float] = field(default_factory=dict)  # process name -> CPUs used

    @property
    def busy(self) -> bool:
        return self.other_cpu_fraction > BUSY_FRACTION

    def describe(self) -> str:
        top = ", ".join(f"{k} {v:.2f}" for k, v in self.top.items()) or "none"
        return f"other processes used {self.other_cpu_fraction:.0%} of the CPUs ({top})"


class BackgroundLoad:
    """Measures the CPU that other processes (tests, builds, editors) take while we measure.

    Counts user-space processes outside this process's tree: for each, the growth of its CPU
    time including reaped children. A child that exits during the window hands its whole CPU
    time to its parent; what it had used before the window is taken back off. Kernel threads
    (disk writeback, which our own uploads cause) are not counted.
    """

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.ncpu = len(os.sched_getaffinity(0))
        self.phases: dict[str, Usage] = {}

    def _usage(
        self, before: dict[tuple[int, int], _Proc], after: dict[tuple[int, int], _Proc], t: float
    ) -> Usage:
        ours = set(proc_tree(os.getpid()))
        alive = {key[0]: p for key, p in after.items()}
        parent_then = {key[0]: p.ppid for key, p in before.items()}
        used: dict[str, float] = {}
        for key, p in after.items():
            if key[0] in ours:
                continue
            prev = before.get(key)
            used[p.name] = used.get(p.name, 0.0) + (p.ticks - (prev.ticks if prev else 0))
        # A process that exited during the window hands its whole CPU time (own and reaped
        # children's) up to the nearest living ancestor: take back what it had used before.
        for key, p in before.items():
            if key in after:
                continue
            ancestor, hops = p.ppid, 0
            while ancestor not in alive and ancestor in parent_then and hops < 64:
                ancestor, hops = parent_then[ancestor], hops + 1
            if ancestor in alive and ancestor not in ours:
                name = alive[ancestor].name
                used[name] = used.get(name, 0.0) - p.ticks
        per_cpu = {k: v / self.hz / t for k, v in used.items() if v > 0} if t > 0 else {}
        top = dict(sorted(per_cpu.items(), key=lambda kv: -kv[1])[:4])
        total = sum(per_cpu.values()) / self.ncpu
        return Usage(round(t, 2), round(total, 3), {k: round(v, 2) for k, v in top.items()})

    @contextlib.contextmanager
    def watch(self) -> Iterator[Usage]:
        """`with bg.watch() as usage:` fills `usage` in when the block ends."""
        usage = Usage()
        before, t0 = _user_processes(), time.monotonic()
        try:
            yield usage
        finally:
            got = self._usage(before, _user_processes(), time.monotonic() - t0)
            usage.seconds, usage.other_cpu_fraction, usage.top = (
                got.seconds,
                got.other_cpu_fraction,
                got.top,
            )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self.watch() as usage:
            yield
        self.phases[name] = usage


# --------------------------------------------------------------------------- machine facts


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def checkout() -> str:
    """The commit of the tree being measured ("" outside a git checkout): an editable install
    keeps the version of the day it was installed, so the commit is what places a run."""
    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    try:
        head, status = (
            subprocess.run([*git, *args], capture_output=True, text=True, timeout=10, check=False)
            for args in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "-uno"])
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if head.returncode != 0:
        return ""
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def machine_info() -> dict[str, object]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_total = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem_total = f"{kib / 1024 / 1024:.1f} GiB"
    try:
        berth_version = metadata.version("berth")
    except metadata.PackageNotFoundError:
        berth_version = "?"
    if commit := checkout():
        berth_version += f" at {commit}"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": mem_total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "reference": tool_version(["docker-registry", "--version"]),
        "berth": berth_version,
        "curl": tool_version(["curl", "--version"]).split(" (")[0],
        "wrk": tool_version(["wrk", "--version"]).split(" Copyright")[0],
        "skopeo": tool_version(["skopeo", "--version"]),
        "docker": tool_version(["docker", "--version"]),
    }

"""Pull-through cache: a pull through Berth's proxy namespace against a direct pull from the
upstream (the reference registry, CNCF Distribution 2.8).

    python -m bench.proxy [--layers N] [--layer-mib M] [--repeats R] [--workers auto|N] [--record]

The upstream holds one image of N random layers. Each repeat times, with skopeo (a fresh blob
info cache per pull, writing an OCI layout):

- direct: a pull from the upstream itself;
- cold:   a pull through a Berth whose cache is empty (a new Berth per repeat), so every blob
          is fetched upstream while it is streamed to the client and stored;
- warm:   the same pull again through that Berth, now served from its cache.

Figures are medians; ratios are "higher is better" (direct time / Berth time). Targets: cold
>= 0.9x, warm >= 1x. `--record` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import image as oci  # noqa: E402
from bench import system  # noqa: E402
from tests.support.clients import Skopeo  # noqa: E402
from tests.support.servers import (  # noqa: E402
    ADMIN,
    ADMIN_PASSWORD,
    start_berth,
    start_reference_registry,
)

CREDS = f"{ADMIN}:{ADMIN_PASSWORD}"


@dataclass
class Pull:
    """One timed pull: its wall time and the CPU seconds each party used during it."""

    seconds: float
    client: float  # skopeo
    upstream: float
    berth: float = 0.0


def timed_pull(
    skopeo: Skopeo, src: str, dest: Path, creds: str | None, upstream: int, berth: int | None
) -> Pull:
    shutil.rmtree(dest, ignore_errors=True)
    cpu = (system.children_cpu_seconds(), system.tree_cpu_seconds(upstream))
    berth_cpu = system.tree_cpu_seconds(berth) if berth is not None else 0.0
    started = time.perf_counter()
    skopeo.copy(src, f"oci:{dest}:t", creds=creds, preserve_digests=True)
    seconds = time.perf_counter() - started
    return Pull(
        seconds,
        system.children_cpu_seconds() - cpu[0],
        system.tree_cpu_seconds(upstream) - cpu[1],
        system.tree_cpu_seconds(berth) - berth_cpu if berth is not None else 0.0,
    )


def median_pull(pulls: list[Pull]) -> Pull:
    return Pull(
        *(statistics.median(getattr(p, f) for p in pulls) for f in Pull.__dataclass_fields__)
    )


def cpu(pull: Pull) -> str:
    return f"{pull.client:.2f}, {pull.upstream:.2f}, {pull.berth:.2f}"


@dataclass
class Pulls:
    """Every timed pull of one measurement: direct from the upstream, then per Berth setting
    (its `server.workers`) cold through an empty cache and warm from it."""

    total: int  # bytes of the image's blobs
    direct: list[Pull]
    cold: dict[str, list[Pull]]
    warm: dict[str, list[Pull]]


def measure(
    tmp: Path,
    layers: int,
    layer_mib: int,
    repeats: int,
    workers: list[str],
    berth_args: list[str] | None = None,
) -> Pulls:
    """A reference registry as the upstream, holding one image of `layers` random layers; each
    repeat pulls it directly, then through a new Berth (one per `workers` setting, with
    `berth_args`) twice: cold, then warm."""
    upstream = start_reference_registry(tmp / "upstream")
    try:
        image = oci.build_image(layers, layer_mib << 20)
        layout = oci.write_layout(image, tmp / "layout", "1")
        skopeo = Skopeo(tmp / "skopeo")
        skopeo.copy(f"oci:{layout}:1", f"docker://{upstream.host}/bench/image:1")
        pulls = Pulls(sum(len(b) for b in image.blobs.values()), [], {}, {})
        up_pid = upstream.proc.pid
        out = tmp / "out"
        src = f"docker://{upstream.host}/bench/image:1"
        for i in range(repeats):
            pulls.direct.append(timed_pull(skopeo, src, out, None, up_pid, None))
            times = [f"direct {pulls.direct[-1].seconds:.2f}s"]
            for setting in workers:
                data = tmp / f"berth-{i}-{setting}"
                berth = start_berth(
                    data,
                    args=["--workers", setting, *(berth_args or [])],
                    env={"BERTH_PROXY_UPSTREAMS": f"up={upstream.url}"},
                )
                try:
                    through = f"docker://{berth.host}/up/bench/image:1"
                    skopeo.login(berth.host, ADMIN, ADMIN_PASSWORD)
                    pid = berth.proc.pid
                    cold = timed_pull(skopeo, through, out, CREDS, up_pid, pid)
                    warm = timed_pull(skopeo, through, out, CREDS, up_pid, pid)
                finally:
                    berth.stop()
                    shutil.rmtree(data, ignore_errors=True)
                pulls.cold.setdefault(setting, []).append(cold)
                pulls.warm.setdefault(setting, []).append(warm)
                times.append(
                    f"workers {setting}: cold {cold.seconds:.2f}s warm {warm.seconds:.2f}s"
                )
            print(f"pull-through {i + 1}: {', '.join(times)}", file=sys.stderr, flush=True)
        return pulls
    finally:
        upstream.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--layer-mib", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", default="auto", help="Berth's server.workers (default: its default, auto)"
    )
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="berth-bench-proxy-") as tmp_name:
        pulls = measure(Path(tmp_name), args.layers, args.layer_mib, args.repeats, [args.workers])
    total = pulls.total
    direct, cold, warm = pulls.direct, pulls.cold[args.workers], pulls.warm[args.workers]
    dp, cp, wp = (median_pull(x) for x in (direct, cold, warm))
    d, c, w = dp.seconds, cp.seconds, wp.seconds
    info = system.machine_info()
    mib = total / (1 << 20)
    lines = [
        f"## {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC: pull-through cache "
        "(`python -m bench.proxy`)",
        "",
        f"- Machine: `nproc` {info['nproc']}, {info['cpu']}, {info['memory']}; "
        f"Python {info['python']}; upstream: {info['reference']}; {info['skopeo']}",
        f"- Image: {args.layers} layers of {args.layer_mib} MiB random bytes ({mib:.0f} MiB); "
        f"skopeo copy to an OCI layout, fresh blob info cache; median of {args.repeats}; "
        f"Berth with server.workers = {args.workers}",
        "",
        "| pull | s | MB/s | ratio (direct / this) | target |  | CPU s: skopeo, upstream, Berth |",
        "|---|---|---|---|---|---|---|",
        f"| direct from upstream | {d:.2f} | {total / d / 1e6:.0f} |  |  |  | {cpu(dp)} |",
        f"| cold, through Berth's cache | {c:.2f} | {total / c / 1e6:.0f} | {d / c:.2f}x "
        f"| >= 0.9x | {'ok' if d / c >= 0.9 else 'MISSED'} | {cpu(cp)} |",
        f"| warm, from Berth's cache | {w:.2f} | {total / w / 1e6:.0f} | {d / w:.2f}x "
        f"| >= 1x | {'ok' if d / w >= 1 else 'MISSED'} | {cpu(wp)} |",
        "",
        f"CPU seconds are medians over the pulls, of every process of each party. All three "
        f"share {info['nproc']} CPUs: a pull cannot take less than the sum of its parties' CPU "
        f"time divided by the CPUs (cold: {(cp.client + cp.upstream + cp.berth):.2f} CPU s, "
        f"at least {(cp.client + cp.upstream + cp.berth) / int(str(info['nproc'])):.2f} s).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with (BENCH_DIR / "RESULTS.md").open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()

"""The command line's own costs: `berth --help` start-up time, the resident memory of an idle
`berth serve --workers 2` supervisor, and a dump of every command's `--help` (to compare the
command line before and after a change to its structure).

```
.venv/bin/python -m bench.cli                        # both figures, medians
.venv/bin/python -m bench.cli --dump-help FILE       # every command's --help, in order
.venv/bin/python -m bench.cli --baseline DIR         # also the same figures for the `appliance`
                                                     # package in DIR (git archive REV appliance)
```

Runs alternate between the two trees, so that a busy machine slows both alike; CPU time (user +
system) is reported beside wall time, being less sensitive to the load of others.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.system import tree_rss_bytes

BERTH = Path(sys.executable).with_name("berth")


def help_texts() -> list[tuple[str, str]]:
    """(command path, its --help output) for `berth` and every command below it, hidden ones
    too, depth first in name order."""
    import click  # noqa: PLC0415
    from click.testing import CliRunner  # noqa: PLC0415

    from appliance.cli import main  # noqa: PLC0415

    out: list[tuple[str, str]] = []
    runner = CliRunner()

    def walk(path: list[str], command: click.Command, ctx: click.Context) -> None:
        result = runner.invoke(main, [*path, "--help"], prog_name="berth")
        out.append((" ".join(["berth", *path]), f"exit {result.exit_code}\n{result.output}"))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk([*path, name], sub, click.Context(sub, parent=ctx, info_name=name))

    walk([], main, click.Context(main, info_name="berth"))
    return out


def dump_help(path: Path) -> int:
    texts = help_texts()
    path.write_text("".join(f"==== {name}\n{text}\n" for name, text in texts))
    return len(texts)


def _env(tree: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if tree is not None:  # its `appliance` package comes first on the path
        env["PYTHONPATH"] = str(tree)
    return env


def help_seconds(tree: Path | None) -> tuple[float, float]:
    """(wall, CPU) seconds of one `berth --help` in a new interpreter."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run([BERTH, "--help"], check=True, stdout=subprocess.DEVNULL, env=_env(tree))
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu


def supervisor_rss(settle: float, tree: Path | None) -> tuple[int, int]:
    """(RSS of the supervisor alone, RSS of the whole tree) of an idle `berth serve --workers 2`,
    `settle` seconds after its workers are serving."""
    with tempfile.TemporaryDirectory(prefix="berth-bench-cli-") as tmp:
        proc = subprocess.Popen(
            [BERTH, "serve", "--listen", "127.0.0.1:0", "--data-dir", tmp, "--workers", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env=_env(tree),
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "listening on" in line:
                    break
            else:
                raise RuntimeError("berth serve ended before listening")
            time.sleep(settle)
            alone = tree_rss_bytes(proc.pid) - sum(
                tree_rss_bytes(int(c)) for c in _children(proc.pid)
            )
            return alone, tree_rss_bytes(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def _children(pid: int) -> list[str]:
    found: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend((task / "children").read_text().split())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dump-help", type=Path, metavar="FILE")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="tree holding appliance/")
    parser.add_argument("--runs", type=int, default=15, help="`berth --help` runs")
    parser.add_argument("--serves", type=int, default=3, help="`berth serve` starts")
    args = parser.parse_args()
    if args.dump_help:
        print(f"{dump_help(args.dump_help)} commands written to {args.dump_help}")
        return
    trees: dict[str, Path | None] = {"this checkout": None}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():
            times[name].append(help_seconds(tree))
    rss: dict[str, list[tuple[int, int]]] = {name: [] for name in trees}
    for _ in range(args.serves):
        for name, tree in trees.items():
            rss[name].append(supervisor_rss(3.0, tree))
    print(f"load average {os.getloadavg()[0]:.1f}; medians of {args.runs} and {args.serves} runs")
    for name in trees:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        alone = statistics.median(r[0] for r in rss[name]) / 2**20
        tree_mib = statistics.median(r[1] for r in rss[name]) / 2**20
        print(
            f"{name}: berth --help {wall:.3f} s wall, {cpu:.3f} s CPU; idle serve --workers 2: "
            f"supervisor {alone:.1f} MiB, whole tree {tree_mib:.1f} MiB"
        )


if __name__ == "__main__":
    main()

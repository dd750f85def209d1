"""Upgrade downtime: `python -m bench.upgrade [--runs N] [--record] [--from-source]`.

Berth of an earlier commit (the first with today's schema layout) serves on a fixed port with
images pushed; a client asks `GET /v2/` every 2 ms. The upgrade is done the way the package does
it: `berth ctl reconfigure` of the current version runs while the old one serves (pre-upgrade
backup, migrations), then the old process gets SIGTERM and the new one starts on the same port
(what `systemctl restart` does). Downtime is the time from the last answer of the old version
to the first answer of the new one; the first request of the new one must find the image.

The reference registry (Debian's `docker-registry`) restarted the same way (SIGTERM, start on
the same port) is the side-by-side figure: the ratio is reference / Berth (higher is better).

By default both Berths are the executables built in the Debian 11 root (`packaging/build.py`,
cached; the earlier one as the slow tests build it); `--from-source` runs both from source
instead (`git archive` of the earlier commit), which needs no root.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.packaging.helpers import start_command
from tests.support.clients import Skopeo
from tests.support.earlier import EARLIEST_COMMIT, FROM_SOURCE, export_commit, source_env
from tests.support.images import ImageCache
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    REPO_ROOT,
    Server,
    free_port,
    start_reference_registry,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
EARLIER = EARLIEST_COMMIT
POLL = 0.002


class Poller:
    """Asks `url` every POLL seconds from a thread; keeps the time of every answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=0.5) as client:
            while not self.stopping.is_set():
                try:
                    client.get(self.url)  # any HTTP answer counts (401 included)
                    self.answers.append(time.monotonic())
                except httpx.TransportError:
                    pass
                time.sleep(POLL)

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)

    def gap_after(self, moment: float) -> float:
        """The longest time without an answer that ends after `moment` (the old process may
        still answer a moment after its SIGTERM): from the old version's last answer to the
        new one's first."""
        pairs = zip(self.answers, self.answers[1:], strict=False)
        return max(later - earlier for earlier, later in pairs if later > moment)


def _executables(from_source: bool, tmp: Path) -> tuple[list[str], Path, list[str], Path]:
    """(old command, old cwd, new command, new cwd)."""
    if from_source:
        old_tree = export_commit(EARLIER, tmp / "earlier")
        return FROM_SOURCE, old_tree, FROM_SOURCE, REPO_ROOT
    build = [sys.executable, str(REPO_ROOT / "packaging" / "build.py")]
    subprocess.run(build, check=True)
    sys.path.insert(0, str(REPO_ROOT / "packaging"))
    import buildroot  # noqa: PLC0415 (packaging/buildroot.py)

    old_exe = buildroot.CACHE / "earlier" / EARLIER / "berth"
    old_tree = export_commit(EARLIER, tmp / "earlier")
    subprocess.run([*build, "--source", str(old_tree), "--out", str(old_exe)], check=True)
    return [str(old_exe)], tmp, [str(REPO_ROOT / "dist" / "berth")], tmp


def berth_once(run: int, tmp: Path, commands: tuple[list[str], Path, list[str], Path]) -> float:
    old_cmd, old_cwd, new_cmd, new_cwd = commands
    port = free_port()
    data = tmp / f"run{run}"
    config = tmp / f"run{run}.toml"
    config.write_text(
        f'[server]\ndata_dir = "{data}"\nlisten = "127.0.0.1:{port}"\n[log]\ndir = "{data}/log"\n'
    )
    env = {**source_env(old_cwd, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD)}
    serve = ["serve", "--config", str(config)]
    old, _ = start_command([*old_cmd, *serve], env=env, cwd=old_cwd, log_path=tmp / f"old{run}.log")
    image = ImageCache(tmp / "images").busybox()
    Skopeo(tmp / f"skopeo{run}").push(
        image, f"docker://{old.host}/bench/busybox:1", creds=f"{ADMIN}:{ADMIN_PASSWORD}"
    )
    new: Server | None = None
    try:
        with Poller(f"http://127.0.0.1:{port}/v2/") as poller:
            time.sleep(0.2)
            done = subprocess.run(
                [*new_cmd, "ctl", "reconfigure", "--config", str(config), "--systemd-dir",
                 str(tmp / f"units{run}")],
                cwd=new_cwd, env=source_env(new_cwd), capture_output=True, text=True, check=True,
            )  # fmt: skip
            assert "pre-upgrade backup" in done.stdout, done.stdout
            moment = time.monotonic()
            assert old.stop(signal.SIGTERM) == 0
            new_env = source_env(new_cwd, BERTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
            new, _ = start_command(
                [*new_cmd, *serve], env=new_env, cwd=new_cwd, log_path=tmp / f"new{run}.log"
            )
            found = httpx.head(
                f"{new.url}/v2/bench/busybox/manifests/1",
                auth=(ADMIN, ADMIN_PASSWORD),
                headers={"accept": image.media_type},
                follow_redirects=True,
            )
            assert found.status_code == 200, found.status_code
            time.sleep(0.2)
        return poller.gap_after(moment)
    finally:
        old.stop()
        if new is not None:
            new.stop()


def reference_once(run: int, tmp: Path) -> float:
    first = start_reference_registry(tmp / f"ref{run}")
    port = first.url.rsplit(":", 1)[1]
    config = tmp / f"ref{run}" / "config.yml"
    with Poller(first.url + "/v2/") as poller:
        time.sleep(0.2)
        moment = time.monotonic()
        first.stop(signal.SIGTERM)
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not any(t > moment for t in poller.answers):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the reference did not come back on port {port}")
                time.sleep(0.01)
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    return poller.gap_after(moment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--from-source", action="store_true", help="run both Berths from source")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as t:
        tmp = Path(t)
        commands = _executables(args.from_source, tmp)
        berth = [berth_once(i, tmp, commands) for i in range(args.runs)]
        reference = [reference_once(i, tmp) for i in range(args.runs)]
    b, r = statistics.median(berth), statistics.median(reference)
    kind = "from source" if args.from_source else "executables built in the Debian 11 root"
    now = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()[0]
    lines = [
        f"## {now:%Y-%m-%d %H:%M} UTC: upgrade downtime (`python -m bench.upgrade"
        f"{' --from-source' if args.from_source else ''}`)",
        "",
        f"- Machine: nproc {os.cpu_count()}, {platform.machine()}, load average {load:.1f}",
        f"- Berth {EARLIER} -> this checkout ({kind}); `berth ctl reconfigure` (backup, "
        "migrations) while the old one serves, then SIGTERM and start on the same port; "
        f"`GET /v2/` every {POLL * 1000:.0f} ms; median of {args.runs}",
        "",
        "| measurement | unit | berth | reference | ratio | target |",
        "|---|---|---|---|---|---|",
        f"| last answer of the old version to first of the new | s | {b:.2f} "
        f"(min {min(berth):.2f}, max {max(berth):.2f}) | {r:.2f} | {r / b:.2f} | |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with RESULTS.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()

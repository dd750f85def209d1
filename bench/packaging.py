"""Packaging benchmarks (issue 9): `python -m bench.packaging [--record] [--size BYTES]`.

(a) cold start of the single executable (dist/berth, built if stale) to its first answered
    `/v2/`, on an existing data directory (median of 5), next to `berth` from the venv;
(b) one 1 GiB blob downloaded with curl through the nginx front (TLS, X-Accel-Redirect: nginx
    sends the file) against Berth serving the same blob directly over plain HTTP and against
    the reference registry (Distribution, `docker-registry`) serving it over plain HTTP
    (median of 3 rounds, the four downloads of a round one after the other).
    Targets: nginx >= 2x Berth; nginx front >= 1.5x the reference (issue 16).

`--only start` or `--only nginx` runs one of the two (nginx skips building dist/berth).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from appliance import config as settings
from appliance.omnibus import checks, ctl
from tests.packaging.helpers import start_command
from tests.support.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    REPO_ROOT,
    free_port,
    start_berth,
    start_reference_registry,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
CHUNK = 1 << 20


def cold_starts(cmd_prefix: list[str], tmp: Path, runs: int = 5) -> list[float]:
    data = tmp / "data"
    times = []
    for i in range(runs + 1):  # the first run creates the install; it is not counted
        cmd = [*cmd_prefix, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data)]
        env = {"BERTH_ADMIN_PASSWORD": ADMIN_PASSWORD}
        server, took = start_command(cmd, env=env, cwd=tmp, log_path=tmp / "start.log")
        server.stop()
        if i:
            times.append(took)
    return times


def push_blob(url: str, size: int, verify: ssl.SSLContext) -> str:
    """A `size`-byte blob in bench/big, streamed up in one PUT; returns its digest."""
    block = hashlib.sha256(b"berth").digest() * (CHUNK // 32)
    h = hashlib.sha256()
    for _ in range(size // CHUNK):
        h.update(block)
    digest = "sha256:" + h.hexdigest()

    def body():
        for _ in range(size // CHUNK):
            yield block

    with httpx.Client(base_url=url, auth=(ADMIN, ADMIN_PASSWORD), timeout=600, verify=verify) as c:
        start = c.post("/v2/bench/big/blobs/uploads/")
        start.raise_for_status()
        location = start.headers["location"]  # the reference's carries its own query
        put = c.put(
            f"{location}{'&' if '?' in location else '?'}digest={digest}",
            content=body(),
            headers={"content-type": "application/octet-stream"},
        )
        put.raise_for_status()
    return digest


def curl_rate(url: str, ca: Path | None, runs: int = 3) -> float:
    """Median MB/s of `curl GET url` (Basic credentials) into /dev/null."""
    rates = []
    for _ in range(runs):
        cmd = [
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{speed_download}",
            "-u",
            f"{ADMIN}:{ADMIN_PASSWORD}",
            url,
        ]
        if ca is not None:
            cmd += ["--cacert", str(ca)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rates.append(float(out) / 1e6)
    return statistics.median(rates)


def nginx_vs_direct(tmp: Path, size: int) -> tuple[float, float, float, float]:
    """MB/s of (Berth direct, nginx front TLS, nginx front plain HTTP, the reference)."""
    https_port = free_port()
    public = f"https://127.0.0.1:{https_port}"
    data = tmp / "data"
    server = start_berth(data, env={"BERTH_SERVER_PUBLIC_URL": public})
    reference = start_reference_registry(tmp / "reference")
    proc = None
    try:
        config = settings.load(
            None,
            environ={},
            overrides={
                "server.listen": server.host,
                "server.data_dir": str(data),
                "server.public_url": public,
                "log.dir": str(tmp / "log"),
                "nginx.enabled": True,
                "nginx.listen": f"127.0.0.1:{https_port}",
                "nginx.redirect_listen": "",
            },
        )
        cert, key = checks.tls_paths(config)
        ctl.make_self_signed(cert, key, "127.0.0.1")
        prefix = ctl.nginx_prefix(config)
        prefix.mkdir(parents=True)
        (tmp / "log").mkdir()
        # The same server block also on plain HTTP, to compare like with like: TLS leaves
        # nginx no sendfile (it must encrypt in user space), plain HTTP lets it use sendfile.
        plain_port = free_port()
        text = ctl.render_nginx(config, user="root")
        tls_listen = f"listen 127.0.0.1:{https_port} ssl;"
        text = text.replace(tls_listen, f"{tls_listen}\n        listen 127.0.0.1:{plain_port};")
        (prefix / "nginx.conf").write_text(text)
        proc = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
        )
        ctx = ssl.create_default_context(cafile=cert)
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(public + "/v2/", verify=ctx, timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        digest = push_blob(public, size, ctx)  # Location headers name the public URL
        assert push_blob(reference.url, size, ctx) == digest  # the same bytes
        path = f"/v2/bench/big/blobs/{digest}"
        urls = [
            (server.url + path, None),
            (public + path, cert),
            (f"http://127.0.0.1:{plain_port}{path}", None),
            (reference.url + path, None),
        ]
        rounds = [[curl_rate(url, ca, runs=1) for url, ca in urls] for _ in range(3)]
        direct, front, plain, ref = (statistics.median(r[i] for r in rounds) for i in range(4))
        return direct, front, plain, ref
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGQUIT)
            proc.wait(20)
        server.stop()
        reference.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="append results to RESULTS.md")
    parser.add_argument("--size", type=int, default=1 << 30, help="blob bytes (default 1 GiB)")
    parser.add_argument(
        "--only", choices=("start", "nginx"), help="run (a) start-up or (b) nginx alone"
    )
    args = parser.parse_args()
    now = datetime.datetime.now(datetime.UTC)
    lines = [f"## {now:%Y-%m-%d %H:%M} UTC: packaging (bench/packaging.py)", ""]
    machine = (
        f"- Machine: nproc {os.cpu_count()}, {platform.machine()}, kernel {platform.release()}; "
        f"1-minute load average {os.getloadavg()[0]:.1f}"
    )
    rows = ["| measurement | unit | value | target | |", "|---|---|---|---|---|"]
    if args.only != "nginx":
        subprocess.run([sys.executable, str(REPO_ROOT / "packaging" / "build.py")], check=True)
        exe = REPO_ROOT / "dist" / "berth"
        machine += f"; dist/berth {exe.stat().st_size / 2**20:.0f} MiB"
        with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2:
            frozen = cold_starts([str(exe)], Path(t1))
            venv = cold_starts([str(Path(sys.executable).with_name("berth"))], Path(t2))
        median = statistics.median(frozen)
        rows += [
            f"| (a) dist/berth cold start to first answered /v2/ | s | {median:.2f} "
            f"(min {min(frozen):.2f}, max {max(frozen):.2f}) | < 2 s | "
            f"{'ok' if median < 2 else 'MISSED'} |",
            f"| (a) venv `berth` start to first answered /v2/ (reference) | s | "
            f"{statistics.median(venv):.2f} | | |",
        ]
    if args.only != "start":
        with tempfile.TemporaryDirectory() as t3:
            direct, front, plain, ref = nginx_vs_direct(Path(t3), args.size)
        ratio = plain / direct
        rows += [
            f"| (b) blob GET, Berth directly (HTTP) | MB/s | {direct:.0f} | | |",
            f"| (b) blob GET, nginx front (TLS, X-Accel-Redirect) | MB/s | {front:.0f} | | |",
            f"| (b) blob GET, nginx front (plain HTTP, X-Accel-Redirect, sendfile) | MB/s | "
            f"{plain:.0f} | | |",
            f"| (b) blob GET, reference registry (plain HTTP) | MB/s | {ref:.0f} | | |",
            f"| (b) nginx (plain HTTP) / Berth (plain HTTP) | x | {ratio:.2f} | >= 2x | "
            f"{'ok' if ratio >= 2 else 'MISSED'} |",
            f"| (b) nginx (TLS) / Berth (plain HTTP) | x | {front / direct:.2f} | | |",
            *(
                f"| (b) nginx ({how}) / reference (plain HTTP) | x | {rate / ref:.2f} | "
                f">= 1.5x | {'ok' if rate / ref >= 1.5 else 'MISSED'} |"
                for how, rate in (("TLS, as bundled", front), ("plain HTTP", plain))
            ),
        ]
    lines += [
        machine,
        f"- Blob {args.size / 2**30:.2f} GiB, curl to /dev/null, median of 3 rounds"
        + ("" if args.only == "nginx" else "; start-up: restart on an existing data dir, median 5"),
        "",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with RESULTS.open("a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()

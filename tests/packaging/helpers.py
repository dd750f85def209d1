"""Start Berth from a given command (the built executable, or inside a chroot) and time it."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.servers import LISTENING, Server


def start_command(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout: float = 60,
) -> tuple[Server, float]:
    """Run `cmd` (a `berth serve`), wait for its `listening on` line and for `/v2/` to answer.

    Returns the server and the seconds from launch to the first answered `/v2/`.
    """
    started = time.monotonic()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd
    )
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        with log_path.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                m = LISTENING.search(line.decode(errors="replace"))
                if m and not found:
                    found.append(m.group(1))
                    ready.set()
        ready.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    ready.wait(timeout)
    server = Server(found[0] if found else "", proc, log_path, None, None, thread)
    if not found:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"berth did not start: {list(cmd)}\n{server.log()}")
    try:
        urllib.request.urlopen(server.url + "/v2/", timeout=10)
    except urllib.error.HTTPError as e:
        if e.code != 401:  # sign-in is always on
            raise
    return server, time.monotonic() - started

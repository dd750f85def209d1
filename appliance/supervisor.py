"""`berth serve --workers N`: N single-worker serving processes that Berth supervises itself.

hypercorn's own `--workers` stops every worker as soon as one exits, cutting in-flight
requests (DESIGN.md), so Berth does it itself. The supervisor:

* migrates the database (when allowed) and binds the listening socket once, then starts N
  children (`berth serve --listen-fd FD`) that inherit the socket and accept on it in turn;
* says it is listening only once every child answers requests (each writes a byte to a pipe
  when it does), so nobody is told to connect while only the kernel's backlog would answer;
  a child that exits before it ever served stops the start-up with its exit code;
* restarts a child that dies (after a short, growing pause if it keeps dying at once);
* on SIGTERM or SIGINT, passes SIGTERM to every child, waits while each drains its in-flight
  requests (up to `server.shutdown_timeout`), and returns 0.

Children drain and exit when the supervisor dies, so none is left orphaned.
Background jobs are not the supervisor's business: each child campaigns for the jobs
leadership through the database, and exactly one leads (runtime/jobs.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from appliance.config import Config
from appliance.errors import ConfigError
from appliance.metadata.db import open_metadata
from appliance.runtime.program import program_command

log = logging.getLogger("berth.supervisor")


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """SIGTERM this process (a graceful drain) once `parent` is gone, checked every `interval`
    seconds by a daemon thread. (PR_SET_PDEATHSIG would fire when the *thread* that started
    the child exits, and trio starts children from short-lived worker threads.)"""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Runs `workers` copies of `child_command + ["--listen-fd", FD]` on one socket."""

    def __init__(self, config: Config, child_command: Sequence[str], workers: int) -> None:
        self.config = config
        self.child_command = list(child_command)
        self.workers = workers
        self.stopping = False
        self.children: dict[int, trio.Process] = {}
        self._all_stopped = trio.Event()
        self._running = 0
        self._ready_slots: set[int] = set()
        self._all_ready = trio.Event()
        self.failed: int | None = None  # exit code of a worker that never got going
        self.failure: str | None = None  # and why, as it told

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> int:
        # Fail fast, once, with one clear line (database unreachable, schema too new...).
        db = await trio.to_thread.run_sync(open_metadata, self.config)
        db.close()
        prepare_metrics_dir(self.config.data_dir / "metrics")
        host, port = self.config.listen
        sock = bind(host, port)
        try:
            bound_host, bound_port = sock.getsockname()[:2]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            url = f"http://{shown}:{bound_port}"
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with trio.open_nursery() as nursery:
                    for slot in range(self.workers):
                        nursery.start_soon(self._keep_running, slot, sock.fileno())
                    stop_now = await self._wait_ready(signals)
                    if self.failed is None and not stop_now:
                        log.info("listening on %s (%d worker processes)", url, self.workers)
                        task_status.started(url)
                        async for signum in signals:
                            log.info(
                                "received %s: draining %d workers",
                                signal.Signals(signum).name,
                                len(self.children),
                            )
                            break
                    self.stopping = True
                    self._signal_all(signal.SIGTERM)
                    with trio.move_on_after(self.config["server.shutdown_timeout"] + 10):
                        await self._all_stopped.wait()
                    self._signal_all(signal.SIGKILL)
        finally:
            sock.close()
        if self.failed is not None:
            if self.failure is not None:  # one clear line, as a lone process would print
                sys.stderr.write(f"berth: {self.failure}\n")
                sys.stderr.flush()
            else:
                log.error("a worker exited with %s before serving; stopped", self.failed)
            return self.failed or 1
        log.info("all workers stopped")
        return 0

    async def _wait_ready(self, signals: AsyncIterator[int]) -> bool:
        """Wait until every worker serves (or one fails); True when a signal came first."""
        async with trio.open_nursery() as nursery:
            stopped = False

            async def on_signal() -> None:
                nonlocal stopped
                async for _ in signals:
                    stopped = True
                    break
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            await self._all_ready.wait()
            nursery.cancel_scope.cancel()
        return stopped

    async def _tell_when_ready(self, slot: int, ready: trio.lowlevel.FdStream) -> None:
        got = b""
        async with ready:
            try:
                while chunk := await ready.receive_some(4096):
                    got += chunk
                    if got[:1] == b"R":
                        break
            except trio.BrokenResourceError:
                pass
        if got[:1] == b"F":  # it could not start, and said why
            if self.failure is None:
                self.failure = got[1:].decode(errors="replace")
            return
        if got[:1] == b"R" and slot not in self._ready_slots:
            self._ready_slots.add(slot)
            if len(self._ready_slots) == self.workers:
                self._all_ready.set()

    def _signal_all(self, sig: int) -> None:
        for proc in list(self.children.values()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _keep_running(self, slot: int, fd: int) -> None:
        self._running += 1
        try:
            await self._restart_loop(slot, fd)
        finally:
            self._running -= 1
            if not self._running:
                self._all_stopped.set()

    async def _restart_loop(self, slot: int, fd: int) -> None:
        pause = 0.1
        while not self.stopping:
            started = trio.current_time()
            ready_read, ready_write = os.pipe()
            try:
                proc = await trio.lowlevel.open_process(
                    [
                        *self.child_command,
                        "--listen-fd",
                        str(fd),
                        "--parent-pid",
                        str(os.getpid()),
                        "--ready-fd",
                        str(ready_write),
                    ],
                    pass_fds=(fd, ready_write),
                )
            finally:
                os.close(ready_write)
            self.children[slot] = proc
            try:
                async with trio.open_nursery() as watch:
                    watch.start_soon(
                        self._tell_when_ready, slot, trio.lowlevel.FdStream(ready_read)
                    )
                    code = await proc.wait()
            finally:
                del self.children[slot]
                forget_metrics_of(proc.pid)
            if not self._all_ready.is_set() and not self.stopping:
                # A worker died during start-up: a restart would most likely fail the same
                # way (a port, a config, a database), so stop with one clear failure.
                self.failed = code
                self.stopping = True
                self._signal_all(signal.SIGTERM)
                self._all_ready.set()
                return
            if self.stopping:
                if code != 0:
                    log.warning("worker %d (pid %d) exited with %s", slot, proc.pid, code)
                return
            log.warning("worker %d (pid %d) exited with %s; starting another", slot, proc.pid, code)
            # A worker that dies at once is likely to do it again: back off, up to 10 s.
            pause = min(10.0, pause * 2) if trio.current_time() - started < 5 else 0.1
            await trio.sleep(pause)


def prepare_metrics_dir(path: Path) -> None:
    """Workers write their metrics to files in `path` (prometheus-client's multiprocess mode),
    so that whichever worker answers `/metrics` reports all of them. Emptied at each start:
    the files of a previous run would count twice."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # inherited by the workers


def forget_metrics_of(pid: int) -> None:
    """A worker exited: its live gauges (requests in progress) no longer count."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def child_command(config_path: str | None, data_dir: str | None, listen: str | None) -> list[str]:
    """How a worker is started: this program again, as one single-worker `serve`. (The
    environment, `BERTH_*` variables included, is inherited.)"""
    cmd = [*program_command(), "serve", "--workers", "1"]
    if config_path:
        cmd += ["--config", config_path]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    if listen:
        cmd += ["--listen", listen]
    return cmd

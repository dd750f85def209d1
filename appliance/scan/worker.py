"""The scan worker: a process of its own that reads an image's layers and answers its SBOM.

Layers are hostile input, so the serving process never parses them. For each image the jobs
leader starts this program again as `berth scan-worker` (the single executable is its own
interpreter: `runtime.program.program_command`), writes one header line (the image, the layers'
labels and sizes, the bounds) and then every layer's compressed bytes, in order, to its
standard input, and reads one answer from its standard output: a JSON line (packages, the
bounds that cut the reading, the SBOM's size, or an error) followed by the SBOM.

The worker limits its own address space (`RLIMIT_AS`, `scan.max_memory`) before it reads
anything, cuts the layer it is reading when its deadline (`scan.timeout`) passes, and answers
what it read. The leader kills it if it is still running a little after the deadline. So a
hostile layer costs the serving process only the bytes it pumps through a pipe and an answer
of bounded size; a worker that dies leaves that image's report an error, nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import trio

from appliance.scan import sbom as sboms
from appliance.scan.layers import LayerError, Limits, read_image, size_text

MAX_SBOM = 16 << 20  # the largest SBOM a worker answers (about 40,000 typical packages)
MAX_HEADER = 1 << 20  # the header line the worker reads
_STDERR_KEPT = 4096  # bytes of the worker's stderr quoted when it fails


@dataclass(frozen=True)
class WorkerSettings:
    """How the leader runs workers: the program, the bounds, memory and time."""

    command: Sequence[str]
    limits: Limits = field(default_factory=Limits)
    memory: int = 1 << 30  # bytes of address space (0: no limit)
    timeout: float = 600.0  # seconds per image
    grace: float = 10.0  # seconds past the timeout before the leader kills the worker


@dataclass(frozen=True)
class Extraction:
    """A worker's answer for one image."""

    document: bytes  # the CycloneDX SBOM
    packages: int
    cuts: list[str]  # the bounds that cut the reading (empty: the image was read whole)
    layer_bytes: int  # compressed bytes sent


@dataclass(frozen=True)
class Layer:
    """One layer to send: its label (digest), size, and bytes."""

    label: str
    size: int
    chunks: AsyncIterator[bytes]


def worker_environment() -> dict[str, str]:
    """The worker's environment: the leader's, less Berth's settings (secrets among them: the
    worker needs none) and the metrics directory (it keeps no metrics)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BERTH_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }


async def extract(
    settings: WorkerSettings, image: str, repository: str, layers: Sequence[Layer]
) -> Extraction:
    """Run one worker over `layers` (bottom first). Raises LayerError when the worker could
    not read the image or failed; storage faults from the layers' chunks propagate as they
    are. The worker is killed on any exit (a cancellation included); nothing is left behind."""
    header = {
        "image": image,
        "repository": repository,
        "layers": [{"label": layer.label, "size": layer.size} for layer in layers],
        "limits": settings.limits.as_json(),
        "memory": settings.memory,
        "timeout": settings.timeout,
    }
    sent = 0
    answer = bytearray()
    errors = bytearray()
    proc = await trio.lowlevel.open_process(
        [*settings.command, "scan-worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=worker_environment(),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        nonlocal sent
        try:
            await stdin.send_all(json.dumps(header).encode() + b"\n")
            for layer in layers:
                left = layer.size
                async for chunk in layer.chunks:
                    if len(chunk) > left:
                        raise LayerError(f"layer {layer.label} is longer than its size")
                    await stdin.send_all(chunk)
                    left -= len(chunk)
                    sent += len(chunk)
                if left:
                    raise LayerError(f"layer {layer.label} is shorter than its size")
            await stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the worker stopped reading (it answered an error, or died): it says why

    async def collect() -> None:
        while chunk := await stdout.receive_some(1 << 20):
            answer.extend(chunk)
            if len(answer) > MAX_SBOM + MAX_HEADER:
                raise LayerError(f"the scan worker answered more than {size_text(MAX_SBOM)}")

    async def keep_stderr() -> None:
        while chunk := await stderr.receive_some(1 << 16):
            errors.extend(chunk)
            del errors[:-_STDERR_KEPT]

    failures: list[Exception] = []
    try:
        with trio.move_on_after(settings.timeout + settings.grace) as timer:
            async with trio.open_nursery() as nursery:

                async def guarded(task: Callable[[], Awaitable[None]]) -> None:
                    # The first failure stops the others and is raised as itself, not in
                    # an exception group (a storage fault must reach the scanner's retry).
                    try:
                        await task()
                    except Exception as e:
                        failures.append(e)
                        nursery.cancel_scope.cancel()

                for task in (feed, collect, keep_stderr):
                    nursery.start_soon(guarded, task)
            if not failures:
                await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        for stream in (stdin, stdout, stderr):
            with trio.CancelScope(shield=True):
                await stream.aclose()
    if failures:
        raise failures[0]
    if timer.cancelled_caught:
        raise LayerError(
            f"scan incomplete: the scan worker ran past scan.timeout ({settings.timeout:g} s) "
            "and was stopped"
        )
    assert proc.returncode is not None
    return _parse_answer(bytes(answer), proc.returncode, bytes(errors), sent)


def _parse_answer(answer: bytes, code: int, errors: bytes, sent: int) -> Extraction:
    line, newline, document = answer.partition(b"\n")
    meta: dict[str, Any] = {}
    if newline:
        with contextlib.suppress(ValueError):
            meta = json.loads(line)
    if isinstance(meta, dict) and isinstance(meta.get("error"), str):
        raise LayerError(meta["error"])
    if code != 0 or not isinstance(meta, dict) or meta.get("sbom") != len(document):
        last = errors.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise LayerError(f"the scan worker {how}: {last[0][:300]}")
    return Extraction(document, int(meta["packages"]), list(meta["cuts"]), sent)


# -- the worker's side ---------------------------------------------------------------------


class _Slice:
    """The next `size` bytes of the worker's input: one layer. Closing it skips what was not
    read (a layer cut by a bound), so the next layer starts where it should; past the
    deadline it skips nothing (every layer is cut at once then, whatever it reads)."""

    def __init__(self, source: BinaryIO, size: int, label: str, deadline: float) -> None:
        self.source = source
        self.left = size
        self.label = label
        self.deadline = deadline

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        want = self.left if n < 0 else min(n, self.left)
        data = self.source.read(min(want, 1 << 20))
        if not data:
            raise LayerError(f"layer {self.label} ended early")
        self.left -= len(data)
        return data

    def close(self) -> None:
        while self.left > 0 and time.monotonic() < self.deadline:
            self.read(1 << 20)


def limit_memory(limit: int) -> None:
    """Cap this process's address space at `limit` bytes (0: leave it). Past it, allocations
    fail with MemoryError instead of growing the machine's memory use."""
    if limit <= 0:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_worker(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The worker: read the header and the layers from `stdin`, write the answer to `stdout`
    (blocking). Bounds reached are part of the answer, as is running out of memory; a worker
    that exits without an answer failed (the leader reports its exit and last stderr line)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the leader decides when a worker stops
    header = json.loads(stdin.readline(MAX_HEADER))
    started = time.monotonic()
    limit_memory(int(header["memory"]))
    deadline = started + float(header["timeout"])
    limits = Limits(**header["limits"], deadline=deadline)
    slices = [
        _Slice(stdin, int(item["size"]), str(item["label"]), deadline) for item in header["layers"]
    ]
    try:
        contents = read_image([(s.label, lambda s=s: s) for s in slices], limits)  # type: ignore[misc]
        document = sboms.build(str(header["image"]), str(header["repository"]), contents)
        meta = {"packages": len(contents.packages()), "cuts": contents.cuts, "sbom": len(document)}
    except LayerError as e:
        meta, document = {"error": e.message}, b""
    except MemoryError:  # outside a layer (a cut there is part of the answer): the SBOM
        meta = {"error": "scan incomplete: the SBOM needed more memory than scan.max_memory"}
        document = b""
    if len(document) > MAX_SBOM:
        meta = {
            "error": f"the SBOM is {size_text(len(document))}, more than Berth stores "
            f"({size_text(MAX_SBOM)})"
        }
        document = b""
    stdout.write(json.dumps(meta).encode() + b"\n")
    stdout.write(document)
    stdout.flush()

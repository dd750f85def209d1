"""Berth on Azure Blob Storage (Azurite) against the Azure SDK writing to the same Azurite.

    python -m bench.azure [--size MIB] [--repeats N] [--record]

Starts one Azurite (tests/support/azurite.py, installed from the npm registry on first use),
then `berth serve` with `storage.backend = "azure"` on a container of its own, and measures,
one after the other, alternating which goes first, median of `--repeats` runs:

- upload, monolithic: curl POST + one PUT `?digest=` with the whole body (Berth stages the
  blocks at the blob's final key and commits them there) against the SDK's own `upload_blob`
  of the same file (16 MiB blocks, 3 in flight, as Berth);
- upload, chunked: skopeo push of a one-layer image (POST, one PATCH with the whole layer, PUT:
  Berth commits under `uploads/` and copies server-side to the blob's key) against the same
  SDK upload;
- download: curl GET through Berth (relayed) against the SDK's `download_blob` (4 MiB ranged
  GETs, one at a time, as Berth).

The ratios say what Berth costs over writing to the storage directly; Azurite (Node.js, one
process) is usually the bottleneck of both. The reference registry is not compared: Debian's
docker-registry 2.8.2 is built without its azure driver ("StorageDriver not registered:
azure"), and Distribution 2.8's driver cannot address Azurite (https only, no service URL).
`--record` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import system  # noqa: E402
from bench.run import BlobFile, Side, curl_download, curl_upload, log, skopeo_cache_mountpoint  # noqa: E402
from bench.s3 import Comparison, Figure, LayerImage, fmt, skopeo_push, timed  # noqa: E402
from tests.support.azurite import VERSION, Azurite, start_azurite  # noqa: E402
from tests.support.servers import Server, start_berth  # noqa: E402

MiB = 1 << 20
HEADING = "## Azure: Berth on Azurite and the Azure SDK on the same Azurite"


class Direct:
    """The Azure SDK writing to and reading from Azurite directly."""

    def __init__(self, azurite: Azurite, container: str) -> None:
        from azure.storage.blob import ContainerClient  # noqa: PLC0415

        self.client = ContainerClient(
            azurite.endpoint,
            container,
            credential={"account_name": azurite.account, "account_key": azurite.key},
            max_block_size=16 * MiB,
            max_single_put_size=16 * MiB,
        )
        self.count = 0

    def upload(self, path: Path, size: int) -> float:
        self.count += 1
        blob = self.client.get_blob_client(f"direct/{self.count}")
        start = time.perf_counter()
        with path.open("rb") as f:
            blob.upload_blob(f, length=size, max_concurrency=3, overwrite=True)
        return time.perf_counter() - start

    def download(self, size: int) -> float:
        blob = self.client.get_blob_client(f"direct/{self.count}")
        start = time.perf_counter()
        got = 0
        for chunk in blob.download_blob(max_concurrency=1).chunks():
            got += len(chunk)
        seconds = time.perf_counter() - start
        if got != size:
            raise RuntimeError(f"direct download got {got} of {size} bytes")
        return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.azure", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", type=int, default=1024, help="blob/layer size in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--tmpdir", type=Path, default=None)
    args = parser.parse_args(argv)
    size = args.size * MiB
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-azure-", dir=args.tmpdir))
    bg = system.BackgroundLoad()
    comparisons: list[Comparison] = []
    server: Server | None = None
    azurite: Azurite | None = None
    try:
        log("starting Azurite")
        azurite = start_azurite(tmp / "azurite")
        server = start_berth(tmp / "berth", env=azurite.env(azurite.new_container("berth")))
        side = Side("berth", "berth", server, server.credentials)
        direct = Direct(azurite, azurite.new_container("direct"))
        log(f"Berth at {server.url}, Azurite at {azurite.endpoint}")

        def compare(label: str) -> Comparison:
            c = Comparison(label, "berth", "sdk", 1.0, {"berth": Figure(), "sdk": Figure()})
            comparisons.append(c)
            return c

        blob = BlobFile(tmp / "blob.bin", size)
        mono = compare(f"upload {args.size} MiB, curl POST + PUT (blocks at the final key)")
        chunked = compare(f"upload {args.size} MiB, skopeo push (PATCH, then server-side copy)")
        down = compare(f"download {args.size} MiB, curl GET (relayed)")
        stored: tuple[str, str] | None = None
        for rep in range(args.repeats):
            for name in ("berth", "sdk") if rep % 2 == 0 else ("sdk", "berth"):
                if name == "berth":
                    digest = blob.fresh()
                    repo = f"bench/curl{blob.count}"
                    fn = functools.partial(curl_upload, side, repo, blob.path, digest, size)
                    stored = (repo, digest)
                else:
                    fn = functools.partial(direct.upload, blob.path, size)
                seconds = timed(bg, mono.figures[name], size, fn)
                log(f"  upload {name}: {size / seconds / 1e6:.1f} MB/s")
        chunked.figures["sdk"] = mono.figures["sdk"]  # the same direct upload
        assert stored is not None
        for rep in range(args.repeats):
            for name in ("berth", "sdk") if rep % 2 == 0 else ("sdk", "berth"):
                if name == "berth":
                    repo, digest = stored
                    fn = functools.partial(curl_download, side, repo, digest, size)
                else:
                    fn = functools.partial(direct.download, size)
                seconds = timed(bg, down.figures[name], size, fn)
                log(f"  download {name}: {size / seconds / 1e6:.1f} MB/s")
        blob.path.unlink()
        image = LayerImage(tmp, size)
        with skopeo_cache_mountpoint():
            for _ in range(args.repeats):
                layout, _, _ = image.fresh("v1")
                seconds = timed(
                    bg,
                    chunked.figures["berth"],
                    size,
                    functools.partial(
                        skopeo_push, side, layout, f"bench/skopeo{image.count}", "v1"
                    ),
                )
                shutil.rmtree(layout)
                log(f"  skopeo push berth: {size / seconds / 1e6:.1f} MB/s")
    finally:
        if server is not None:
            server.stop()
        if azurite is not None:
            azurite.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    lines = render(comparisons, args)
    print("\n".join(lines))
    if args.record:
        with (BENCH_DIR / "RESULTS.md").open("a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
    return 0


def render(comparisons: list[Comparison], args: argparse.Namespace) -> list[str]:
    info = system.machine_info()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{HEADING} ({now})",
        "",
        f"- Machine: `nproc` {info['nproc']}, {info['cpu']}, {info['memory']} RAM, "
        f"kernel {info['kernel']}",
        f"- Python {info['python']}; Berth {info['berth']}; Azurite {VERSION} (Node.js); "
        f"{info['curl']}; {info['skopeo']}",
        f"- `python -m bench.azure --size {args.size} --repeats {args.repeats}`: median of "
        f"{args.repeats} runs, MB/s (10^6 B/s); Berth and the SDK each have a container of "
        "their own on one Azurite (loopback, data on disk)",
        "- The reference registry is not compared: Debian's docker-registry 2.8.2 has no azure "
        "driver compiled in (`StorageDriver not registered: azure`).",
        "",
        "| measurement | Berth MB/s | Azure SDK direct MB/s | ratio |",
        "|---|---|---|---|",
    ]
    for c in comparisons:
        ratio = c.ratio()
        lines.append(
            f"| {c.label} | {fmt(c.figures['berth'].median)} | {fmt(c.figures['sdk'].median)} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} |"
        )
    busy = [x for c in comparisons for f in c.figures.values() for x in f.busy]
    if busy:
        lines += [
            "",
            f"Other processes used up to {max(busy):.0%} of the CPUs during the runs "
            "(the machine is shared with other work).",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())

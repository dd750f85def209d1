"""Berth on S3 side by side with the reference registry on S3, both on the same SeaweedFS.

    python -m bench.s3 [--size MIB] [--repeats N] [--record] [--only curl,skopeo]

Starts one SeaweedFS (tests/support/seaweedfs.py: `weed server -s3` on loopback), then:

- `berth`: `berth serve` with `storage.backend = "s3"` (bytes relayed through Berth);
- `berth-redirect`: the same with `storage.s3.redirect = true` (blob GETs answered with a
  307 to a presigned S3 URL);
- `reference`: Debian's `docker-registry` (CNCF Distribution 2.8) with its `s3` driver, as
  configured out of the box, which redirects blob GETs to S3;
- `reference-proxy`: the same with `redirect: disable: true` (bytes relayed).

Each has a bucket of its own on the one SeaweedFS, so both sides pay the same S3. Measured, one
registry at a time, alternating which goes first, median of `--repeats` runs:

- upload: curl POST + one PUT `?digest=` with the whole 1 GiB body (the digest is known before
  the bytes); skopeo push of a one-layer 1 GiB image (POST, PATCH with the whole layer, PUT
  `?digest=`: the digest comes after the bytes). Berth vs reference. Targets: >= 1.5x.
- download: curl GET (-L) and skopeo pull of the same. Relayed: berth vs reference-proxy;
  redirected: berth-redirect vs reference. Target: >= 1x.

The layer is an uncompressed tar of random bytes (a fresh counter is stamped into it for every
push, so no registry has seen it before). `--record` appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import system  # noqa: E402
from bench.run import (  # noqa: E402
    BlobFile,
    Side,
    curl_download,
    curl_upload,
    log,
    skopeo_cache_mountpoint,
    skopeo_isolated,
)
from tests.support.seaweedfs import SeaweedFS, start_seaweedfs  # noqa: E402
from tests.support.servers import (  # noqa: E402
    Server,
    free_port,
    require_binary,
    start_berth,
    wait_http,
)

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
HEADING = "## S3: Berth and the reference registry on the same SeaweedFS"


# --------------------------------------------------------------------------- registries


def start_reference_s3(tmp: Path, weed: SeaweedFS, bucket: str, *, redirect: bool) -> Server:
    """docker-registry with its s3 driver on `bucket`; `redirect` is its default (on)."""
    exe = require_binary("docker-registry", "docker-registry")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        "  s3:\n"
        f"    regionendpoint: {weed.endpoint}\n"
        f"    bucket: {bucket}\n"
        f"    region: {weed.region}\n"
        f"    accesskey: {weed.access_key}\n"
        f"    secretkey: {weed.secret_key}\n"
        "    secure: false\n"
        "    v4auth: true\n"
        "  delete:\n    enabled: true\n"
        + ("" if redirect else "  redirect:\n    disable: true\n")
        + f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    # The AWS SDK inside reads AWS_* variables (a CA bundle it cannot load makes it panic).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log_path = tmp / "registry.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([exe, "serve", str(config)], stdout=out, stderr=out, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, None)
    try:
        wait_http(server.url + "/v2/")
    except RuntimeError:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"reference registry did not start:\n{server.log()[-3000:]}") from None
    return server


def start_berth_s3(tmp: Path, weed: SeaweedFS, bucket: str, *, redirect: bool) -> Server:
    env = weed.env(bucket) | {"BERTH_STORAGE_S3_REDIRECT": "true" if redirect else "false"}
    return start_berth(tmp / "data", env=env)


# --------------------------------------------------------------------------- a 1 GiB image


class LayerImage:
    """A one-layer OCI image layout whose layer is an uncompressed tar of `size` random bytes.

    `fresh()` stamps a counter into the file inside the tar and rewrites the layout's digests,
    so every push sends a layer no registry has seen.
    """

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self.count = 0
        payload = root / "payload.bin"
        BlobFile(payload, size)
        self.tar = root / "layer.tar"
        with tarfile.open(self.tar, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("bench/payload.bin")
            info.size = size
            info.mtime = 0
            with payload.open("rb") as f:
                tar.addfile(info, f)
        payload.unlink()
        with tarfile.open(self.tar, "r") as tar:  # where the file's bytes start in the tar
            member = tar.next()
            assert member is not None
            self.data_offset = member.offset_data

    def fresh(self, tag: str) -> tuple[Path, str, int]:
        """A layout dir holding the stamped image; returns (layout, layer digest, layer size)."""
        self.count += 1
        with self.tar.open("r+b") as f:
            f.seek(self.data_offset)
            f.write(f"berth-s3-bench {self.count:08d} {time.time_ns()}\n".encode())
        h = hashlib.sha256()
        with self.tar.open("rb") as f:
            while chunk := f.read(8 * MiB):
                h.update(chunk)
        layer_digest = "sha256:" + h.hexdigest()
        layer_size = self.tar.stat().st_size
        layout = self.root / f"layout-{self.count}"
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        os.link(self.tar, blobs / layer_digest.split(":")[1])  # a hard link: no copy

        def put(data: bytes) -> tuple[str, int]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            (blobs / digest.split(":")[1]).write_bytes(data)
            return digest, len(data)

        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            }
        ).encode()
        config_digest, config_size = put(config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": [
                    {"mediaType": OCI_LAYER_TAR, "digest": layer_digest, "size": layer_size}
                ],
            }
        ).encode()
        manifest_digest, manifest_size = put(manifest)
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (layout / "index.json").write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": OCI_MANIFEST,
                            "digest": manifest_digest,
                            "size": manifest_size,
                            "annotations": {"org.opencontainers.image.ref.name": tag},
                        }
                    ],
                }
            )
        )
        return layout, layer_digest, layer_size


# --------------------------------------------------------------------------- measurements


@dataclass
class Figure:
    """One measurement on one registry: the runs, in MB/s."""

    runs: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)  # other processes' CPU share per run

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None


@dataclass
class Comparison:
    label: str
    berth: str  # the registries compared
    reference: str
    target: float
    figures: dict[str, Figure] = field(default_factory=dict)

    def ratio(self) -> float | None:
        b, r = self.figures[self.berth].median, self.figures[self.reference].median
        return b / r if b and r else None


def timed(bg: system.BackgroundLoad, figure: Figure, size: int, fn: Callable[[], float]) -> float:
    system.settle()
    with bg.watch() as usage:
        seconds = fn()
    figure.runs.append(size / seconds / 1e6)
    figure.busy.append(usage.other_cpu_fraction)
    return seconds


def skopeo_push(side: Side, layout: Path, repo: str, tag: str) -> float:
    return skopeo_isolated(
        [
            "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
            *side.skopeo_creds("--dest-creds"),
            f"oci:{layout}:{tag}", f"docker://{side.server.host}/{repo}:{tag}",
        ]
    )  # fmt: skip


def skopeo_pull(side: Side, repo: str, tag: str, dest: Path, layer_digest: str) -> float:
    try:
        seconds = skopeo_isolated(
            [
                "copy", "--quiet", "--src-tls-verify=false", "--preserve-digests",
                *side.skopeo_creds("--src-creds"),
                f"docker://{side.server.host}/{repo}:{tag}", f"oci:{dest}:{tag}",
            ]
        )  # fmt: skip
        if not (dest / "blobs" / "sha256" / layer_digest.split(":")[1]).exists():
            raise RuntimeError(f"{side.name}: the pulled image lacks its layer")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="blob/layer size in MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="curl,skopeo", help="curl, skopeo or both")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    size = args.size * MiB
    tmp = Path(tempfile.mkdtemp(prefix="berth-bench-s3-", dir=args.tmpdir))
    servers: list[Server] = []
    weed: SeaweedFS | None = None
    bg = system.BackgroundLoad()
    comparisons: list[Comparison] = []
    try:
        log("starting SeaweedFS")
        weed = start_seaweedfs(tmp / "seaweedfs")
        sides: dict[str, Side] = {}
        for name, starter, redirect in (
            ("berth", start_berth_s3, False),
            ("berth-redirect", start_berth_s3, True),
            ("reference", start_reference_s3, True),
            ("reference-proxy", start_reference_s3, False),
        ):
            bucket = "reference" if name.startswith("reference") else weed.new_bucket(name)
            if name == "reference":
                weed.client.create_bucket(Bucket=bucket)
            server = starter(tmp / name, weed, bucket, redirect=redirect)
            servers.append(server)
            sides[name] = Side(name, name.split("-")[0], server, server.credentials)
            log(f"started {name} at {server.url} (bucket {bucket})")

        def compare(label: str, berth: str, reference: str, target: float) -> Comparison:
            c = Comparison(label, berth, reference, target, {berth: Figure(), reference: Figure()})
            comparisons.append(c)
            return c

        if "curl" in only:
            blob = BlobFile(tmp / "blob.bin", size)
            up = compare(f"upload {args.size} MiB, curl POST + PUT", "berth", "reference", 1.5)
            relayed = compare(f"download {args.size} MiB, curl GET", "berth", "reference-proxy", 1)
            redirected = compare(
                f"download {args.size} MiB, curl GET -L, redirected",
                "berth-redirect",
                "reference",
                1,
            )
            stored: dict[str, tuple[str, str]] = {}
            for rep in range(args.repeats):
                for name in ("berth", "reference") if rep % 2 == 0 else ("reference", "berth"):
                    digest = blob.fresh()
                    repo = f"bench/curl{blob.count}"
                    seconds = timed(
                        bg,
                        up.figures[name],
                        size,
                        functools.partial(curl_upload, sides[name], repo, blob.path, digest, size),
                    )
                    stored[name] = (repo, digest)
                    log(f"  curl upload {name}: {size / seconds / 1e6:.1f} MB/s")
            # The same content for the redirecting twins (untimed): the reference pair shares
            # one bucket, so the reference's blob is already there for reference-proxy.
            digest = blob.fresh()
            curl_upload(sides["berth-redirect"], "bench/curl-dl", blob.path, digest, size)
            stored["berth-redirect"] = ("bench/curl-dl", digest)
            stored["reference-proxy"] = stored["reference"]
            blob.path.unlink()
            for rep in range(args.repeats):
                for c in (relayed, redirected):
                    names = (c.berth, c.reference) if rep % 2 == 0 else (c.reference, c.berth)
                    for name in names:
                        repo, digest = stored[name]
                        seconds = timed(
                            bg,
                            c.figures[name],
                            size,
                            functools.partial(curl_download, sides[name], repo, digest, size),
                        )
                        log(f"  curl download {name}: {size / seconds / 1e6:.1f} MB/s")

        if "skopeo" in only:
            image = LayerImage(tmp, size)
            push = compare(f"skopeo push, 1 layer of {args.size} MiB", "berth", "reference", 1.5)
            pull = compare(
                f"skopeo pull, 1 layer of {args.size} MiB", "berth", "reference-proxy", 1
            )
            pull_redirected = compare(
                f"skopeo pull, 1 layer of {args.size} MiB, redirected",
                "berth-redirect",
                "reference",
                1,
            )
            pushed: dict[str, tuple[str, str]] = {}
            with skopeo_cache_mountpoint():
                for rep in range(args.repeats):
                    for name in ("berth", "reference") if rep % 2 == 0 else ("reference", "berth"):
                        layout, layer, _ = image.fresh("v1")
                        repo = f"bench/skopeo{image.count}"
                        seconds = timed(
                            bg,
                            push.figures[name],
                            size,
                            functools.partial(skopeo_push, sides[name], layout, repo, "v1"),
                        )
                        shutil.rmtree(layout)
                        pushed[name] = (repo, layer)
                        log(f"  skopeo push {name}: {seconds:.2f} s")
                layout, layer, _ = image.fresh("v1")
                skopeo_push(sides["berth-redirect"], layout, "bench/skopeo-dl", "v1")
                shutil.rmtree(layout)
                pushed["berth-redirect"] = ("bench/skopeo-dl", layer)
                pushed["reference-proxy"] = pushed["reference"]
                image.tar.unlink()
                for rep in range(args.repeats):
                    for c in (pull, pull_redirected):
                        names = (c.berth, c.reference) if rep % 2 == 0 else (c.reference, c.berth)
                        for name in names:
                            repo, layer = pushed[name]
                            seconds = timed(
                                bg,
                                c.figures[name],
                                size,
                                functools.partial(
                                    skopeo_pull, sides[name], repo, "v1", tmp / "pulled", layer
                                ),
                            )
                            log(f"  skopeo pull {name}: {seconds:.2f} s")
    finally:
        for server in servers:
            server.stop()
        if weed is not None:
            weed.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
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
    weed_version = system.tool_version([str(Path(sys.executable).with_name("weed")), "version"])
    lines = [
        f"{HEADING} ({now})",
        "",
        f"- Machine: `nproc` {info['nproc']}, {info['cpu']}, {info['memory']} RAM, "
        f"kernel {info['kernel']}",
        f"- Python {info['python']}; Berth {info['berth']}; reference: {info['reference']}; "
        f"SeaweedFS: {weed_version}",
        f"- Tools: {info['curl']}; {info['skopeo']}",
        f"- `python -m bench.s3 --size {args.size} --repeats {args.repeats}`: median of "
        f"{args.repeats} runs, MB/s (10^6 B/s); each registry has its own bucket on one "
        "SeaweedFS (`weed server -s3`, loopback)",
        "",
        "| measurement | Berth side | MB/s | reference side | MB/s | ratio | target | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        b, r = c.figures[c.berth], c.figures[c.reference]
        ratio = c.ratio()
        ok = "" if ratio is None else ("met" if ratio >= c.target else "MISSED")
        lines.append(
            f"| {c.label} | {c.berth} | {fmt(b.median)} | {c.reference} | {fmt(r.median)} | "
            f"{'-' if ratio is None else f'{ratio:.2f}x'} | >= {c.target:g}x | {ok} |"
        )
    busy = [x for c in comparisons for f in c.figures.values() for x in f.busy]
    if busy and max(busy) > system.BUSY_FRACTION:
        lines += [
            "",
            f"Warning: other processes used up to {max(busy):.0%} of the CPUs during some runs.",
        ]
    return lines


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())

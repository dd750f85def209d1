"""Vulnerability scanning: SBOM extraction throughput and re-matching after an import.

    python -m bench.scan [--size-mib 1024] [--sboms 1000] [--advisories 5000] [--tmpdir DIR]

1. The Debian 12 minbase image (the debootstrap root the packaging tests cache, one gzip layer
   made by umoci) and a generated image of `--size-mib` MiB (mostly incompressible files, a
   dpkg database, some large ELF executables that are searched for Go build info): Berth's
   extraction (`appliance.scan.layers.read_image`) against `tar -tzf` of the same layer file,
   in MB of compressed layer per second. The target: faster than `tar -tzf`, i.e. a single
   streaming pass.
2. `--sboms` stored SBOMs (the Debian image's, under distinct digests) matched again after an
   import of `--advisories` OSV records for Debian 12 packages (`rematch_all`), in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from appliance.metadata.db import open_database  # noqa: E402
from appliance.scan import sbom, vulndb  # noqa: E402
from appliance.scan.layers import ImageContents, read_image  # noqa: E402
from appliance.scan.service import rematch_all  # noqa: E402

MiB = 1 << 20
CACHE = Path(os.environ.get("BERTH_TEST_CACHE", REPO_ROOT / ".cache"))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def debian_layer(work: Path) -> Path:
    tarball = CACHE / "debootstrap" / "bookworm-minbase.tar"
    if not tarball.exists():
        sys.exit(f"{tarball} is missing: run tests/packaging once (it caches the debootstrap root)")
    layout = work / "debian"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:b"], check=True)
    subprocess.run(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:b", str(tarball)], check=True
    )
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    return layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]


def big_layer(work: Path, size: int) -> Path:
    """A gzip layer of about `size` bytes of tar: random files, a dpkg database, ELF files."""
    raw = work / "big.tar"
    rng = random.Random(7)
    written = 0
    with tarfile.open(raw, "w") as tar:
        info = tarfile.TarInfo("var/lib/dpkg/status")
        status = b"".join(
            f"Package: pkg{i}\nStatus: install ok installed\nVersion: 1.{i}-1\n"
            f"Architecture: amd64\n\n".encode()
            for i in range(2000)
        )
        info.size = len(status)
        tar.addfile(info, io.BytesIO(status))
        i = 0
        while written < size:
            executable = i % 20 == 0
            length = 48 * MiB if executable else rng.randint(64 << 10, 8 * MiB)
            data = (b"\x7fELF" if executable else b"") + os.urandom(length)
            info = tarfile.TarInfo(f"data/{i // 100}/file{i}" + (".bin" if executable else ""))
            info.size = len(data)
            info.mode = 0o755 if executable else 0o644
            tar.addfile(info, io.BytesIO(data))
            written += len(data)
            i += 1
    layer = work / "big.tar.gz"
    with raw.open("rb") as src, gzip.open(layer, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 4 * MiB)
    raw.unlink()
    return layer


def measure(layer: Path, repeats: int = 3) -> dict[str, float]:
    """Median of `repeats` alternating runs of `tar -tzf` and Berth's extraction."""
    size = layer.stat().st_size
    subprocess.run(["cat", str(layer)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    tar_runs, berth_runs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(["tar", "-tzf", str(layer)], stdout=subprocess.DEVNULL, check=True)
        tar_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        contents = read_image([("layer", lambda: layer.open("rb"))])
        berth_runs.append(time.perf_counter() - started)
    tar_s, berth_s = statistics.median(tar_runs), statistics.median(berth_runs)
    return {
        "compressed_mb": size / 1e6,
        "packages": len(contents.packages()),
        "berth_s": berth_s,
        "tar_s": tar_s,
        "berth_mb_s": size / 1e6 / berth_s,
        "tar_mb_s": size / 1e6 / tar_s,
    }


def rematch(work: Path, layer: Path, sboms: int, advisories: int) -> dict[str, float]:
    contents = read_image([("layer", lambda: layer.open("rb"))])
    packages = [p for p in contents.packages() if p.type == "deb"]
    db = open_database(f"sqlite:///{work / 'meta.db'}")
    db.migrate()
    try:
        now = time.time()

        def varied(i: int) -> ImageContents:
            """The image with a few packages at other versions, as images built at other
            times differ."""
            rng = random.Random(i)
            chosen = {p.name for p in rng.sample(packages, 5)}
            found = {
                path: [
                    dataclasses.replace(p, version=f"{p.version}+b{i % 50}")
                    if p.name in chosen
                    else p
                    for p in items
                ]
                for path, items in contents.found.items()
            }
            return ImageContents(contents.os, found)

        def store(tx: object) -> None:
            for i in range(sboms):
                digest = f"sha256:{i:064x}"
                document = sbom.build(digest, "bench/debian", varied(i)).decode()
                tx.execute(  # type: ignore[attr-defined]
                    "INSERT INTO scan_reports (digest, status, sbom, packages, scanned_at) "
                    "VALUES (:d, 'ok', :s, :n, :now)",
                    {"d": digest, "s": document, "n": len(packages), "now": now},
                )

        db.run_sync_write(store)
        folder = work / "osv"
        folder.mkdir()
        rng = random.Random(3)
        for i in range(advisories):
            p = rng.choice(packages)
            name = p.source or p.name
            # One in forty affects the image (fixed later than installed), the rest are fixed
            # already (fixed earlier): both kinds cost a comparison.
            fixed = p.source_version + ("+c1" if i % 40 == 0 else "~pre1")
            record = {
                "schema_version": "1.6.0",
                "id": f"DEBIAN-CVE-2099-{i:05d}",
                "modified": "2024-01-01T00:00:00Z",
                "affected": [
                    {
                        "package": {"ecosystem": "Debian:12", "name": name},
                        "ranges": [
                            {
                                "type": "ECOSYSTEM",
                                "events": [{"introduced": "0"}, {"fixed": fixed}],
                            }
                        ],
                    }
                ],
            }
            (folder / f"{i}.json").write_text(json.dumps(record))
        started = time.perf_counter()
        vulndb.import_path(db.run_sync_write, folder, now, "bench")
        import_s = time.perf_counter() - started
        started = time.perf_counter()
        matched = rematch_all(db.run_sync_read, db.run_sync_write, now)
        rematch_s = time.perf_counter() - started
        findings = db.run_sync_read(
            lambda tx: tx.scalar("SELECT COUNT(*) FROM scan_findings")  # type: ignore[attr-defined]
        )
    finally:
        db.close()
    return {
        "sboms": matched,
        "advisories": advisories,
        "findings": int(findings),
        "import_s": import_s,
        "rematch_s": rematch_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--sboms", type=int, default=1000)
    parser.add_argument("--advisories", type=int, default=5000)
    parser.add_argument("--tmpdir", type=Path, default=None)
    parser.add_argument("--only-rematch", action="store_true", help="skip the layer figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-scan-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        log("building the Debian layer (umoci)")
        deb = debian_layer(work)
        results = {}
        if not args.only_rematch:
            results["debian"] = measure(deb)
            log(f"building a {args.size_mib} MiB layer")
            big = big_layer(work, args.size_mib * MiB)
            results["big"] = measure(big)
            big.unlink()
        log(f"re-matching {args.sboms} SBOMs after importing {args.advisories} advisories")
        results["rematch"] = rematch(work, deb, args.sboms, args.advisories)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

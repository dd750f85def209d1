"""The web console's listing pages with 10,000 repositories (`python -m bench.console`).

    python -m bench.console [--repositories N] [--rounds N]

Fills a fresh SQLite metadata database with N repositories (100 namespaces, each repository one
tagged manifest over one shared blob), starts `berth serve` on it, signs in as the admin through
the console's form, and times each page over `--rounds` requests: the overview (storage by
namespace over every repository), the first, a middle and the last page of the repository list
(keyset pagination: the page after a name), a search, and one repository's tag page. Prints
the median and 95th percentile in milliseconds.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.servers import (  # noqa: E402
    ADMIN,
    ADMIN_PASSWORD,
    berth_command,
    start_berth,
)

DIGEST = "sha256:" + "ab" * 32
MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
    b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'
    + DIGEST.encode()
    + b'","size":2},"layers":[]}'
)


def repository_name(i: int) -> str:
    return f"ns-{i % 100:03d}/app-{i:05d}"


def fill(data_dir: Path, count: int) -> None:
    subprocess.run(
        [*berth_command(), "migrate", "--data-dir", str(data_dir)], check=True, capture_output=True
    )
    db = sqlite3.connect(data_dir / "berth.db")
    now = time.time()
    with db:
        db.execute(
            "INSERT INTO blobs (digest, size, storage_key, created_at) VALUES (?, 2, 'x', ?)",
            (DIGEST, now),
        )
        for i in range(count):
            repo_id = db.execute(
                "INSERT INTO repositories (name, created_at) VALUES (?, ?) RETURNING id",
                (repository_name(i), now),
            ).fetchone()[0]
            db.execute(
                "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES (?,?,?)",
                (repo_id, DIGEST, now),
            )
            manifest_id = db.execute(
                "INSERT INTO manifests (repository_id, digest, media_type, payload, "
                "config_digest, total_size, created_at, pushed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (
                    repo_id,
                    "sha256:" + f"{i:064x}",
                    "application/vnd.oci.image.manifest.v1+json",
                    MANIFEST,
                    DIGEST,
                    len(MANIFEST) + 2,
                    now,
                    ADMIN,
                ),
            ).fetchone()[0]
            db.execute(
                "INSERT INTO tags (repository_id, name, manifest_id, updated_at, pushed_by) "
                "VALUES (?, 'latest', ?, ?, ?)",
                (repo_id, manifest_id, now + i, ADMIN),
            )
    db.close()


def signed_in_opener(base: str) -> urllib.request.OpenerDirector:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = opener.open(base + "/signin").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token is not None
    body = urllib.parse.urlencode(
        {"csrf_token": token.group(1), "username": ADMIN, "password": ADMIN_PASSWORD}
    ).encode()
    page = opener.open(base + "/signin", data=body).read().decode()
    assert "Sign out" in page, page[:500]
    return opener


def timed(opener: urllib.request.OpenerDirector, url: str, rounds: int) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        with opener.open(url) as r:
            r.read()
            assert r.status == 200
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-console-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        started = time.perf_counter()
        fill(data, args.repositories)
        print(f"filled {args.repositories} repositories in {time.perf_counter() - started:.1f} s")
        server = start_berth(data)
        try:
            opener = signed_in_opener(server.url)
            middle = urllib.parse.quote(repository_name(args.repositories // 2))
            last = urllib.parse.quote(repository_name(args.repositories - 60))
            pages = {
                "overview (storage by namespace)": "/",
                "repositories, first page": "/repositories",
                "repositories, middle page": f"/repositories?after={middle}",
                "repositories, a late page": f"/repositories?after={last}",
                "repositories, Z to A": "/repositories?sort=-name",
                "repositories, search 'app-0999'": "/repositories?q=app-0999",
                "one repository's tags": "/r/" + repository_name(1234),
            }
            print(f"| page ({args.repositories} repositories) | median ms | p95 ms |")
            print("|---|---|---|")
            for label, path in pages.items():
                median, p95 = timed(opener, server.url + path, args.rounds)
                print(f"| {label} | {median:.1f} | {p95:.1f} |")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

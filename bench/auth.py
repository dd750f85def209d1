"""What the bearer-token check costs on the hot path: manifest HEAD and GET per second with a
registry token, against the same requests without credentials (anonymous pull of a public
namespace, where no token is checked). Target: the token check costs under 15 %.

Run: `python -m bench.auth [--seconds 5] [--rounds 3] [--connections 32]`. Starts its own
Berth on a free loopback port in a temporary directory; rounds alternate the two sides so
drift on the machine hits both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

from bench import load
from tests.support.servers import start_berth

ACCEPT = "application/vnd.oci.image.manifest.v1+json"


def seed(url: str, creds: tuple[str, str]) -> str:
    """A public namespace `pub` with one small image `pub/app:1`; returns a pull token."""
    with httpx.Client(base_url=url, auth=creds, timeout=30) as c:
        c.post("/api/v1/namespaces", json={"name": "pub", "public": True}).raise_for_status()
        config = b"{}"
        digest = "sha256:" + hashlib.sha256(config).hexdigest()
        c.post(
            "/v2/pub/app/blobs/uploads/", params={"digest": digest}, content=config
        ).raise_for_status()
        manifest = {
            "schemaVersion": 2,
            "mediaType": ACCEPT,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": 2,
            },
            "layers": [],
        }
        c.put(
            "/v2/pub/app/manifests/1",
            content=json.dumps(manifest),
            headers={"content-type": ACCEPT},
        ).raise_for_status()
        token = c.get("/token", params={"service": "berth", "scope": "repository:pub/app:pull"})
        token.raise_for_status()
        return str(token.json()["token"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_berth(Path(tmp) / "data")
        try:
            assert server.credentials is not None
            token = seed(server.url, server.credentials)
            # Token lifetime is 300 s; refresh before every round so none expires mid-run.
            url = server.url + "/v2/pub/app/manifests/1"
            results: dict[tuple[str, str], list[float]] = {}
            for rnd in range(args.rounds):
                token = seed_token(server.url, server.credentials)
                sides = [("anonymous", {}), ("bearer", {"Authorization": f"Bearer {token}"})]
                if rnd % 2:
                    sides.reverse()
                for method in ("HEAD", "GET"):
                    for side, headers in sides:
                        r = load.run(
                            url,
                            method=method,
                            headers={"Accept": ACCEPT, **headers},
                            connections=args.connections,
                            duration=args.seconds,
                        )
                        if r.requests == 0 or r.non_2xx or r.errors:
                            raise RuntimeError(f"{side} {method}: {r.statuses} {r.errors}")
                        rps = r.requests / r.duration_s
                        results.setdefault((method, side), []).append(rps)
                        print(
                            f"round {rnd + 1} {method:4} {side:9} {rps:8.0f} req/s", file=sys.stderr
                        )
        finally:
            server.stop()
    print("| request | without auth (req/s) | bearer token (req/s) | token check costs |")
    print("|---|---|---|---|")
    for method in ("HEAD", "GET"):
        anon = statistics.median(results[(method, "anonymous")])
        bearer = statistics.median(results[(method, "bearer")])
        cost = 100 * (1 - bearer / anon)
        print(f"| manifest {method} | {anon:,.0f} | {bearer:,.0f} | {cost:.1f} % |")
    return 0


def seed_token(url: str, creds: tuple[str, str]) -> str:
    with httpx.Client(base_url=url, auth=creds, timeout=30) as c:
        r = c.get("/token", params={"service": "berth", "scope": "repository:pub/app:pull"})
        r.raise_for_status()
        return str(r.json()["token"])


if __name__ == "__main__":
    sys.exit(main())

"""What the credential check costs on the hot path: manifest HEAD and GET per second with a
registry token and with HTTP Basic, against the same requests without credentials (anonymous
pull of a public namespace, where no credential is checked). Target: the check costs under
15 %.

Run: `python -m bench.auth [--seconds 5] [--rounds 3] [--connections 32] [--before SRC]`.
Starts its own Berth on a free loopback port in a temporary directory; rounds alternate the
sides so drift on the machine hits all alike; the median round is reported. `--before SRC`
also starts the Berth whose source tree is SRC (`git archive REV | tar -x -C SRC`) beside this
one and measures both in the same rounds: the cost of a change, on a busy machine, in one run.
`--in-process` times the registry's guard alone (`bench/asgi_auth_worker.py`, CPU microseconds
per check, no sockets or load generator), alternating the builds' runs: steadier than req/s
when other work shares the machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
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
    p.add_argument("--methods", default="HEAD,GET", help="comma-separated: HEAD,GET")
    p.add_argument("--before", type=Path, help="source tree of the Berth to compare with")
    p.add_argument("--in-process", action="store_true", help="time the guard alone, in µs")
    args = p.parse_args(argv)
    if args.in_process:
        return in_process(args.rounds, args.before)
    methods = [m.strip().upper() for m in args.methods.split(",") if m.strip()]
    builds = (
        {"berth": {}}
        if args.before is None
        else {
            "before": {"PYTHONPATH": str(args.before.resolve()), "PYTHONDONTWRITEBYTECODE": "1"},
            "after": {},
        }
    )
    results: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Pull rate limits off: anonymous requests would otherwise be limited and admins not.
        unlimited = {"BERTH_RATELIMIT_PULL_RATE": "0"}
        servers = {
            name: start_berth(Path(tmp) / name / "data", env={**unlimited, **env})
            for name, env in builds.items()
        }
        try:
            for server in servers.values():
                assert server.credentials is not None
                seed(server.url, server.credentials)
            for rnd in range(args.rounds):
                sides = []
                for name, server in servers.items():
                    assert server.credentials is not None
                    # Token lifetime is 300 s: a fresh one every round, so none expires.
                    token = seed_token(server.url, server.credentials)
                    basic = base64.b64encode(":".join(server.credentials).encode()).decode()
                    url = server.url + "/v2/pub/app/manifests/1"
                    sides += [
                        (name, "anonymous", url, {}),
                        (name, "bearer", url, {"Authorization": f"Bearer {token}"}),
                        (name, "basic", url, {"Authorization": f"Basic {basic}"}),
                    ]
                if rnd % 2:
                    sides.reverse()
                for method in methods:
                    for name, side, url, headers in sides:
                        # One request first: a Basic check is cached after the first argon2
                        # run, and the figure is of the cached path (the stampede of 32
                        # connections missing at once is another matter).
                        httpx.get(url, headers={"Accept": ACCEPT, **headers}, timeout=60)
                        r = load.run(
                            url,
                            method=method,
                            headers={"Accept": ACCEPT, **headers},
                            connections=args.connections,
                            duration=args.seconds,
                        )
                        if r.requests == 0 or r.non_2xx or r.errors:
                            raise RuntimeError(f"{name} {side} {method}: {r.statuses} {r.errors}")
                        rps = r.requests / r.duration_s
                        results.setdefault((name, method, side), []).append(rps)
                        print(
                            f"round {rnd + 1} {name:6} {method:4} {side:9} {rps:8.0f} req/s",
                            file=sys.stderr,
                        )
        finally:
            for server in servers.values():
                server.stop()
    print(
        "| build | request | without auth (req/s) | bearer (req/s) | Basic (req/s) "
        "| bearer costs | Basic costs |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in builds:
        for method in methods:
            anon, bearer, basic = (
                statistics.median(results[(name, method, side)])
                for side in ("anonymous", "bearer", "basic")
            )
            print(
                f"| {name} | manifest {method} | {anon:,.0f} | {bearer:,.0f} | {basic:,.0f} "
                f"| {100 * (1 - bearer / anon):.1f} % | {100 * (1 - basic / anon):.1f} % |"
            )
    return 0


WORKER = Path(__file__).with_name("asgi_auth_worker.py")


def in_process(rounds: int, before: Path | None) -> int:
    """Guard microseconds per manifest GET for this build (and `before`), runs alternated."""
    builds: dict[str, dict[str, str]] = (
        {"berth": {}}
        if before is None
        else {
            "before": {"PYTHONPATH": str(before.resolve()), "PYTHONDONTWRITEBYTECODE": "1"},
            "after": {},
        }
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for rnd in range(rounds):
        order = list(builds.items())
        if rnd % 2:
            order.reverse()
        for name, env in order:
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run(
                    [sys.executable, str(WORKER)],
                    env={**os.environ, **env},
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {rnd + 1} {name:6} {runs[name][-1]}", file=sys.stderr)
    print("| build | anonymous (CPU µs) | bearer (CPU µs) | Basic (CPU µs) |")
    print("|---|---|---|---|")
    for name in builds:
        anon, bearer, basic = (
            statistics.median(r[side] for r in runs[name])
            for side in ("anonymous", "bearer", "basic")
        )
        print(f"| {name} | {anon:.1f} | {bearer:.1f} | {basic:.1f} |")
    return 0


def seed_token(url: str, creds: tuple[str, str]) -> str:
    with httpx.Client(base_url=url, auth=creds, timeout=30) as c:
        r = c.get("/token", params={"service": "berth", "scope": "repository:pub/app:pull"})
        r.raise_for_status()
        return str(r.json()["token"])


if __name__ == "__main__":
    sys.exit(main())

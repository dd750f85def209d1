"""What the operations layer costs on the hot path: manifest GET per second with metrics, the
access log (JSON lines), rate limits and the audit log on, against the same Berth with all of
them off. Target: under 10 % overhead.

Run: `python -m bench.ops [--seconds 5] [--rounds 3] [--connections 32]`. Starts two Berths on
free loopback ports in temporary directories (one per side), serves a small image from each
with an admin bearer token (admins pass the rate limiter's exemption check, which is the cost
a request pays there), and alternates which side goes first on each round, so drift on the
machine hits both alike; the median round is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench import load
from bench.auth import ACCEPT, seed, seed_token
from tests.support.servers import Server, start_berth

ON = {"BERTH_LOG_FORMAT": "json", "BERTH_LOG_ACCESS": "true", "BERTH_METRICS_ENABLED": "true"}
OFF = {
    "BERTH_LOG_FORMAT": "json",
    "BERTH_LOG_ACCESS": "false",
    "BERTH_METRICS_ENABLED": "false",
    "BERTH_RATELIMIT_PULL_RATE": "0",
    "BERTH_RATELIMIT_PUSH_RATE": "0",
    "BERTH_RATELIMIT_SIGNIN_RATE": "0",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=32)
    args = p.parse_args(argv)
    results: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, Server] = {}
        try:
            for side, env in (("off", OFF), ("on", ON)):
                server = servers[side] = start_berth(Path(tmp) / side, env=env)
                assert server.credentials is not None
                seed(server.url, server.credentials)
            for rnd in range(args.rounds):
                order = ["off", "on"] if rnd % 2 == 0 else ["on", "off"]
                for side in order:
                    server = servers[side]
                    assert server.credentials is not None
                    token = seed_token(server.url, server.credentials)  # fresh: tokens expire
                    r = load.run(
                        server.url + "/v2/pub/app/manifests/1",
                        headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"},
                        connections=args.connections,
                        duration=args.seconds,
                    )
                    if r.requests == 0 or r.non_2xx or r.errors:
                        raise RuntimeError(f"{side}: {r.statuses} {r.errors}")
                    rps = r.requests / r.duration_s
                    results[side].append(rps)
                    print(f"round {rnd + 1} {side:3} {rps:8.0f} req/s", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    cost = 100 * (1 - on / off)
    print(
        "| request | all off (req/s) | metrics, access log, limits, audit on (req/s) | overhead |"
    )
    print("|---|---|---|---|")
    print(f"| manifest GET (bearer) | {off:,.0f} | {on:,.0f} | {cost:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

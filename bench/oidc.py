"""OpenID Connect sign-in and CI identity tokens (`python -m bench.oidc`).

    python -m bench.oidc [--rounds N] [--seconds S] [--connections C]

1. Time to the console page through OIDC sign-in: a fresh Chromium context (no session at the
   provider) clicks "Sign in with ..." on Berth's sign-in page, signs in on oidc-provider's
   login page (the local IdP from the npm registry, on loopback), consents, and lands on the
   console's overview; against the same browser signing in with a local password on Berth's
   own form. Median of `--rounds`.
2. The `/token` exchange: `GET /token` with Basic `oidc:<CI identity token>` (a GitLab-shaped
   RS256 JWT from a test issuer on loopback; the issuer's JWKS cached after the first
   exchange) against Basic `<user>:<personal access token>`, both for
   `repository:team/app:pull,push`, C keep-alive connections for S seconds, rounds alternating
   the sides; median requests per second and latency.
3. The same check without HTTP: microseconds per `AccessControl.authenticate()` in one process
   (SQLite, keys cached), PAT against CI token, 200 calls a round.

Each phase says how much CPU other processes used meanwhile (a busy machine is reported, not
hidden). Starts its own oidc-provider, test issuer and Berth in a temporary directory.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import load  # noqa: E402
from bench.system import BackgroundLoad, machine_info  # noqa: E402
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.support.ciissuer import CiIssuer  # noqa: E402
from tests.support.oidcprovider import OIDC_USERS, OidcClient, start_oidc_provider  # noqa: E402
from tests.support.servers import ADMIN, ADMIN_PASSWORD, free_port, start_berth  # noqa: E402

SCOPE = "repository:team/app:pull,push"
PASSWORD = "bench-user-password"


def oidc_signin(browser: Any, berth: str, issuer: str) -> float:
    """Seconds from opening Berth's sign-in page to the console's overview, through OIDC."""
    context = browser.new_context()
    try:
        page = context.new_page()
        start = time.perf_counter()
        page.goto(berth + "/signin")
        with page.expect_navigation(url=issuer + "/**"):
            page.click("#oidc-signin-bench")
        page.fill("input[name=login]", OIDC_USERS[0].login)
        page.fill("input[name=password]", "any")
        with page.expect_navigation():
            page.click("button[type=submit]")
        with page.expect_navigation(url=berth + "/"):
            page.click("button[type=submit]")  # consent
        page.wait_for_selector("header .who")
        return time.perf_counter() - start
    finally:
        context.close()


def local_signin(browser: Any, berth: str) -> float:
    """The same, with the admin's password on Berth's own form."""
    context = browser.new_context()
    try:
        page = context.new_page()
        start = time.perf_counter()
        page.goto(berth + "/signin")
        page.fill("input[name=username]", ADMIN)
        page.fill("input[name=password]", ADMIN_PASSWORD)
        with page.expect_navigation(url=berth + "/"):
            page.click("form[action='/signin'] button[type=submit]")
        page.wait_for_selector("header .who")
        return time.perf_counter() - start
    finally:
        context.close()


def seed(berth: str, issuer: CiIssuer) -> tuple[str, str]:
    """Namespace `team` with a developer, their PAT, and a CI trust rule for issuer's GitLab
    project team/app; returns (Basic header for the PAT, Basic header for a CI token)."""
    with httpx.Client(base_url=berth, auth=(ADMIN, ADMIN_PASSWORD), timeout=30) as admin:
        admin.post("/api/v1/namespaces", json={"name": "team"}).raise_for_status()
        admin.post("/api/v1/users", json={"name": "dev", "password": PASSWORD}).raise_for_status()
        admin.put("/api/v1/namespaces/team/members/dev", json={"role": "developer"})
        admin.post(
            "/api/v1/namespaces/team/ci-trust",
            json={
                "issuer": issuer.url,
                "audience": berth,
                "claims": {"project_path": "team/app", "ref_protected": "true"},
                "access": "push",
                "repository": "app",
            },
        ).raise_for_status()
    with httpx.Client(base_url=berth, auth=("dev", PASSWORD), timeout=30) as dev:
        r = dev.post("/api/v1/tokens", json={"name": "bench", "scopes": ["write_registry"]})
        r.raise_for_status()
        pat = r.json()["token"]
    claims = issuer.gitlab(time.time(), berth)
    claims["exp"] = int(time.time()) + 3600  # outlives the run
    token = issuer.sign(claims)

    def basic(user: str, secret: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()

    return basic("dev", pat), basic("oidc", token)


def in_process(issuer: CiIssuer, rounds: int, calls: int) -> dict[str, list[float]]:
    """Microseconds per `AccessControl.authenticate()` in one process (SQLite on a temporary
    directory, keys cached): a PAT against a CI identity token, rounds alternating."""
    import trio  # noqa: PLC0415

    from appliance import config as settings  # noqa: PLC0415
    from appliance.auth import accounts  # noqa: PLC0415
    from appliance.auth.citrust import RuleSpec  # noqa: PLC0415
    from appliance.server import open_services  # noqa: PLC0415

    out: dict[str, list[float]] = {"pat": [], "ci": []}

    async def run(tmp: str) -> None:
        config = settings.load(
            None,
            environ={},
            overrides={
                "server.data_dir": tmp,
                "admin.password": ADMIN_PASSWORD,
                "ci_trust.allow_http_loopback": True,
            },
        )
        services = await open_services(config)
        access = services.access
        try:
            now = time.time()

            def setup(tx: Any) -> str:
                accounts.add_user(tx, "bench", "dev", None, now)
                accounts.create_namespace(tx, "bench", "team", now)
                accounts.set_member(tx, "bench", "team", "dev", "developer", now)
                spec = RuleSpec("team", issuer.url, "aud", {"project_path": "team/app"}, "push")
                access.ci.add(tx, "bench", spec, now, admin=True)
                _, pat = accounts.create_pat(
                    tx, "bench", access.secret, "dev", "b", ("write_registry",), now
                )
                return pat

            pat = await access.change(setup)
            claims = issuer.gitlab(now, "aud")
            claims["exp"] = int(now) + 3600
            token = issuer.sign(claims)
            sides = {"pat": ("dev", pat), "ci": ("oidc", token)}
            for user, secret in sides.values():  # warm: keys fetched, caches filled
                await access.authenticate(user, secret, "127.0.0.1")
            for rnd in range(rounds):
                for side in ["pat", "ci"] if rnd % 2 == 0 else ["ci", "pat"]:
                    user, secret = sides[side]
                    start = time.perf_counter()
                    for _ in range(calls):
                        await access.authenticate(user, secret, "127.0.0.1")
                    out[side].append((time.perf_counter() - start) / calls * 1e6)
        finally:
            services.close()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=8)
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    background = BackgroundLoad()
    times: dict[str, list[float]] = {"oidc": [], "local": []}
    rates: dict[str, list[float]] = {"pat": [], "ci": []}
    latency: dict[str, list[float]] = {"pat": [], "ci": []}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        client = OidcClient("berth", "bench-secret", (base + "/oidc/bench/callback",))
        idp = start_oidc_provider(Path(tmp) / "idp", [client], OIDC_USERS)
        issuer = CiIssuer()
        secret = Path(tmp) / "secret"
        secret.write_text("bench-secret")
        env = {
            "BERTH_OIDC_BENCH_ISSUER": idp.issuer,
            "BERTH_OIDC_BENCH_CLIENT_ID": "berth",
            "BERTH_OIDC_BENCH_CLIENT_SECRET_FILE": str(secret),
            "BERTH_OIDC_BENCH_ALLOW_HTTP": "true",
            "BERTH_OIDC_BENCH_SCOPES": "openid profile email groups",
            "BERTH_CI_TRUST_ALLOW_HTTP_LOOPBACK": "true",
            "BERTH_SCAN_ENABLED": "false",
            "BERTH_RATELIMIT_SIGNIN_RATE": "0",
        }
        berth = start_berth(Path(tmp) / "data", env=env, listen=f"127.0.0.1:{port}")
        try:
            manager = sync_playwright().start()
            browser = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                oidc_signin(browser, berth.url, idp.issuer)  # warm: discovery, keys, account
                local_signin(browser, berth.url)
                with background.phase("sign-in"):
                    for rnd in range(args.rounds):
                        order = ["oidc", "local"] if rnd % 2 == 0 else ["local", "oidc"]
                        for side in order:
                            if side == "oidc":
                                seconds = oidc_signin(browser, berth.url, idp.issuer)
                            else:
                                seconds = local_signin(browser, berth.url)
                            times[side].append(seconds)
            finally:
                browser.close()
                manager.stop()
            pat, ci = seed(berth.url, issuer)
            url = f"{berth.url}/token?service=berth&scope={SCOPE}"
            for header in (pat, ci):  # warm: the JWKS is fetched once, here
                r = httpx.get(url, headers={"authorization": header}, timeout=30)
                r.raise_for_status()
            with background.phase("token"):
                for rnd in range(args.rounds):
                    sides = [("pat", pat), ("ci", ci)]
                    if rnd % 2:
                        sides.reverse()
                    for side, header in sides:
                        result = load.run(
                            url,
                            headers={"Authorization": header},
                            connections=args.connections,
                            duration=args.seconds,
                        )
                        if result.requests == 0 or result.non_2xx or result.errors:
                            raise RuntimeError(f"{side}: {result.statuses} {result.errors}")
                        rates[side].append(result.rps)
                        latency[side].append(result.latency_ms.get("p50", 0.0))
                        print(f"round {rnd + 1} {side:3} {result.rps:7.0f} req/s", file=sys.stderr)
            fetches = issuer.hits["/jwks"]
            with background.phase("in-process"):
                micro = in_process(issuer, args.rounds, 200)
        finally:
            berth.stop()
            issuer.stop()
            idp.stop()
    info = machine_info()
    print(f"- Machine: `nproc` {info['nproc']}, {info['cpu']}, {info['memory']}")
    print(f"- Python {info['python']}; Berth {info['berth']}; oidc-provider 9 on Node")
    for name, usage in background.phases.items():
        note = " (BUSY: figures are noisy)" if usage.busy else ""
        print(f"- {name} phase: {usage.describe()}{note}")
    print()
    print("Ratio: the OIDC or CI-token figure over the local-password or PAT one.")
    print()
    print("| measurement | OIDC / CI token | local password / PAT | ratio |")
    print("|---|---|---|---|")
    oidc, local = statistics.median(times["oidc"]), statistics.median(times["local"])
    print(
        f"| sign-in to the console page, median of {args.rounds} (s) | {oidc:.3f} | "
        f"{local:.3f} | {oidc / local:.2f}x |"
    )
    ci_rps, pat_rps = statistics.median(rates["ci"]), statistics.median(rates["pat"])
    print(
        f"| /token exchange, {args.connections} connections (req/s) | {ci_rps:,.0f} | "
        f"{pat_rps:,.0f} | {ci_rps / pat_rps:.2f}x |"
    )
    ci_p50, pat_p50 = statistics.median(latency["ci"]), statistics.median(latency["pat"])
    print(f"| /token exchange, p50 latency (ms) | {ci_p50:.1f} | {pat_p50:.1f} | |")
    ci_us, pat_us = statistics.median(micro["ci"]), statistics.median(micro["pat"])
    print(
        f"| sign-in check in process, `authenticate()` (µs per call) | {ci_us:,.0f} | "
        f"{pat_us:,.0f} | {ci_us / pat_us:.2f}x |"
    )
    print(f"\nJWKS fetched {fetches} time(s) for all the CI exchanges (cached).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

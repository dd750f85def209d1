"""CI identity tokens as registry credentials, in process: trust rules and their checks, the
token exchange (`docker login -u oidc`), the attacks a verifier of foreign JWTs must refuse,
the issuer's keys fetched over real HTTP from a test issuer on loopback and cached, and the
management API. Real clients (skopeo, docker) pushing with such tokens: tests/e2e/test_ci_tokens.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from appliance.app import create_app
from appliance.auth import accounts
from appliance.auth.citrust import RuleSpec
from appliance.auth.globs import check_glob, glob_match
from appliance.errors import InvalidName
from appliance.metadata import audit
from appliance.metadata import citrust as records
from appliance.server import Services, open_services
from tests.api.conftest import FakeClock, api_client, make_config
from tests.auth.conftest import PASSWORD, add_user
from tests.auth.test_tokens import push_image
from tests.support.ciissuer import CiIssuer

AUDIENCE = "https://berth.test"
PUSH = "repository:team/app:pull,push"


@pytest.fixture
async def services(data_dir: Any, clock: FakeClock) -> AsyncIterator[Services]:
    config = make_config(data_dir, **{"ci_trust.allow_http_loopback": True})
    s = await open_services(config, clock)

    async def no_sleep(seconds: float) -> None:
        pass  # failed sign-ins are answered late; the time waited is not what these tests test

    s.access.sleep = no_sleep
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def app(services: Services) -> Any:
    return create_app(services.registry, access=services.access)


@pytest.fixture
async def anon(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(app, auth=None) as c:
        yield c


async def make_team(services: Services, clock: FakeClock) -> None:
    await add_user(services, "maint", clock)
    await add_user(services, "dev", clock)

    def fn(tx: Any) -> None:
        accounts.create_namespace(tx, "test", "team", clock())
        accounts.set_member(tx, "test", "team", "maint", "maintainer", clock())
        accounts.set_member(tx, "test", "team", "dev", "developer", clock())

    await services.access.change(fn)


async def add_rule(services: Services, clock: FakeClock, **fields: Any) -> int:
    spec = RuleSpec(
        **{
            "namespace": "team",
            "issuer": "",
            "audience": AUDIENCE,
            "claims": {"project_path": "team/app", "ref_protected": "true"},
            "access": "push",
            "repository": "app",
            **fields,
        }
    )
    rule = await services.access.change(
        lambda tx: services.access.ci.add(tx, "test", spec, clock(), admin=True)
    )
    return int(rule.id)


async def exchange(client: httpx.AsyncClient, token: str, *scopes: str) -> httpx.Response:
    return await client.get(
        "/token",
        params={"service": "berth", "scope": list(scopes or (PUSH,))},
        auth=("oidc", token),
    )


def access_of(body: dict[str, Any]) -> dict[str, list[str]]:
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    return {a["name"]: a["actions"] for a in claims["access"]}


# -- globs -------------------------------------------------------------------------------------


def test_repository_globs() -> None:
    assert glob_match("app", "app")
    assert not glob_match("app", "app/web")
    assert glob_match("app/*", "app/web")
    assert not glob_match("app/*", "app/web/x"), "* stays within one segment"
    assert glob_match("app/**", "app/web/x")
    assert glob_match("**", "anything/at/all")
    assert glob_match("svc-?", "svc-a")
    assert not glob_match("svc-?", "svc-ab")
    assert not glob_match("a?b", "a/b"), "? is not a slash"
    assert glob_match("*-api", "billing-api")
    assert not glob_match("*-api", "x/billing-api")
    # A pattern that sends a backtracking matcher into exponential time is a quick no here.
    assert not glob_match("*a" * 60 + "*b", "a" * 200)
    for bad in ("", "x" * 129, "App", "a[b]", "a\\b", "a{b,c}", "***"):
        with pytest.raises(InvalidName):
            check_glob(bad)


# -- rules -------------------------------------------------------------------------------------


async def test_rules_are_checked_before_they_are_stored(
    services: Services, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    trust = services.access.ci

    def refused(admin: bool = True, **fields: Any) -> str:
        spec = RuleSpec(
            **{
                "namespace": "team",
                "issuer": ci_issuer.url,
                "audience": AUDIENCE,
                "claims": {"project_path": "team/app"},
                "access": "push",
                **fields,
            }
        )
        with pytest.raises(InvalidName) as info:
            trust.check(spec, admin=admin)
        return info.value.message

    assert "at least one claim condition" in refused(claims={})
    assert "must condition 'repository'" in refused(
        issuer="https://token.actions.githubusercontent.com", claims={"ref": "refs/heads/main"}
    )
    assert "must condition 'project_path'" in refused(template="gitlab", claims={"ref": "main"})
    assert "checked by Berth itself" in refused(claims={"aud": "x"})
    assert "pull or push" in refused(access="delete")
    assert "must be https" in refused(issuer="ftp://ci.example.org")
    assert "repository glob" in refused(repository="a[bc]")
    assert "audience" in refused(audience="")
    assert "private or symmetric" in refused(
        jwks=json.dumps({"keys": [ci_issuer.rsa.as_dict(private=True)]})
    )
    # Maintainers name only the issuers of ci_trust.issuers, unless they bring the keys.
    assert "ask an instance admin" in refused(admin=False)
    with_keys = RuleSpec("team", ci_issuer.url, AUDIENCE, {"project_path": "team/app"}, "push")
    with_keys = RuleSpec(**{**with_keys.__dict__, "jwks": json.dumps(ci_issuer.jwks())})
    assert trust.check(with_keys, admin=False).jwks is not None
    github = trust.check(
        RuleSpec("team", "", AUDIENCE, {"repository": "acme/app"}, "pull", template="github"),
        admin=False,
    )
    assert github.issuer == "https://token.actions.githubusercontent.com"
    assert github.repository == "**"


async def test_http_issuers_need_the_loopback_test_setting(data_dir: Any, clock: FakeClock) -> None:
    services = await open_services(make_config(data_dir), clock)
    try:
        spec = RuleSpec("team", "http://127.0.0.1:9/ci", AUDIENCE, {"project_path": "a/b"}, "push")
        with pytest.raises(InvalidName, match="loopback address needs the explicit test setting"):
            services.access.ci.check(spec, admin=True)
    finally:
        services.close()


# -- the token exchange -------------------------------------------------------------------------


async def test_a_gitlab_job_token_pushes_where_its_rule_allows(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    rule = await add_rule(services, clock, issuer=ci_issuer.url)
    token = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    r = await exchange(anon, token, PUSH, "repository:team/other:pull,push", "repository:x/y:pull")
    assert r.status_code == 200, r.text
    body = r.json()
    assert access_of(body) == {"team/app": ["pull", "push"]}, "only what the rule grants"
    identity_exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    registry = jwt.decode(body["token"], options={"verify_signature": False})
    assert registry["exp"] <= identity_exp, "the registry token never outlives the identity token"
    assert registry["sub"] == "ci:project_path:team/app:ref_type:branch:ref:main"

    async with api_client(create_app(services.registry, access=services.access), None) as c:
        c.headers["authorization"] = f"Bearer {body['token']}"
        await push_image(c, "team/app")
    # Every use is audited with the rule and the claims that matched.
    events = await services.access.db.read(lambda tx: audit.events(tx, 50, "signin.success"))
    ci = [e for e in events if e["details"].get("via") == "ci"]
    assert ci, events
    assert ci[0]["details"]["rules"] == [rule]
    assert ci[0]["details"]["claims"]["project_path"] == "team/app"
    assert ci[0]["details"]["claims"]["ref_protected"] == "true"
    assert ci[0]["details"]["issuer"] == ci_issuer.url


async def test_a_short_lived_identity_token_caps_the_registry_token(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url)
    claims = ci_issuer.gitlab(clock(), AUDIENCE)
    claims["exp"] = int(clock()) + 42
    r = await exchange(anon, ci_issuer.sign(claims))
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] == 42, "not the usual 300 s"
    offline = await anon.get(
        "/token",
        params={"service": "berth", "scope": PUSH, "offline_token": "true"},
        auth=("oidc", ci_issuer.sign(claims)),
    )
    assert offline.status_code == 200
    assert "refresh_token" not in offline.json(), "nothing outlives the identity token"


async def test_basic_on_v2_with_a_github_token_and_a_pull_only_rule(
    services: Services, app: Any, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    await add_rule(
        services,
        clock,
        issuer=ci_issuer.url,
        claims={"repository": "acme/app", "ref": "refs/heads/main"},
        access="push",
        repository="gh/**",
    )
    token = ci_issuer.sign(ci_issuer.github(clock(), AUDIENCE), key="ec")  # ES256 too
    async with api_client(app, ("oidc", token)) as c:
        await push_image(c, "team/gh/app")
        assert (await c.get("/v2/team/gh/app/manifests/1")).status_code == 200
        r = await c.post("/v2/team/app/blobs/uploads/")
        assert r.status_code == 403, "signed in, but no rule covers team/app"
    feature = ci_issuer.sign(ci_issuer.github(clock(), AUDIENCE, ref="refs/heads/feature"))
    async with api_client(app, ("oidc", feature)) as c:
        r = await c.get("/v2/team/gh/app/manifests/1")
        assert r.status_code == 401, "another branch: refused"


REASONS = {
    "expired": "expired",
    "not-yet-valid": "not yet valid",
    "issued-in-the-future": "issued in the future",
    "no-expiry": "Missing claim: 'exp'",
    "wrong-audience": "audience is 'https://other-registry.example'",
    "claim-mismatch": "claim 'ref_protected' is 'false', not 'true'",
    "unknown-kid": "no key 'not-a-key-of-the-issuer'",
    "alg-none": "algorithm 'none' is not accepted",
    "hs256-with-public-key": "algorithm 'HS256' is not accepted",
    "untrusted-issuer": "no CI trust rule names the issuer",
    "tampered-claims": "signature is not valid",
    "garbage": "not a JSON Web Token",
}


@pytest.mark.parametrize(
    "attack",
    [
        "expired",
        "not-yet-valid",
        "issued-in-the-future",
        "no-expiry",
        "wrong-audience",
        "claim-mismatch",
        "unknown-kid",
        "alg-none",
        "hs256-with-public-key",
        "untrusted-issuer",
        "tampered-claims",
        "garbage",
    ],
)
async def test_tokens_that_are_refused(
    services: Services,
    anon: httpx.AsyncClient,
    clock: FakeClock,
    ci_issuer: CiIssuer,
    attack: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url)
    good = ci_issuer.gitlab(clock(), AUDIENCE)
    assert (await exchange(anon, ci_issuer.sign(good))).status_code == 200  # the control
    now = int(clock())
    if attack == "expired":
        token = ci_issuer.sign({**good, "iat": now - 900, "nbf": now - 900, "exp": now - 61})
    elif attack == "not-yet-valid":
        token = ci_issuer.sign({**good, "nbf": now + 300})
    elif attack == "issued-in-the-future":
        token = ci_issuer.sign({**good, "iat": now + 300})
    elif attack == "no-expiry":
        token = ci_issuer.sign({k: v for k, v in good.items() if k != "exp"})
    elif attack == "wrong-audience":
        token = ci_issuer.sign({**good, "aud": "https://other-registry.example"})
    elif attack == "claim-mismatch":
        token = ci_issuer.sign({**good, "ref_protected": "false"})
    elif attack == "unknown-kid":
        token = ci_issuer.sign(good, kid="not-a-key-of-the-issuer")
    elif attack == "alg-none":
        token = ci_issuer.alg_none(good)
    elif attack == "hs256-with-public-key":
        token = ci_issuer.hs256_with_public_key(good)
    elif attack == "untrusted-issuer":
        stranger = CiIssuer()
        try:
            token = stranger.sign(stranger.gitlab(clock(), AUDIENCE))
        finally:
            stranger.stop()
        assert stranger.hits == {}, "an issuer no rule names is never contacted"
    elif attack == "tampered-claims":
        head, _, rest = ci_issuer.sign(good).partition(".")
        _, _, signature = rest.partition(".")
        forged = {**good, "project_path": "team/app", "ref_protected": "true", "aud": AUDIENCE}
        forged["sub"] = "someone-else"
        payload = jwt.utils.base64url_encode(json.dumps(forged).encode()).decode()
        token = f"{head}.{payload}.{signature}"
    else:
        token = "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln"
    caplog.set_level("INFO", "berth.auth")
    r = await exchange(anon, token)
    assert r.status_code == 401, (attack, r.text)
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "token" not in r.json()
    # Refused for the right reason (the log says why; the client learns nothing).
    why = " ".join(m for m in caplog.messages if "CI identity token refused" in m)
    assert REASONS[attack] in why, why


async def test_keys_are_cached_and_unknown_kids_refetch_at_most_once_a_while(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url)
    for _ in range(3):
        r = await exchange(anon, ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE)))
        assert r.status_code == 200
    assert ci_issuer.hits["/jwks"] == 1, "fetched once, then cached"
    # The issuer rotates: a token signed with a key Berth has not seen makes it look again...
    from joserfc.jwk import RSAKey  # noqa: PLC0415

    new = RSAKey.generate_key(2048, parameters={"kid": "ci-rsa-2", "use": "sig"})
    ci_issuer.published.append(new)
    clock.advance(61)  # past ci_trust.jwks_refresh_interval since the first fetch
    ci_issuer.rsa = new
    rotated = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    assert (await exchange(anon, rotated)).status_code == 200
    assert ci_issuer.hits["/jwks"] == 2
    # ...but made-up key ids cannot make Berth hammer the issuer.
    for _ in range(5):
        bogus = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE), kid="made-up")
        assert (await exchange(anon, bogus)).status_code == 401
    assert ci_issuer.hits["/jwks"] == 2, "no fetch within the refresh interval"


async def test_removing_the_rule_refuses_the_next_exchange(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    rule = await add_rule(services, clock, issuer=ci_issuer.url)
    token = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    assert (await exchange(anon, token)).status_code == 200
    await services.access.change(
        lambda tx: services.access.ci.remove(tx, "test", records.require(tx, rule), clock())
    )
    assert (await exchange(anon, token)).status_code == 401


@pytest.fixture
async def second_worker(data_dir: Any, clock: FakeClock, services: Services) -> AsyncIterator[Any]:
    """Another process of the same host: its own caches, the same database and stamp file."""
    other = await open_services(
        make_config(data_dir, **{"ci_trust.allow_http_loopback": True}), clock
    )
    try:
        yield create_app(other.registry, access=other.access)
    finally:
        other.close()


async def test_a_registry_token_from_a_ci_token_stops_when_its_rule_is_removed(
    services: Services,
    app: Any,
    second_worker: Any,
    clock: FakeClock,
    ci_issuer: CiIssuer,
) -> None:
    """The attack: a job (or whoever copied its registry token out of a CI log) keeps pushing
    with a registry token issued before its trust rule was removed. The removal, made on one
    worker, refuses the next request on another, both with that registry token and with the
    identity token itself as Basic credentials, although each worker had it cached."""
    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url, repository="**")
    token = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    async with api_client(second_worker, None) as there:
        r = await exchange(there, token)
        assert r.status_code == 200, r.text
        registry = r.json()["token"]
        crd = jwt.decode(registry, options={"verify_signature": False})["crd"]
        assert crd.startswith("ci:"), "the registry token names the CI job's credential"
        there.headers["authorization"] = f"Bearer {registry}"
        await push_image(there, "team/app")
        assert (await there.get("/v2/team/app/manifests/1")).status_code == 200
        basic = {"authorization": "Basic " + _basic("oidc", token)}
        assert (await there.get("/v2/team/app/manifests/1", headers=basic)).status_code == 200

        async with api_client(app, ("maint", PASSWORD)) as maint:  # the first worker
            (rule,) = (await maint.get("/api/v1/namespaces/team/ci-trust")).json()
            r = await maint.delete(f"/api/v1/namespaces/team/ci-trust/{rule['id']}")
            assert r.status_code == 200, r.text

        r = await there.get("/v2/team/app/manifests/1")
        assert r.status_code == 401, r.text
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        r = await there.put(
            "/v2/team/app/manifests/2",
            content=b"{}",
            headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 401, "no push either"
        assert (await there.get("/v2/team/app/manifests/1", headers=basic)).status_code == 401
        assert (await exchange(there, token)).status_code == 401


async def test_a_registry_token_from_a_ci_token_holds_only_what_its_rules_still_grant(
    services: Services, app: Any, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    """Two rules matched (push on team/app, pull everywhere in team); the push rule removed,
    the registry token already issued may still pull but no longer push."""
    await make_team(services, clock)
    push_rule = await add_rule(services, clock, issuer=ci_issuer.url)
    await add_rule(services, clock, issuer=ci_issuer.url, access="pull", repository="**")
    token = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    async with api_client(app, None) as anon:
        registry = (await exchange(anon, token)).json()["token"]
        anon.headers["authorization"] = f"Bearer {registry}"
        await push_image(anon, "team/app")
        await services.access.change(
            lambda tx: services.access.ci.remove(
                tx, "test", records.require(tx, push_rule), clock()
            )
        )
        assert (await anon.get("/v2/team/app/manifests/1")).status_code == 200
        r = await anon.post("/v2/team/app/blobs/uploads/")
        assert r.status_code == 403, r.text


async def test_a_rule_added_is_seen_by_a_job_signed_in_with_basic_on_v2(
    services: Services, app: Any, second_worker: Any, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    """A job whose Basic sign-in is cached with the grants it had gets a new rule's grants on
    its next request, on another worker too (the Basic cache is stamped like every other)."""
    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url, access="pull", repository="**")
    token = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    async with api_client(second_worker, ("oidc", token)) as job:
        r = await job.post("/v2/team/app/blobs/uploads/")
        assert r.status_code == 403, "pull only, so far"
        async with api_client(app, ("maint", PASSWORD)) as maint:  # the first worker
            body = {
                "issuer": ci_issuer.url,
                "audience": AUDIENCE,
                "claims": {"project_path": "team/app"},
                "access": "push",
                "repository": "app",
                "jwks": ci_issuer.jwks(),
            }
            r = await maint.post("/api/v1/namespaces/team/ci-trust", json=body)
            assert r.status_code == 201, r.text
        r = await job.post("/v2/team/app/blobs/uploads/")
        assert r.status_code == 202, r.text


def _basic(user: str, password: str) -> str:
    import base64  # noqa: PLC0415

    return base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_failed_ci_sign_ins_do_not_lock_out_every_job(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    """All jobs sign in as `oidc`: failures count against the address, not that name."""
    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url)
    wrong = ci_issuer.sign({**ci_issuer.gitlab(clock(), AUDIENCE), "aud": "elsewhere"})
    for _ in range(15):  # more than an account's threshold (10), fewer than an address's (50)
        assert (await exchange(anon, wrong)).status_code == 401
    good = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
    assert (await exchange(anon, good)).status_code == 200


async def test_offline_rule_with_the_issuers_keys_fetches_nothing(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    jwks = json.dumps(ci_issuer.jwks())
    await add_rule(services, clock, issuer="https://ci.internal.example", jwks=jwks)
    claims = {**ci_issuer.gitlab(clock(), AUDIENCE), "iss": "https://ci.internal.example"}
    assert (await exchange(anon, ci_issuer.sign(claims))).status_code == 200
    assert ci_issuer.hits == {}, "the keys came with the rule"


# -- the management API -------------------------------------------------------------------------


async def test_rules_in_the_management_api(
    services: Services, app: Any, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    await make_team(services, clock)
    body = {
        "issuer": ci_issuer.url,
        "audience": AUDIENCE,
        "claims": {"project_path": "team/app", "ref_protected": "true"},
        "access": "push",
        "repository": "app",
        "jwks": ci_issuer.jwks(),
    }
    async with api_client(app, ("dev", PASSWORD)) as dev:
        r = await dev.post("/api/v1/namespaces/team/ci-trust", json=body)
        assert r.status_code == 403, "developers do not manage trust"
    async with api_client(app, ("maint", PASSWORD)) as maint:
        r = await maint.post("/api/v1/namespaces/team/ci-trust", json={**body, "jwks": None})
        assert r.status_code == 400, "a maintainer may not make Berth fetch from any URL"
        assert "ci_trust.issuers" in r.json()["error"]
        r = await maint.post("/api/v1/namespaces/team/ci-trust", json=body)
        assert r.status_code == 201, r.text
        rule = r.json()
        assert rule["claims"] == body["claims"]
        assert rule["jwks"] is True
        listed = (await maint.get("/api/v1/namespaces/team/ci-trust")).json()
        assert [x["id"] for x in listed] == [rule["id"]]

        good = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
        r = await maint.post("/api/v1/namespaces/team/ci-trust/test", json={"token": good})
        assert r.json()["signature_verified"] is True
        assert r.json()["rules"] == [{"id": rule["id"], "matches": True, "reasons": []}]
        bad = ci_issuer.sign({**ci_issuer.gitlab(clock(), AUDIENCE), "ref_protected": "false"})
        verdict = (
            await maint.post("/api/v1/namespaces/team/ci-trust/test", json={"token": bad})
        ).json()
        assert verdict["rules"][0]["matches"] is False
        assert verdict["rules"][0]["reasons"] == ["claim 'ref_protected' is 'false', not 'true'"]

        r = await maint.delete(f"/api/v1/namespaces/team/ci-trust/{rule['id']}")
        assert r.status_code == 200
        assert (await maint.get("/api/v1/namespaces/team/ci-trust")).json() == []
        templates = (await maint.get("/api/v1/ci-trust/templates")).json()
        assert {t["name"] for t in templates} == {"gitlab", "github", "forgejo"}
    async with api_client(app, None) as anon:
        spec = (await anon.get("/api/v1/openapi.json")).json()
    assert {"get", "post"} <= set(spec["paths"]["/namespaces/{ns}/ci-trust"])
    assert "delete" in spec["paths"]["/namespaces/{ns}/ci-trust/{rule_id}"]
    assert "post" in spec["paths"]["/namespaces/{ns}/ci-trust/test"]


async def test_concurrent_first_exchanges_share_one_fetch(
    services: Services, anon: httpx.AsyncClient, clock: FakeClock, ci_issuer: CiIssuer
) -> None:
    """Jobs arriving while the issuer's keys are being fetched wait for that fetch: none is
    refused for want of keys, and the keys are fetched once."""
    import trio  # noqa: PLC0415

    await make_team(services, clock)
    await add_rule(services, clock, issuer=ci_issuer.url)
    statuses: list[int] = []

    async def one() -> None:
        token = ci_issuer.sign(ci_issuer.gitlab(clock(), AUDIENCE))
        statuses.append((await exchange(anon, token)).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert statuses == [200] * 8
    assert ci_issuer.hits["/jwks"] == 1

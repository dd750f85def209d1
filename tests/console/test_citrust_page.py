"""The namespace's CI trust rules page in a real browser: a maintainer adds a rule from the
GitHub Actions template (bringing the issuer's keys, so nothing is fetched), tests tokens with
the "test this token" form (which rule would match, and why not), and removes the rule; a
developer of the namespace may not see the page. Tokens are signed by the test issuer's key
and name GitHub's issuer."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.support.browser import console_signin, screenshot
from tests.support.ciissuer import CiIssuer
from tests.support.servers import Server

GITHUB = "https://token.actions.githubusercontent.com"
PASSWORD = "a-long-console-password"


@pytest.fixture(scope="module")
def issuer(module_ci_issuer: CiIssuer) -> CiIssuer:
    return module_ci_issuer


@pytest.fixture(scope="module")
def team(console_berth: Server) -> str:
    with httpx.Client(base_url=console_berth.url, auth=console_berth.credentials) as admin:
        admin.post("/api/v1/namespaces", json={"name": "citeam"}).raise_for_status()
        for user, role in (("cimaint", "maintainer"), ("cidev", "developer")):
            r = admin.post("/api/v1/users", json={"name": user, "password": PASSWORD})
            r.raise_for_status()
            admin.put(f"/api/v1/namespaces/citeam/members/{user}", json={"role": role})
    return "citeam"


def github_token(issuer: CiIssuer, audience: str, ref: str = "refs/heads/main") -> str:
    claims = issuer.github(time.time(), audience, repository="acme/app", ref=ref)
    return issuer.sign({**claims, "iss": GITHUB})


def test_add_test_and_remove_a_rule(
    page: Any, console_berth: Server, team: str, issuer: CiIssuer
) -> None:
    console_signin(page, console_berth, "cimaint", PASSWORD)
    page.goto(f"{console_berth.url}/namespaces/{team}")
    page.click("#ci-trust-link")
    assert "No rules" in page.inner_text("#ci-rules")
    page.select_option("select[name=template]", "github")
    page.fill("input[name=audience]", console_berth.url)
    page.fill("textarea[name=claims]", "repository=acme/app\nref=refs/heads/main")
    page.select_option("select[name=access]", "push")
    page.fill("input[name=repository]", "app")
    page.fill("textarea[name=jwks]", json.dumps(issuer.jwks()))
    page.click("#add-rule button[type=submit]")
    page.wait_for_load_state()
    assert "added" in page.inner_text(".notice")
    rules = page.inner_text("#ci-rules")
    assert GITHUB in rules
    assert "repository = acme/app" in rules
    assert "JWKS given" in rules

    page.fill("#test-token textarea[name=token]", github_token(issuer, console_berth.url))
    page.click("#test-token button[type=submit]")
    page.wait_for_load_state()
    result = page.inner_text("#token-result")
    assert "Accepted" in result
    assert "(signature verified)" in result
    screenshot(page, "ci-trust-test-accepted")

    feature = github_token(issuer, console_berth.url, ref="refs/heads/feature")
    page.fill("#test-token textarea[name=token]", feature)
    page.click("#test-token button[type=submit]")
    page.wait_for_load_state()
    result = page.inner_text("#token-result")
    assert "Refused" in result
    assert "claim 'ref' is 'refs/heads/feature', not 'refs/heads/main'" in result
    screenshot(page, "ci-trust-test-refused")

    page.fill("#test-token textarea[name=token]", "<script>alert(1)</script>")
    page.click("#test-token button[type=submit]")
    page.wait_for_load_state()
    assert "not a JSON Web Token" in page.inner_text("#token-result")

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#ci-rules button.danger")
    page.wait_for_load_state()
    assert "removed" in page.inner_text(".notice")
    assert "No rules" in page.inner_text("#ci-rules")


def test_developers_may_not_manage_trust(page: Any, console_berth: Server, team: str) -> None:
    console_signin(page, console_berth, "cidev", PASSWORD)
    response = page.goto(f"{console_berth.url}/namespaces/{team}/ci-trust")
    assert response.status == 403
    page.goto(f"{console_berth.url}/namespaces/{team}")
    assert page.locator("#ci-trust-link").count() == 0

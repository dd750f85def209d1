"""CI jobs pushing with their own identity token, with real clients: skopeo (`--dest-creds
oidc:TOKEN`) and the docker CLI and engine (`docker login -u oidc`), against a real Berth whose
CI trust rules (made with `berth ci-trust add`) trust a test issuer on loopback that signs
tokens shaped like GitLab CI's and GitHub Actions'. They push where a rule allows and are
refused where none does; expired, wrong-audience, unknown-kid, `alg: none`, HS256-with-the-
public-key and untrusted-issuer tokens do not even log in."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import TARGET
from tests.support.ciissuer import CiIssuer
from tests.support.clients import DockerDaemon, Skopeo, ToolError
from tests.support.images import ImageCache
from tests.support.servers import Server, berth_command, start_berth

pytestmark = pytest.mark.skipif(TARGET != "berth", reason="Berth's CI trust rules")


@pytest.fixture(scope="module")
def issuer(module_ci_issuer: CiIssuer) -> CiIssuer:
    return module_ci_issuer


@pytest.fixture(scope="module")
def berth(tmp_path_factory: pytest.TempPathFactory, issuer: CiIssuer) -> Iterator[Server]:
    """A Berth with namespace `ci` and two rules: GitLab project ci/app on a protected branch
    may push `ci/app/**`; GitHub repository acme/web on main may push `ci/web`."""
    data = tmp_path_factory.mktemp("ci-berth") / "data"
    env = {"BERTH_CI_TRUST_ALLOW_HTTP_LOOPBACK": "true", "BERTH_SCAN_ENABLED": "false"}
    server = start_berth(data, env=env)
    try:
        with httpx.Client(base_url=server.url, auth=server.credentials, timeout=30) as admin:
            admin.post("/api/v1/namespaces", json={"name": "ci"}).raise_for_status()
        audience = server.url
        gitlab = "--template gitlab --claim project_path=ci/app --claim ref_protected=true"
        github = "--template github --claim repository=acme/web --claim ref=refs/heads/main"
        for rule in (
            [*gitlab.split(), "--repository", "app/**"],
            [*github.split(), "--repository", "web"],
        ):
            result = subprocess.run(
                [
                    *berth_command(),
                    "ci-trust",
                    "add",
                    "ci",
                    "--issuer",
                    issuer.url,
                    "--audience",
                    audience,
                    "--access",
                    "push",
                    "--data-dir",
                    str(data),
                    *rule,
                ],
                capture_output=True,
                text=True,
                env={"PATH": "/usr/bin:/bin", "BERTH_CI_TRUST_ALLOW_HTTP_LOOPBACK": "true"},
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("rule "), result.stdout
        listed = subprocess.run(
            [*berth_command(), "ci-trust", "list", "ci", "--data-dir", str(data)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout.splitlines()
        assert len(listed) == 2
        assert "project_path=ci/app ref_protected=true" in listed[0]
        yield server
    finally:
        assert server.stop() == 0


def gitlab_token(issuer: CiIssuer, berth: Server, **overrides: object) -> str:
    return issuer.sign({**issuer.gitlab(time.time(), berth.url, project="ci/app"), **overrides})


def test_skopeo_pushes_with_a_gitlab_job_token_where_the_rule_allows(
    berth: Server, issuer: CiIssuer, images: ImageCache, tmp_path: Path
) -> None:
    skopeo = Skopeo(tmp_path / "skopeo")
    busybox = images.busybox()
    creds = f"oidc:{gitlab_token(issuer, berth)}"
    digest = skopeo.push(busybox, f"docker://{berth.host}/ci/app/busybox:1", creds=creds)
    assert digest == busybox.manifest_digest
    assert skopeo.list_tags(f"docker://{berth.host}/ci/app/busybox", creds=creds) == ["1"]
    for outside in ("ci/web:1", "ci/other/busybox:1", "elsewhere/busybox:1"):
        with pytest.raises(ToolError):
            skopeo.push(busybox, f"docker://{berth.host}/{outside}", creds=creds)
    unprotected = f"oidc:{gitlab_token(issuer, berth, ref_protected='false')}"
    with pytest.raises(ToolError):
        skopeo.push(busybox, f"docker://{berth.host}/ci/app/busybox:2", creds=unprotected)
    # Every use is audited, naming the job by its subject, with the claims that matched.
    with httpx.Client(base_url=berth.url, auth=berth.credentials, timeout=30) as admin:
        events = admin.get("/api/v1/audit", params={"action": "signin.success"}).json()
    ci = [e for e in events["events"] if e["details"].get("via") == "ci"]
    assert ci
    assert ci[0]["actor"] == "ci:project_path:ci/app:ref_type:branch:ref:main"
    assert ci[0]["details"]["claims"]["ref_protected"] == "true"


def test_docker_login_with_a_github_job_token_pushes_and_is_refused_elsewhere(
    berth: Server,
    issuer: CiIssuer,
    dockerd: DockerDaemon,
    images: ImageCache,
    tmp_path: Path,
) -> None:
    docker = dockerd.client(tmp_path / "cfg")
    skopeo = Skopeo(tmp_path / "skopeo")
    token = issuer.sign(issuer.github(time.time(), berth.url, repository="acme/web"), key="ec")
    docker.login(berth.host, "oidc", token)
    archive = tmp_path / "busybox.tar"
    skopeo.copy(
        images.busybox().ref, f"docker-archive:{archive}:ci-busybox:1", preserve_digests=False
    )
    local = docker.load(archive)
    allowed = f"{berth.host}/ci/web:1"
    denied = f"{berth.host}/ci/app/web:1"
    try:
        docker.tag(local, allowed)
        assert docker.push(allowed).startswith("sha256:")
        docker.tag(local, denied)
        with pytest.raises(ToolError, match=r"denied|unauthorized"):
            docker.push(denied)
    finally:
        # The engine is shared by the session: leave no image behind for the other tests.
        for name in (denied, allowed, local):
            if docker.has_image(name):
                docker.rmi(name)
    docker.logout(berth.host)


@pytest.mark.parametrize(
    "attack",
    [
        "expired",
        "wrong-audience",
        "unknown-kid",
        "alg-none",
        "hs256-with-public-key",
        "untrusted-issuer",
    ],
)
def test_refused_tokens_do_not_log_in(
    berth: Server, issuer: CiIssuer, dockerd: DockerDaemon, tmp_path: Path, attack: str
) -> None:
    now = time.time()
    claims = issuer.gitlab(now, berth.url, project="ci/app")
    if attack == "expired":
        token = issuer.sign({**claims, "iat": int(now) - 900, "exp": int(now) - 120})
    elif attack == "wrong-audience":
        token = issuer.sign({**claims, "aud": "https://some-other-registry.example"})
    elif attack == "unknown-kid":
        token = issuer.sign(claims, kid="rotated-away")
    elif attack == "alg-none":
        token = issuer.alg_none(claims)
    elif attack == "hs256-with-public-key":
        token = issuer.hs256_with_public_key(claims)
    else:
        stranger = CiIssuer()
        try:
            token = stranger.sign(stranger.gitlab(now, berth.url, project="ci/app"))
        finally:
            stranger.stop()
    docker = dockerd.client(tmp_path / "cfg")
    with pytest.raises(ToolError, match=r"unauthorized|401|incorrect"):
        docker.login(berth.host, "oidc", token)
    # The control: the same client logs in with a good token.
    docker.login(berth.host, "oidc", gitlab_token(issuer, berth))
    docker.logout(berth.host)

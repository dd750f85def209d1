"""A CI system's token issuer for tests: signs JWTs shaped like GitLab CI's and GitHub Actions'
identity tokens and serves its discovery document and JWKS on loopback.

It holds an RSA key (RS256) and an EC P-256 key (ES256); both are in its JWKS. The server is
Python's threading HTTP server on a port of its own, in a daemon thread, counting the requests
for each path (tests check that keys are cached and that refreshes are rate-limited).
`hs256_with_public_key` and `alg_none` make the two classic forgeries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CiIssuer:
    """An issuer at http://127.0.0.1:PORT (or with a path, like Forgejo's `/api/actions`)."""

    def __init__(self, path: str = "") -> None:
        self.rsa = RSAKey.generate_key(2048, parameters={"kid": "ci-rsa-1", "use": "sig"})
        self.ec = ECKey.generate_key("P-256", parameters={"kid": "ci-ec-1", "use": "sig"})
        self.published = [self.rsa, self.ec]
        self.hits: Counter[str] = Counter()
        self.path = path
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits[self.path] += 1
                if self.path == issuer.path + "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.url,
                        "jwks_uri": issuer.url + "/jwks",
                        "subject_types_supported": ["public"],
                        "response_types_supported": ["id_token"],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                        "claims_supported": ["sub", "aud", "exp", "iat", "iss"],
                    }
                elif self.path == issuer.path + "/jwks":
                    body = KeySet(list(issuer.published)).as_dict(private=False)  # type: ignore[assignment]
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet(list(self.published)).as_dict(private=False))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def sign(
        self, claims: dict[str, Any], *, key: str = "rsa", kid: str | None = None, **header: Any
    ) -> str:
        signer = self.rsa if key == "rsa" else self.ec
        alg = "RS256" if key == "rsa" else "ES256"
        head = {"alg": alg, "typ": "JWT", "kid": kid or signer.kid, **header}
        return jwt.encode(head, claims, signer, algorithms=[alg])

    def base_claims(self, now: float, audience: str, lifetime: float = 300) -> dict[str, Any]:
        return {
            "iss": self.url,
            "aud": audience,
            "iat": int(now),
            "nbf": int(now) - 5,
            "exp": int(now + lifetime),
            "jti": uuid.uuid4().hex,
        }

    def gitlab(
        self,
        now: float,
        audience: str,
        project: str = "team/app",
        ref: str = "main",
        protected: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """Claims as GitLab CI puts them in a job's `id_tokens`."""
        namespace = project.rsplit("/", 1)[0]
        return {
            **self.base_claims(now, audience),
            "sub": f"project_path:{project}:ref_type:branch:ref:{ref}",
            "namespace_id": "72",
            "namespace_path": namespace,
            "project_id": "1234",
            "project_path": project,
            "user_id": "7",
            "user_login": "dev",
            "user_email": "dev@example.org",
            "pipeline_id": "100",
            "pipeline_source": "push",
            "job_id": "555",
            "ref": ref,
            "ref_type": "branch",
            "ref_path": f"refs/heads/{ref}",
            "ref_protected": "true" if protected else "false",
            "runner_id": 1,
            "runner_environment": "self-hosted",
            **extra,
        }

    def github(
        self,
        now: float,
        audience: str,
        repository: str = "acme/app",
        ref: str = "refs/heads/main",
        **extra: Any,
    ) -> dict[str, Any]:
        """Claims as GitHub Actions puts them in a job's OIDC token."""
        owner = repository.split("/", 1)[0]
        return {
            **self.base_claims(now, audience),
            "sub": f"repo:{repository}:ref:{ref}",
            "ref": ref,
            "sha": "0" * 40,
            "repository": repository,
            "repository_owner": owner,
            "repository_owner_id": "9",
            "run_id": "1",
            "run_number": "1",
            "run_attempt": "1",
            "repository_visibility": "private",
            "repository_id": "42",
            "actor_id": "3",
            "actor": "octo",
            "workflow": "build",
            "head_ref": "",
            "base_ref": "",
            "event_name": "push",
            "ref_type": "branch",
            "workflow_ref": f"{repository}/.github/workflows/build.yml@{ref}",
            "job_workflow_ref": f"{repository}/.github/workflows/build.yml@{ref}",
            "runner_environment": "github-hosted",
            **extra,
        }

    def alg_none(self, claims: dict[str, Any]) -> str:
        head = {"alg": "none", "typ": "JWT", "kid": self.rsa.kid}
        return f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}."

    def hs256_with_public_key(self, claims: dict[str, Any]) -> str:
        """The algorithm-confusion forgery: HMAC-SHA256 keyed with the issuer's public key PEM
        (which anyone can download), in the hope the verifier uses it as an HMAC secret."""
        head = {"alg": "HS256", "typ": "JWT", "kid": self.rsa.kid}
        signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
        secret = self.rsa.as_pem(private=False)
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(signature)}"


def _running() -> Iterator[CiIssuer]:
    issuer = CiIssuer()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def ci_issuer() -> Iterator[CiIssuer]:
    """A fresh issuer for one test (its request counts start at zero)."""
    yield from _running()


@pytest.fixture(scope="module")
def module_ci_issuer() -> Iterator[CiIssuer]:
    """One issuer for a module's tests (a Berth started per module trusts it)."""
    yield from _running()


__all__ = ["CiIssuer", "ci_issuer", "module_ci_issuer"]

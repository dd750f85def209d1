"""CI identity tokens as registry credentials: trust rules per namespace, and the check of a
token against them.

GitLab CI, GitHub Actions and Forgejo Actions hand a job a short-lived JWT signed by the CI
system, naming the project, the branch and more. `docker login -u oidc -p "$ID_TOKEN"` (Basic on
`/v2` and on `/token`) signs such a job in when a rule of some namespace trusts the token:

1. its issuer (`iss`) is the rule's issuer, and its signature checks out against the issuer's
   keys: fetched through the issuer's discovery document and cached (`auth/jwks.py`), or the
   JWKS document stored with the rule for offline sites. Only asymmetric algorithms the key's
   type allows are accepted (`none` and HS256-with-the-public-key are refused);
2. its time window holds (`exp` required; `exp`, `nbf` and `iat` with `ci_trust.clock_skew`);
3. its audience (`aud`) includes the rule's audience, and every claim condition of the rule
   holds (exact match; booleans and numbers compare as their JSON text: `ref_protected=true`).

Each matching rule grants pull (or pull and push) on the namespace's repositories whose path
matches the rule's glob. The job's credential (`auth/credentials.py`) is
`ci:<expiry>:<rule ids>:<subject>`: registry tokens issued to it name it, and the registry
re-checks it on every request (`holder`): it works while it has not expired and any of the
rules that matched still exists, and grants only what those rules grant now. Removing a rule
touches the `auth` change topic, so the next request on any worker sees it. The registry token
issued lasts no longer than the identity token. Every use is audited with the rules and the
claims that matched. A token whose issuer no rule
names is refused without any fetch, so an unknown caller cannot make Berth reach anywhere.

Rules are managed by instance admins and by the namespace's maintainers. Maintainers may name
only the issuers of `ci_trust.issuers` (or bring the keys as a JWKS document): an arbitrary
issuer URL would make Berth fetch from wherever it points. Every rule needs at least one claim
condition, and a rule for a shared issuer (GitHub, gitlab.com, ...) or made from a template
must condition the claim that names the project: otherwise any project of that CI system could
push.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from appliance.auth import jwks
from appliance.auth.globs import check_glob
from appliance.auth.jwks import ForeignTokenError, IssuerKeys, KeysUnavailable
from appliance.auth.policy import Principal, RepositoryGrant
from appliance.config import Config
from appliance.errors import InvalidName
from appliance.metadata import audit
from appliance.metadata import citrust as records
from appliance.metadata.citrust import TrustRule
from appliance.metadata.db import Database, Tx

log = logging.getLogger("berth.auth")

USERNAME = "oidc"  # the user name CI jobs sign in with
CREDENTIAL = "ci"  # the kind of a CI job's credential (`ci:<expiry>:<rule ids>:<subject>`)
MAX_RULES_NAMED = 1000  # rule ids a credential may name (more is no credential of ours)
ACCESS: dict[str, frozenset[str]] = {
    "pull": frozenset({"pull"}),
    "push": frozenset({"pull", "push"}),
}
MAX_CLAIMS = 20
MAX_VALUE = 500
MAX_JWKS = 64 * 1024
SIGNATURE_CACHE = 2000
RESERVED_CLAIMS = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_PRINTABLE = re.compile(r"[\x20-\x7e]+")


@dataclass(frozen=True)
class Template:
    """Ready-made claim names of one CI system."""

    name: str
    title: str
    issuer: str  # empty: each install has its own (self-hosted)
    project_claim: str  # the claim naming the project: a rule must condition it
    examples: tuple[tuple[str, str], ...]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "gitlab",
            "GitLab CI",
            "https://gitlab.com",
            "project_path",
            (("project_path", "group/project"), ("ref_protected", "true"), ("ref", "main")),
        ),
        Template(
            "github",
            "GitHub Actions",
            "https://token.actions.githubusercontent.com",
            "repository",
            (("repository", "owner/repo"), ("ref", "refs/heads/main")),
        ),
        Template(
            "forgejo",
            "Forgejo Actions",
            "",  # https://<your forgejo>/api/actions
            "repository",
            (("repository", "owner/repo"), ("ref", "refs/heads/main")),
        ),
    )
}
# Issuers whose tokens any of their many users can get: a rule must name the project.
SHARED_ISSUERS = {
    "https://token.actions.githubusercontent.com": "repository",
    "https://gitlab.com": "project_path",
    "https://codeberg.org/api/actions": "repository",
}


@dataclass(frozen=True)
class RuleSpec:
    """A rule as asked for (from the CLI, the API or the console), before its checks."""

    namespace: str
    issuer: str
    audience: str
    claims: Mapping[str, str]
    access: str
    repository: str = "**"
    jwks: str | None = None  # a JWKS document (JSON text)
    template: str | None = None
    description: str = ""


def parse_claims(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`KEY=VALUE` items (CLI and forms) as a dict; raises InvalidName for a malformed one."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidName(f"a claim condition is KEY=VALUE, not {item[:100]!r}")
        out[key.strip()] = value.strip()
    return out


def claim_text(value: object) -> str | None:
    """How a claim compares with a condition: strings as they are, booleans and numbers as
    their JSON text; None for anything else (lists, objects, null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


class CiTrust:
    """Trust rules and the check of CI identity tokens against them."""

    def __init__(
        self, db: Database, config: Config, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.clock = clock
        self.skew = float(config["ci_trust.clock_skew"])
        self.allow_http = bool(config["ci_trust.allow_http_loopback"])
        self.maintainer_issuers = frozenset(
            i.strip() for i in str(config["ci_trust.issuers"]).split(",") if i.strip()
        )
        self.keys = IssuerKeys(
            clock,
            ttl=float(config["ci_trust.jwks_ttl"]),
            refresh_interval=float(config["ci_trust.jwks_refresh_interval"]),
            full=False,
            allow_http=self.allow_http,
        )
        self._offline: dict[str, KeySet] = {}  # parsed JWKS documents of rules, by their text
        # sha256 of a token whose signature checked out → (the keys it was checked with, its
        # claims); only validly signed tokens get in, so nobody can fill it with junk.
        self._signatures: dict[bytes, tuple[KeySet, dict[str, Any]]] = {}

    # -- rules -----------------------------------------------------------------------------

    def check(self, spec: RuleSpec, *, admin: bool) -> RuleSpec:
        """`spec` normalized, or InvalidName saying what is wrong with it."""
        template = None
        if spec.template:
            template = TEMPLATES.get(spec.template)
            if template is None:
                raise InvalidName(
                    f"unknown template {spec.template[:50]!r}: one of {', '.join(TEMPLATES)}"
                )
        issuer = spec.issuer.strip() or (template.issuer if template else "")
        if not issuer:
            raise InvalidName("a rule needs the issuer of the CI system's tokens")
        try:
            jwks.check_url(issuer, allow_http_loopback=self.allow_http, what="issuer")
        except KeysUnavailable as e:
            raise InvalidName(e.message) from None
        document = None
        if spec.jwks is not None and spec.jwks.strip():
            if len(spec.jwks) > MAX_JWKS:
                raise InvalidName(f"a JWKS document is at most {MAX_JWKS} bytes")
            try:
                parsed = json.loads(spec.jwks)
                jwks.parse_key_set(parsed)
            except ValueError:
                raise InvalidName("the JWKS document is not JSON") from None
            except KeysUnavailable as e:
                raise InvalidName(e.message) from None
            document = json.dumps(parsed, sort_keys=True)
        if not admin and document is None and issuer not in self.maintainer_issuers:
            raise InvalidName(
                f"namespace maintainers may trust only the issuers of ci_trust.issuers "
                f"({', '.join(sorted(self.maintainer_issuers)) or 'none'}), or bring the "
                f"issuer's keys as a JWKS document; ask an instance admin for {issuer!r}"
            )
        audience = spec.audience.strip()
        if not audience or len(audience) > MAX_VALUE or not _PRINTABLE.fullmatch(audience):
            raise InvalidName("a rule needs an audience: printable text of at most 500 characters")
        claims: dict[str, str] = {}
        for key, value in spec.claims.items():
            if not _CLAIM_NAME.fullmatch(key):
                raise InvalidName(f"{key[:100]!r} is not a claim name")
            if key in RESERVED_CLAIMS:
                raise InvalidName(f"the claim {key!r} is checked by Berth itself; leave it out")
            if not value or len(value) > MAX_VALUE or not _PRINTABLE.fullmatch(value):
                raise InvalidName(f"the condition on {key!r} needs printable text (≤ 500)")
            claims[key] = value
        if not claims:
            raise InvalidName(
                "a rule needs at least one claim condition (KEY=VALUE): without one it would "
                "trust every job of the issuer"
            )
        if len(claims) > MAX_CLAIMS:
            raise InvalidName(f"a rule has at most {MAX_CLAIMS} claim conditions")
        project = SHARED_ISSUERS.get(issuer) or (template.project_claim if template else None)
        if project is not None and project not in claims:
            raise InvalidName(
                f"a rule for {issuer} must condition {project!r} (the project the job runs "
                "for): otherwise any project there could use it"
            )
        if spec.access not in ACCESS:
            raise InvalidName(f"access is pull or push, not {spec.access[:20]!r}")
        description = spec.description.strip()[:200]
        if description and not _PRINTABLE.fullmatch(description):
            raise InvalidName("the description must be printable text")
        return RuleSpec(
            spec.namespace,
            issuer,
            audience,
            claims,
            spec.access,
            check_glob(spec.repository.strip() or "**"),
            document,
            template.name if template else None,
            description,
        )

    def add(self, tx: Tx, actor: str, spec: RuleSpec, now: float, *, admin: bool) -> TrustRule:
        """Check and store a rule, audited (in `tx`)."""
        ok = self.check(spec, admin=admin)
        rule = records.add(
            tx,
            ok.namespace,
            ok.issuer,
            ok.audience,
            dict(ok.claims),
            ok.access,
            ok.repository,
            jwks=ok.jwks,
            template=ok.template,
            description=ok.description,
            created_by=actor,
            now=now,
        )
        audit.record(
            tx,
            actor,
            "ci_trust.add",
            f"{rule.namespace}/{rule.id}",
            at=now,
            issuer=rule.issuer,
            audience=rule.audience,
            claims=dict(rule.claims),
            access=rule.access,
            repository=rule.repository,
            offline_keys=rule.jwks is not None,
        )
        return rule

    @staticmethod
    def remove(tx: Tx, actor: str, rule: TrustRule, now: float) -> None:
        records.delete(tx, rule.id)
        audit.record(
            tx, actor, "ci_trust.remove", f"{rule.namespace}/{rule.id}", at=now, issuer=rule.issuer
        )

    # -- tokens ----------------------------------------------------------------------------

    async def evaluate(
        self, token: str, rules: list[TrustRule], peeked: jwks.Verified | None = None
    ) -> Evaluation:
        """Check `token` against `rules`: which match, and why each other one does not.
        Fetches keys only for issuers the rules name. `peeked`: the token's unverified header
        and claims, when the caller has read them already."""
        try:
            peeked = peeked or jwks.peek(token)
        except ForeignTokenError as e:
            return Evaluation(problem=e.message)
        issuer = peeked.claims.get("iss")
        keys: dict[str | None, KeySet | str] = {}  # key source → keys, or why there are none
        for rule in rules:
            if rule.issuer == issuer and rule.jwks not in keys:
                keys[rule.jwks] = await self._keys(issuer, peeked, rule.jwks)
        return self._evaluate(token, peeked, rules, keys)

    async def _keys(self, issuer: str, peeked: jwks.Verified, document: str | None) -> KeySet | str:
        if document is not None:
            return self._offline_keys(document)
        kid = peeked.header.get("kid")
        try:
            return await self.keys.keys(issuer, kid if isinstance(kid, str) else None)
        except KeysUnavailable as e:
            return e.message

    def _offline_keys(self, document: str) -> KeySet | str:
        keys = self._offline.get(document)
        if keys is None:
            try:
                keys = jwks.parse_key_set(json.loads(document))
            except (KeysUnavailable, ValueError) as e:
                return getattr(e, "message", str(e))
            if len(self._offline) > 1000:
                self._offline.clear()
            self._offline[document] = keys
        return keys

    def _evaluate(
        self,
        token: str,
        peeked: jwks.Verified,
        rules: list[TrustRule],
        keys: Mapping[str | None, KeySet | str],
    ) -> Evaluation:
        """`evaluate` once each key source's keys are at hand (no I/O)."""
        result = Evaluation(unverified=peeked.claims)
        issuer = peeked.claims.get("iss")
        if not isinstance(issuer, str):
            result.problem = "the token names no issuer (iss)"
            return result
        verified: dict[str | None, dict[str, Any] | str] = {}  # key source → claims or why not
        for rule in rules:
            if rule.issuer != issuer:
                result.verdicts.append(
                    Verdict(rule, [f"the token's issuer is {issuer[:200]!r}, not {rule.issuer!r}"])
                )
                continue
            if rule.jwks not in verified:
                verified[rule.jwks] = self._verify(token, peeked, issuer, keys[rule.jwks])
            outcome = verified[rule.jwks]
            if isinstance(outcome, str):
                result.verdicts.append(Verdict(rule, [outcome]))
                continue
            result.verified = outcome
            result.verdicts.append(Verdict(rule, self._mismatches(rule, outcome)))
        return result

    def _verify(
        self, token: str, peeked: jwks.Verified, issuer: str, keys: KeySet | str
    ) -> dict[str, Any] | str:
        """The claims of `token` when its signature and time window check out against the
        issuer's `keys`; otherwise why not."""
        if isinstance(keys, str):
            return keys
        # A job exchanges the same token several times (login, then each push): the signature
        # is checked once per token and set of keys; the time window and rules every time.
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._signatures.get(digest)
        if hit is not None and hit[0] is keys:
            claims = hit[1]
        else:
            try:
                claims = jwks.verify(token, keys, peeked.header).claims
            except ForeignTokenError as e:
                return e.message
            if len(self._signatures) >= SIGNATURE_CACHE:
                self._signatures.clear()
            if len(token) <= 4096:
                self._signatures[digest] = (keys, claims)
        registry = JWTClaimsRegistry(
            now=int(self.clock()),
            leeway=int(self.skew),
            exp={"essential": True},
            iss={"essential": True, "value": issuer},
        )
        try:
            registry.validate(claims)
        except JoseError as e:
            return f"the token is not valid now: {e.description}"
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
            return "the token has no expiry"
        return claims

    @staticmethod
    def _mismatches(rule: TrustRule, claims: Mapping[str, Any]) -> list[str]:
        reasons = []
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if rule.audience not in audiences:
            reasons.append(f"the token's audience is {aud!r}, not {rule.audience!r}")
        for key, wanted in rule.claims:
            if key not in claims:
                reasons.append(f"the token has no claim {key!r}")
                continue
            actual = claim_text(claims[key])
            if actual != wanted:
                shown = actual if actual is not None else json.dumps(claims[key])[:100]
                reasons.append(f"claim {key!r} is {shown[:200]!r}, not {wanted!r}")
        return reasons

    async def authenticate(self, token: str) -> Principal:
        """The principal a CI identity token stands for; audited. Raises TokenRefused.

        The token endpoint is a hot path: when the issuer's keys are cached (the usual case),
        the rules are read, the token checked and the use audited in one transaction, so an
        exchange costs one trip to the database, like a personal access token's. Otherwise
        the keys are fetched first (outside any transaction) and the same is done after."""
        try:
            peeked = jwks.peek(token)
        except ForeignTokenError as e:
            raise TokenRefused([e.message]) from None
        issuer = peeked.claims.get("iss")
        if not isinstance(issuer, str) or len(issuer) > 1000:
            raise TokenRefused(["the token names no issuer"])
        kid = peeked.header.get("kid")
        cached = self.keys.cached(issuer, kid if isinstance(kid, str) else None)
        now = self.clock()

        def fn(tx: Tx) -> Principal | list[TrustRule] | Evaluation:
            rules = records.for_issuer(tx, issuer)
            if not rules:
                return Evaluation(problem=f"no CI trust rule names the issuer {issuer[:200]!r}")
            if cached is None and any(r.jwks is None for r in rules):
                return rules  # the keys must be fetched first
            keys: dict[str | None, KeySet | str] = {}
            for rule in rules:
                source = rule.jwks
                keys[source] = cached or "no keys" if source is None else self._offline_keys(source)
            return self._admit(tx, issuer, self._evaluate(token, peeked, rules, keys), now)

        outcome = await self.db.write(fn)
        if isinstance(outcome, list):
            result = await self.evaluate(token, outcome, peeked)
            outcome = result
            if any(v.matched for v in result.verdicts):
                outcome = await self.db.write(lambda tx: self._admit(tx, issuer, result, now))
        if isinstance(outcome, Evaluation):
            reasons = [r for v in outcome.verdicts for r in v.reasons]
            raise TokenRefused([outcome.problem] if outcome.problem else reasons or ["refused"])
        return outcome

    @staticmethod
    def _admit(tx: Tx, issuer: str, result: Evaluation, now: float) -> Principal | Evaluation:
        """The principal of the rules `result` matched, its use audited in `tx`; `result`
        itself when none matched."""
        matched = [v.rule for v in result.verdicts if v.matched]
        if not matched or result.verified is None:
            return result
        claims = result.verified
        subject = _printable(str(claims.get("sub") or "unknown"))[:200]
        expires = int(claims["exp"])
        credential = credential_of(matched, subject, expires)
        principal = principal_of(matched, subject, expires, credential)
        shown = {"sub": subject, "aud": claims.get("aud"), "jti": claims.get("jti")}
        for rule in matched:
            for key, _ in rule.claims:
                shown[key] = claims.get(key)
        audit.record(
            tx,
            principal.actor,
            "signin.success",
            principal.name,
            at=now,
            via="ci",
            issuer=issuer,
            rules=[r.id for r in matched],
            namespaces=sorted({r.namespace for r in matched}),
            claims=shown,
            expires_at=principal.expires_at,
        )
        return principal


def credential_of(rules: Iterable[TrustRule], subject: str, expires_at: int) -> str:
    """The credential of a CI job whose identity token (subject `subject`, expiring at
    `expires_at`) matched `rules`."""
    ids = ",".join(str(i) for i in sorted({r.id for r in rules}))
    return f"{CREDENTIAL}:{expires_at}:{ids}:{subject}"


def principal_of(
    rules: Iterable[TrustRule], subject: str, expires_at: int, credential: str
) -> Principal:
    """A CI job holding the grants of `rules` until `expires_at`."""
    return Principal(
        "ci",
        subject,
        via=CREDENTIAL,
        credential=credential,
        expires_at=float(expires_at),
        grants=tuple(RepositoryGrant(r.namespace, r.repository, ACCESS[r.access]) for r in rules),
    )


def holder(tx: Tx, credential: str, now: float) -> Principal | None:
    """The CI job `credential` (`credential_of`) stands for now: the grants of the rules it
    names that still exist (a rule is never edited, and its id never reused); None once it
    has expired or none of them is left."""
    kind, _, rest = credential.partition(":")
    expiry, _, rest = rest.partition(":")
    listed, _, subject = rest.partition(":")
    if kind != CREDENTIAL or not expiry.isdigit() or not subject or int(expiry) <= now:
        return None
    ids = listed.split(",")
    if len(ids) > MAX_RULES_NAMED or not all(i.isdigit() and len(i) <= 19 for i in ids):
        return None
    rules = records.by_ids(tx, (int(i) for i in ids))
    if not rules:
        return None
    return principal_of(rules, subject, int(expiry), credential)


class TokenRefused(Exception):
    """No trust rule accepts the token; `reasons` say why (for logs, never for the client)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Verdict:
    """One rule against one token: it matches when there is no reason it does not."""

    rule: TrustRule
    reasons: list[str]

    @property
    def matched(self) -> bool:
        return not self.reasons


@dataclass
class Evaluation:
    """A token against some rules (what the "test this token" form shows)."""

    problem: str | None = None  # the token could not be read at all
    unverified: dict[str, Any] = field(default_factory=dict)  # its claims, as it says them
    verified: dict[str, Any] | None = None  # its claims, once a key checked its signature
    verdicts: list[Verdict] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "problem": self.problem,
            "claims": self.verified if self.verified is not None else self.unverified,
            "signature_verified": self.verified is not None,
            "rules": [
                {"id": v.rule.id, "matches": v.matched, "reasons": v.reasons} for v in self.verdicts
            ],
        }


def looks_like_ci_login(username: str, password: str) -> bool:
    """Whether a Basic sign-in is a CI job's (`oidc` and a JWT), not an account's."""
    return username.lower() == USERNAME and password.startswith("eyJ") and password.count(".") == 2


def _printable(text: str) -> str:
    return "".join(c if " " < c < "\x7f" else "-" for c in text)

"""`berth ci-trust ...`: the CI trust rules that let CI jobs sign in with their identity token.

Run on the server with the database at hand, so as an instance admin: any https issuer may be
trusted. Each change is audited (actor `cli`), in the same transaction as the change.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from appliance.cli.common import config_option, data_dir_option, fail, open_database
from appliance.errors import BerthError


@click.group("ci-trust")
def ci_trust() -> None:
    """Let CI jobs push and pull with their own identity token (no stored secret)."""


@ci_trust.command("add")
@click.argument("namespace")
@click.option("--issuer", default="", help="Issuer (iss) of the tokens; a template's by default.")
@click.option(
    "--jwks-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The issuer's public keys (JWKS) for offline sites; default: fetched via discovery.",
)
@click.option("--audience", required=True, help="Audience (aud) the tokens must name.")
@click.option(
    "--claim",
    "claims",
    multiple=True,
    metavar="KEY=VALUE",
    help="A claim the token must hold, exactly (repeat: all must hold).",
)
@click.option("--access", type=click.Choice(["pull", "push"]), required=True)
@click.option(
    "--repository",
    default="**",
    show_default=True,
    help="Glob of the repositories below NAMESPACE (*: one segment, **: any depth).",
)
@click.option(
    "--template",
    type=click.Choice(["gitlab", "github", "forgejo"]),
    help="Claim names of a CI system: its default issuer, and its project claim required.",
)
@click.option("--description", default="", help="A note shown with the rule.")
@config_option
@data_dir_option
def ci_trust_add(  # noqa: PLR0917 (one parameter per option)
    namespace: str,
    issuer: str,
    jwks_file: Path | None,
    audience: str,
    claims: tuple[str, ...],
    access: str,
    repository: str,
    template: str | None,
    description: str,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Trust CI identity tokens for pulls (or pushes) in NAMESPACE."""
    from appliance.auth.citrust import CiTrust, RuleSpec, parse_claims  # noqa: PLC0415

    try:
        spec = RuleSpec(
            namespace=namespace,
            issuer=issuer,
            audience=audience,
            claims=parse_claims(list(claims)),
            access=access,
            repository=repository,
            jwks=jwks_file.read_text() if jwks_file is not None else None,
            template=template,
            description=description,
        )
        config, db = open_database(config_path, data_dir)
        try:
            trust = CiTrust(db, config)
            rule = db.run_sync_write(lambda tx: trust.add(tx, "cli", spec, time.time(), admin=True))
        finally:
            db.close()
    except (BerthError, OSError) as e:
        fail(e.message if isinstance(e, BerthError) else str(e))
    click.echo(
        f"rule {rule.id}: tokens of {rule.issuer} for {rule.audience} may {rule.access} "
        f"{rule.namespace}/{rule.repository}"
    )


@ci_trust.command("list")
@click.argument("namespace", required=False)
@config_option
@data_dir_option
def ci_trust_list(namespace: str | None, config_path: Path | None, data_dir: Path | None) -> None:
    """List the trust rules (of NAMESPACE, or all): id, namespace, access, repositories,
    issuer, audience, conditions."""
    from appliance.metadata import citrust as records  # noqa: PLC0415

    try:
        _, db = open_database(config_path, data_dir)
        try:
            rules = db.run_sync_read(lambda tx: records.listed(tx, namespace))
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    for r in rules:
        conditions = " ".join(f"{k}={v}" for k, v in r.claims)
        keys = " (JWKS given)" if r.jwks else ""
        click.echo(
            f"{r.id}\t{r.namespace}\t{r.access}\t{r.namespace}/{r.repository}\t{r.issuer}{keys}"
            f"\t{r.audience}\t{conditions}"
        )


@ci_trust.command("remove")
@click.argument("rule_id", metavar="ID", type=int)
@config_option
@data_dir_option
def ci_trust_remove(rule_id: int, config_path: Path | None, data_dir: Path | None) -> None:
    """Remove trust rule ID: jobs it let in are refused from their next sign-in."""
    from appliance.auth.citrust import CiTrust  # noqa: PLC0415
    from appliance.metadata import citrust as records  # noqa: PLC0415

    try:
        _, db = open_database(config_path, data_dir)
        try:
            db.run_sync_write(
                lambda tx: CiTrust.remove(tx, "cli", records.require(tx, rule_id), time.time())
            )
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    click.echo(f"removed rule {rule_id}")

"""`berth scan IMAGE` and `berth vulndb import|status`: scanning from the command line; and
`berth scan-worker`, the process the scanner starts to read an image's layers."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import (
    config_option,
    data_dir_option,
    fail,
    load_config,
    open_database,
    run_with_services,
)
from appliance.errors import BerthError
from appliance.oci.digest import is_digest


def split_image(image: str) -> tuple[str, str]:
    """`team/app:1`, `team/app@sha256:...` or `team/app` (tag latest) → (repository, reference)."""
    if "@" in image:
        name, _, ref = image.partition("@")
        if not is_digest(ref):
            raise click.BadParameter(f"{ref!r} is not a digest", param_hint="IMAGE")
        return name, ref
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, "latest"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


@click.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--cached", is_flag=True, help="Show the stored report; do not read the layers.")
@click.option(
    "--fail-on",
    type=click.Choice(["low", "medium", "high", "critical"]),
    help="Exit 3 when a finding is at or above this severity (for CI pipelines).",
)
@config_option
@data_dir_option
def scan(  # noqa: PLR0917 (one per option)
    image: str,
    as_json: bool,
    cached: bool,
    fail_on: str | None,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Scan IMAGE (repository:tag or repository@digest) now and print its vulnerabilities."""
    from appliance.scan.matching import RANK  # noqa: PLC0415
    from appliance.services import Services  # noqa: PLC0415

    repository, reference = split_image(image)

    async def run(services: Services) -> tuple[str, list[Any]]:
        assert services.scanner is not None
        if not cached:
            await services.scanner.scan(repository, reference)
        return await services.scanner.report(repository, reference)

    try:
        digest, reports = run_with_services(load_config(config_path, data_dir=data_dir), run)
    except BerthError as e:
        fail(e.message)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "repository": repository,
                    "digest": digest,
                    "reports": [r.as_json() if r else None for r in reports],
                },
                indent=2,
            )
        )
    else:
        for report in reports:
            if report is None:
                click.echo(f"{repository}@{digest}: not scanned yet (try without --cached)")
                continue
            head = f"{repository}@{report.digest}: {report.packages} packages"
            if report.status == "error":
                click.echo(f"{head}; scan failed: {report.error}")
                continue
            if report.status == "incomplete":
                click.echo(f"{repository}@{report.digest}: {report.error}")
            counts = ", ".join(f"{n} {sev}" for sev, n in report.counts().items() if n)
            click.echo(f"{head}, {len(report.findings)} vulnerabilities ({counts or 'none'})")
            if report.findings:
                rows = [["SEVERITY", "ADVISORY", "PACKAGE", "INSTALLED", "FIXED"]]
                rows += [
                    [f.severity, f.advisory_id, f.package, f.installed, f.fixed or "-"]
                    for f in report.findings
                ]
                click.echo(_table(rows))
    if fail_on is not None:
        worst = max((RANK[f.severity] for r in reports if r for f in r.findings), default=0)
        if worst >= RANK[fail_on]:
            sys.exit(3)


@click.group()
def vulndb() -> None:
    """Advisory data for vulnerability matching, imported offline."""


@vulndb.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_option
@data_dir_option
def vulndb_import(
    paths: tuple[Path, ...], as_json: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Import OSV records (a directory or zip of JSON files) or the Debian security tracker's
    JSON, then match every stored image against the new data."""
    from appliance.scan import vulndb as advisories  # noqa: PLC0415
    from appliance.scan.service import rematch_all  # noqa: PLC0415

    failed = False
    try:
        _, db = open_database(config_path, data_dir)
        try:
            results = []
            for path in paths:
                if not path.exists():
                    raise BerthError(f"{path} does not exist")
                result = advisories.import_path(db.run_sync_write, path, time.time(), "cli")
                results.append(result)
                failed = failed or bool(result.errors)
            matched = rematch_all(db.run_sync_read, db.run_sync_write, time.time())
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    if as_json:
        click.echo(
            json.dumps({"imports": [r.as_json() for r in results], "rematched": matched}, indent=2)
        )
    else:
        for r in results:
            click.echo(
                f"import {r.import_id} ({r.source}): {r.added} added, {r.changed} changed, "
                f"{r.removed} withdrawn, {r.unchanged} unchanged, {len(r.errors)} failed"
            )
            for message in r.errors:
                click.echo(f"berth: {message}", err=True)
        click.echo(f"matched {matched} stored image(s) against the advisory data again")
    if failed:
        sys.exit(1)


@vulndb.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@config_option
@data_dir_option
def vulndb_status(as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """The advisory data's version, what it holds and the latest imports."""
    from appliance.scan import vulndb as advisories  # noqa: PLC0415

    try:
        _, db = open_database(config_path, data_dir)
        try:
            state = db.run_sync_read(advisories.status)
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(f"version: {state['version']}")
    click.echo(f"advisories: {state['advisories']}")
    for source, n in state["by_source"].items():
        click.echo(f"  source {source}: {n}")
    for ecosystem, n in state["by_ecosystem"].items():
        click.echo(f"  ecosystem {ecosystem}: {n}")
    for imp in state["imports"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(imp["imported_at"]))
        click.echo(
            f"import {imp['import']} at {when} UTC from {imp['path']}: {imp['added']} added, "
            f"{imp['changed']} changed, {imp['unchanged']} unchanged, {imp['failed']} failed"
        )


@click.command("scan-worker", hidden=True)
def scan_worker() -> None:
    """Read one image's layers on stdin and answer its SBOM on stdout (started by the scanner
    for every image it reads; not for people)."""
    from appliance.scan.worker import run_worker  # noqa: PLC0415

    run_worker(sys.stdin.buffer, sys.stdout.buffer)

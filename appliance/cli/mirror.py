"""`berth mirror ...`: fill and inspect the pull-through cache of proxy namespaces."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
import trio

from appliance.cli.common import (
    config_option,
    data_dir_option,
    fail,
    load_config,
    run_with_services,
)
from appliance.errors import BerthError


@click.group()
def mirror() -> None:
    """Copy repositories from the upstreams of proxy namespaces ahead of time."""


@mirror.command("sync")
@click.argument("references", nargs=-1, required=True)
@config_option
@data_dir_option
def mirror_sync(
    references: tuple[str, ...], config_path: Path | None, data_dir: Path | None
) -> None:
    """Copy REFERENCES (NAMESPACE/REPO:TAG, NAMESPACE/REPO@DIGEST, or NAMESPACE/REPO for every
    tag) from the upstream of their proxy namespace into the cache. Idempotent: run it again
    after an interruption and it fetches only what is missing."""
    from appliance.metadata import audit  # noqa: PLC0415
    from appliance.metadata.db import Tx  # noqa: PLC0415
    from appliance.proxy.mirror import Mirror, SyncReport  # noqa: PLC0415
    from appliance.services import Services  # noqa: PLC0415

    async def run(services: Services) -> SyncReport:
        if services.proxy is None:
            raise BerthError("no proxy namespaces are configured (proxy.upstreams)")
        report = SyncReport()
        copier = Mirror(services.proxy, click.echo)
        try:
            for reference in references:
                await copier.sync(reference, report)
        finally:
            done = report

            def fn(tx: Tx) -> None:
                audit.record(
                    tx,
                    "cli",
                    "mirror.sync",
                    ", ".join(references)[:500],
                    tags=done.tags,
                    blobs_fetched=done.blobs_fetched,
                    bytes_fetched=done.bytes_fetched,
                )

            with trio.CancelScope(shield=True):
                await services.db.write(fn)
        return report

    try:
        report = run_with_services(load_config(config_path, data_dir=data_dir), run)
    except BerthError as e:
        fail(e.message)
    click.echo(
        f"synced {report.tags} tag(s): {report.blobs_fetched} blob(s) fetched "
        f"({report.bytes_fetched} bytes), {report.blobs_cached} already cached, "
        f"{report.manifests_fetched} manifest(s) fetched"
    )


@mirror.command("status")
@click.argument("namespace", required=False)
@config_option
@data_dir_option
def mirror_status(namespace: str | None, config_path: Path | None, data_dir: Path | None) -> None:
    """List the proxy namespaces and the repositories cached in them."""
    from appliance.metadata.db import open_metadata  # noqa: PLC0415
    from appliance.proxy.records import ProxyStore  # noqa: PLC0415
    from appliance.proxy.settings import parse  # noqa: PLC0415

    try:
        config = load_config(config_path, data_dir=data_dir)
        namespaces = parse(config)  # a bad setting is refused before the database is opened
        db = open_metadata(config)
    except BerthError as e:
        fail(e.message)
    try:
        store = ProxyStore(db, time.time)
        for name, ns in sorted(namespaces.items()):
            if namespace is not None and name != namespace:
                continue
            click.echo(f"{name} -> {ns.url}")
            for repo in trio.run(store.status, name):
                when = (
                    datetime.fromtimestamp(repo.last_validated, UTC).strftime("%Y-%m-%d %H:%M:%S")
                    if repo.last_validated is not None
                    else "never"
                )
                click.echo(
                    f"  {repo.name}  tags={repo.tags} manifests={repo.manifests} "
                    f"pending={repo.staged} last-checked={when}"
                )
    finally:
        db.close()

"""`berth mirror ...`: fill and inspect the pull-through cache of proxy namespaces."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
import trio

from appliance.cli import fail, load_config
from appliance.errors import BerthError

_config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False)
)
_data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), help="server.data_dir"
)


def _mirror() -> None:
    """Copy repositories from the upstreams of proxy namespaces ahead of time."""


# Typed explicitly: appliance.cli imports this module, and mypy cannot infer a decorated
# definition's type inside an import cycle.
mirror: click.Group = click.group("mirror")(_mirror)


@mirror.command("sync")
@click.argument("references", nargs=-1, required=True)
@_config_option
@_data_dir_option
def mirror_sync(
    references: tuple[str, ...], config_path: Path | None, data_dir: Path | None
) -> None:
    """Copy REFERENCES (NAMESPACE/REPO:TAG, NAMESPACE/REPO@DIGEST, or NAMESPACE/REPO for every
    tag) from the upstream of their proxy namespace into the cache. Idempotent: run it again
    after an interruption and it fetches only what is missing."""
    from appliance.metadata.db import Tx  # noqa: PLC0415
    from appliance.ops import audit  # noqa: PLC0415
    from appliance.proxy.mirror import Mirror, SyncReport  # noqa: PLC0415
    from appliance.server import open_services  # noqa: PLC0415

    overrides = {"server.data_dir": str(data_dir) if data_dir is not None else None}

    async def run() -> SyncReport:
        config = load_config(config_path, overrides)
        services = await open_services(config)
        try:
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
        finally:
            if services.proxy is not None:
                await services.proxy.aclose()
            services.close()

    try:
        report = trio.run(run)
    except BerthError as e:
        fail(e.message)
        return
    click.echo(
        f"synced {report.tags} tag(s): {report.blobs_fetched} blob(s) fetched "
        f"({report.bytes_fetched} bytes), {report.blobs_cached} already cached, "
        f"{report.manifests_fetched} manifest(s) fetched"
    )


@mirror.command("status")
@click.argument("namespace", required=False)
@_config_option
@_data_dir_option
def mirror_status(namespace: str | None, config_path: Path | None, data_dir: Path | None) -> None:
    """List the proxy namespaces and the repositories cached in them."""
    from appliance.metadata.db import open_metadata  # noqa: PLC0415
    from appliance.proxy.settings import parse  # noqa: PLC0415
    from appliance.proxy.store import ProxyStore  # noqa: PLC0415

    try:
        config = load_config(
            config_path, {"server.data_dir": str(data_dir) if data_dir is not None else None}
        )
        namespaces = parse(config)
        db = open_metadata(config)
    except BerthError as e:
        fail(e.message)
        return
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

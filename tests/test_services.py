"""The one assembly of the services (appliance/services.py): what each depth opens, and that
the depth commands use (`serving=False`: gc, imports) makes nothing a serving Berth would."""

from __future__ import annotations

from pathlib import Path

from appliance import config as settings
from appliance.services import open_services, open_storage


def make_config(data: Path) -> settings.Config:
    return settings.load(
        None,
        environ={},
        overrides={
            "server.data_dir": str(data),
            "proxy.upstreams": "hub=https://registry-1.docker.io",
        },
    )


async def test_without_the_serving_parts_nothing_is_made_or_claimed(tmp_path: Path) -> None:
    config = make_config(tmp_path / "d")
    services = await open_services(config, serving=False, actor="cli", pace=1.0)
    try:
        assert (services.access, services.proxy, services.ops) == (None, None, None)
        assert (services.scanner, services.backups) == (None, None)
        assert services.registry.meta.checks is services.lifecycle.rules  # writes keep rules
        assert services.lifecycle.collector.actor == "cli"
        made = await services.db.read(
            lambda tx: [
                tx.scalar("SELECT COUNT(*) FROM users"),
                tx.scalar("SELECT COUNT(*) FROM proxy_namespaces"),
                tx.scalar("SELECT COUNT(*) FROM hosts"),
            ]
        )
        assert made == [0, 0, 0]
    finally:
        await services.aclose()
    assert not (tmp_path / "d" / "initial-admin-password").exists()

    services = await open_services(config)  # serving: what `berth serve` runs
    try:
        assert services.access is not None
        assert services.proxy is not None
        assert services.ops is not None
        assert services.scanner is not None
        assert services.backups is not None
        made = await services.db.read(
            lambda tx: [
                tx.scalar("SELECT COUNT(*) FROM users"),
                tx.scalar("SELECT COUNT(*) FROM proxy_namespaces"),
            ]
        )
        assert made == [1, 1]  # the first admin; the proxy namespace claimed
    finally:
        await services.aclose()


async def test_storage_alone_is_the_database_and_the_checked_store(tmp_path: Path) -> None:
    db, store = await open_storage(make_config(tmp_path / "d"))
    try:
        status = db.schema_status()
        assert status.pending == ()
        await store.check()
    finally:
        db.close()

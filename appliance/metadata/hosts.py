"""The `hosts` table: each serving host's row, as it last said it was (runtime/hosts.py writes
this host's row at every heartbeat; `berth ctl doctor` reads them all)."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.metadata.db import Tx

STALE = 60.0  # a host unseen for longer is not counted as serving


@dataclass(frozen=True)
class HostRecord:
    """A host as its row says."""

    name: str
    instance: str
    version: str
    secret_fingerprint: str
    schema_version: int
    storage: str
    address: str
    started_at: float
    last_seen: float

    def serving(self, now: float) -> bool:
        return now - self.last_seen <= STALE


def list_hosts(tx: Tx) -> list[HostRecord]:
    rows = tx.execute(
        "SELECT name, instance, version, secret_fingerprint, schema_version, storage, address, "
        "started_at, last_seen FROM hosts ORDER BY name"
    )
    return [
        HostRecord(r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6], float(r[7]), float(r[8]))
        for r in rows
    ]


def visit(tx: Tx, host: HostRecord) -> HostRecord | None:
    """Write this host's row; returns what another instance had written under the same name
    while still serving (two hosts with one name), else None."""
    row = tx.one(
        "SELECT instance, last_seen, address FROM hosts WHERE name = :name", {"name": host.name}
    )
    clash = None
    if row is not None and row[0] != host.instance and host.last_seen - float(row[1]) < STALE:
        clash = HostRecord(host.name, row[0], "", "", 0, "", row[2], 0.0, float(row[1]))
    tx.execute(
        "INSERT INTO hosts (name, instance, version, secret_fingerprint, schema_version, "
        "storage, address, started_at, last_seen) VALUES (:name, :instance, :version, :fp, "
        ":schema, :storage, :address, :started, :seen) ON CONFLICT (name) DO UPDATE SET "
        "instance = excluded.instance, version = excluded.version, "
        "secret_fingerprint = excluded.secret_fingerprint, "
        "schema_version = excluded.schema_version, storage = excluded.storage, "
        "address = excluded.address, started_at = excluded.started_at, "
        "last_seen = excluded.last_seen",
        {
            "name": host.name,
            "instance": host.instance,
            "version": host.version,
            "fp": host.secret_fingerprint,
            "schema": host.schema_version,
            "storage": host.storage,
            "address": host.address,
            "started": host.started_at,
            "seen": host.last_seen,
        },
    )
    return clash

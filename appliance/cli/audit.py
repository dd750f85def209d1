"""`berth audit ...`: read the audit log from the command line."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from appliance.cli.common import config_option, data_dir_option, fail, open_database
from appliance.errors import BerthError, InvalidInput
from appliance.metadata import audit as audit_log

_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_value(text: str | None, now: float) -> float | None:
    """`--since`: a duration back from now (`30m`, `24h`, `7d`), seconds since the epoch or an
    ISO 8601 date or time."""
    if not text:
        return None
    unit = _DURATION.get(text[-1:])
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        return now - float(text[:-1]) * unit
    from appliance.api.inputs import parse_time  # noqa: PLC0415 (what /api/v1/audit reads too)

    try:
        return parse_time(text)
    except InvalidInput as e:
        raise click.BadParameter(e.message) from None


@click.group()
def audit() -> None:
    """Read the audit log."""


@audit.command("export")
@click.option("--since", help="From this time: 24h, 7d, 2026-01-31, 2026-01-31T12:00:00Z...")
@click.option("--until", help="Up to (not including) this time, in the same forms.")
@click.option("--actor", help="Only events by this actor.")
@click.option("--action", help="Only this action (`token.*` for every token action).")
@click.option("--target", help="Only targets starting with this (e.g. `team/`).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON lines (one event per line) or CSV.",
)
@click.option(
    "--output", "-o", type=click.Path(path_type=Path, dir_okay=False), help="File to write."
)
@config_option
@data_dir_option
def audit_export(  # noqa: PLR0917 (one parameter per option)
    since: str | None,
    until: str | None,
    actor: str | None,
    action: str | None,
    target: str | None,
    fmt: str,
    output: Path | None,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Write audit events, oldest first, as JSON lines or CSV (streamed)."""
    now = time.time()
    filters: dict[str, Any] = {
        "since": since_value(since, now),
        "until": since_value(until, now),
        "actor": actor,
        "action": action,
        "target": target,
    }
    try:
        _, db = open_database(config_path, data_dir)
        try:
            out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
            try:
                count = db.run_sync_read(lambda tx: _write(tx, out, fmt, filters))
            finally:
                if output:
                    out.close()
        finally:
            db.close()
    except BerthError as e:
        fail(e.message)
    if output:
        click.echo(f"wrote {count} event(s) to {output}", err=True)


def _write(tx: Any, out: Any, fmt: str, filters: dict[str, Any]) -> int:
    count = 0
    writer = None
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(
            ["id", "time", "actor", "action", "target", "source", "request_id", "details"]
        )
    for event in audit_log.export(tx, **filters):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["at"]))
        stamp += f".{int(event['at'] % 1 * 1000):03d}Z"
        if writer is not None:
            writer.writerow(
                [
                    event["id"],
                    stamp,
                    event["actor"],
                    event["action"],
                    event["target"],
                    event["source"] or "",
                    event["request_id"] or "",
                    json.dumps(event["details"], sort_keys=True),
                ]
            )
        else:
            out.write(json.dumps({**event, "time": stamp}, sort_keys=True) + "\n")
        count += 1
    return count

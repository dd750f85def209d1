"""Lifecycle commands: `berth gc`, `berth fsck`, `berth usage`, `berth quota`,
`berth immutable` and `berth policy`.

They open the database and the blob store the configuration names and are safe while Berth
serves: `berth gc` takes its own lease (one at a time) and every batch checks it, the gc holds
and the references in the transaction that deletes, exactly as the server's collector does.
Changes are audited with the actor `cli`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

if TYPE_CHECKING:
    from appliance.services import Services

T = TypeVar("T")
ACTOR = "cli"

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _run(
    config_path: Path | None,
    data_dir: Path | None,
    work: Callable[[Any, Any, Any], Awaitable[T]],
) -> T:
    """Open config, database, store and lifecycle; run `work(config, db, lifecycle)`."""
    try:
        config = load_config(config_path, data_dir=data_dir)

        async def with_lifecycle(services: Services) -> T:
            return await work(config, services.db, services.lifecycle)

        return run_with_services(config, with_lifecycle, serving=False, actor=ACTOR, pace=1.0)
    except BerthError as e:
        fail(e.message)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


# -- gc and fsck ------------------------------------------------------------------------------


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@_json_option
@config_option
@data_dir_option
def gc(dry_run: bool, as_json: bool, config_path: Path | None, data_dir: Path | None) -> None:
    """Collect garbage that is due now (safe while Berth serves)."""
    from appliance.metadata.leader import leader_lock  # noqa: PLC0415

    async def work(config: Any, db: Any, lifecycle: Any) -> dict[str, Any]:
        if dry_run:
            return dict((await lifecycle.collector.dry_run()).as_json())
        lock = leader_lock(db, "gc-cli", ttl=3600.0, clock=time.time)
        fence = await lock.acquire()
        if fence is None:
            raise BerthError("another `berth gc` is running")
        try:
            return dict((await lifecycle.collector.run(fence)).as_json())
        finally:
            with trio.CancelScope(shield=True):
                await lock.release()

    result = _run(config_path, data_dir, work)
    if as_json:
        _print(result)
    elif dry_run:
        click.echo(
            f"would remove now: {result['manifests']} manifest(s), {result['blobs']} blob(s) "
            f"({_size(result['blob_bytes'])} of unique blob bytes)"
        )
        click.echo(
            f"then, after gc.delay: {result['then_blobs']} blob(s) only those manifests use "
            f"({_size(result['then_bytes'])})"
        )
        click.echo(
            f"queued for review: {result['queued_blobs']} blob(s), "
            f"{result['queued_manifests']} manifest(s)"
        )
        if result["held"]:
            click.echo("a gc hold is in place: nothing would be removed until it ends")
    else:
        click.echo(
            f"removed {result['manifests']} manifest(s), {result['blobs']} blob(s), "
            f"{_size(result['bytes'])}"
        )
        if result["held"]:
            click.echo("stopped: a gc hold is in place (a backup is running)")
        if result["failed_deletes"]:
            click.echo(
                f"{result['failed_deletes']} blob file(s) could not be deleted: run "
                "`berth fsck --repair` later"
            )


@click.command("fsck")
@click.option("--repair", is_flag=True, help="Remove orphans older than gc.delay.")
@click.option("--no-verify", is_flag=True, help="Check sizes only, do not read every blob.")
@_json_option
@config_option
@data_dir_option
def fsck(
    repair: bool, no_verify: bool, as_json: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Compare storage with the database: orphans, missing bytes, wrong digests."""
    from appliance.lifecycle.fsck import fsck as check  # noqa: PLC0415

    async def work(config: Any, db: Any, lifecycle: Any) -> dict[str, Any]:
        report = await check(
            db,
            lifecycle.collector.store,
            time.time,
            delay=config["gc.delay"],
            repair=repair,
            verify=not no_verify,
        )
        return report.as_json()

    result = _run(config_path, data_dir, work)
    if as_json:
        _print(result)
    else:
        click.echo(f"{result['objects']} object(s) in storage, {result['checked']} blob(s) checked")
        for o in result["orphans"]:
            click.echo(f"orphan: {o['key']} ({o['size']} bytes, unknown to the database)")
        for u in result["orphan_uploads"]:
            click.echo(f"orphan upload: uploads/{u['upload']}/")
        for m in result["missing"]:
            click.echo(f"missing: {m['digest']} (bytes not at {m['key']})")
        for c in result["corrupt"]:
            click.echo(f"corrupt: {c['digest']} at {c['key']}: {c['reason']}")
        for key in result["removed"]:
            click.echo(f"removed: {key}")
        if result["kept_young"]:
            click.echo(f"kept {result['kept_young']} orphan(s) younger than gc.delay")
        click.echo("clean" if result["clean"] else "problems found")
    if result["missing"] or result["corrupt"]:
        sys.exit(1)


# -- usage and quotas -------------------------------------------------------------------------


@click.command("usage")
@click.argument("namespace", required=False)
@_json_option
@config_option
@data_dir_option
def usage(
    namespace: str | None, as_json: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Blob bytes per namespace and repository: total, shared with others, unique."""

    async def work(config: Any, db: Any, lifecycle: Any) -> list[dict[str, Any]]:
        return list(await lifecycle.rules.usage(namespace))

    found = _run(config_path, data_dir, work)
    if as_json:
        _print(found)
        return
    for ns in found:
        quota = "" if ns["quota_bytes"] is None else f", quota {_size(ns['quota_bytes'])}"
        click.echo(
            f"{ns['name']}: {_size(ns['total_bytes'])} in {ns['blobs']} blob(s) "
            f"(unique {_size(ns['unique_bytes'])}, shared {_size(ns['shared_bytes'])}){quota}"
        )
        for repo in ns["repositories"]:
            click.echo(
                f"  {repo['name']}: {_size(repo['total_bytes'])} "
                f"(unique {_size(repo['unique_bytes'])}, shared {_size(repo['shared_bytes'])})"
            )


@click.group("quota")
def quota() -> None:
    """Namespace quotas, in bytes of distinct blobs."""


@quota.command("set")
@click.argument("namespace")
@click.argument("limit_bytes", type=click.IntRange(0))
@config_option
@data_dir_option
def quota_set(
    namespace: str, limit_bytes: int, config_path: Path | None, data_dir: Path | None
) -> None:
    """Limit a namespace to LIMIT_BYTES bytes of distinct blobs."""

    async def work(config: Any, db: Any, lifecycle: Any) -> None:
        await lifecycle.rules.set_quota(ACTOR, namespace, limit_bytes)

    _run(config_path, data_dir, work)
    click.echo(f"quota of {namespace}: {limit_bytes} bytes")


@quota.command("remove")
@click.argument("namespace")
@config_option
@data_dir_option
def quota_remove(namespace: str, config_path: Path | None, data_dir: Path | None) -> None:
    """Remove a namespace's quota."""

    async def work(config: Any, db: Any, lifecycle: Any) -> None:
        await lifecycle.rules.remove_quota(ACTOR, namespace)

    _run(config_path, data_dir, work)
    click.echo(f"{namespace} has no quota now")


@quota.command("list")
@config_option
@data_dir_option
def quota_list(config_path: Path | None, data_dir: Path | None) -> None:
    """List namespace quotas with their usage."""

    async def work(config: Any, db: Any, lifecycle: Any) -> list[dict[str, Any]]:
        from appliance.lifecycle.rules import list_quotas  # noqa: PLC0415

        out = []
        for q in await db.read(list_quotas):
            use = (await lifecycle.rules.usage(q.namespace))[0]
            out.append({**q.as_json(), "usage": use["total_bytes"]})
        return out

    for q in _run(config_path, data_dir, work):
        click.echo(f"{q['namespace']}\t{q['usage']}\t{q['limit_bytes']}")


# -- immutable tag rules ----------------------------------------------------------------------


@click.group("immutable")
def immutable() -> None:
    """Immutable tag rules: tags matching a regular expression cannot move or go."""


@immutable.command("add")
@click.argument("namespace")
@click.argument("pattern")
@config_option
@data_dir_option
def immutable_add(
    namespace: str, pattern: str, config_path: Path | None, data_dir: Path | None
) -> None:
    """Make tags of NAMESPACE matching PATTERN (in full) immutable."""

    async def work(config: Any, db: Any, lifecycle: Any) -> Any:
        return await lifecycle.rules.add_immutable_rule(ACTOR, namespace, pattern)

    rule = _run(config_path, data_dir, work)
    click.echo(f"rule {rule.id}: tags of {namespace} matching {pattern!r} are immutable")


@immutable.command("remove")
@click.argument("namespace")
@click.argument("rule_id", type=int)
@config_option
@data_dir_option
def immutable_remove(
    namespace: str, rule_id: int, config_path: Path | None, data_dir: Path | None
) -> None:
    """Remove immutable tag rule RULE_ID of NAMESPACE."""

    async def work(config: Any, db: Any, lifecycle: Any) -> None:
        await lifecycle.rules.remove_immutable_rule(ACTOR, namespace, rule_id)

    _run(config_path, data_dir, work)
    click.echo(f"removed rule {rule_id}")


@immutable.command("list")
@click.argument("namespace", required=False)
@config_option
@data_dir_option
def immutable_list(namespace: str | None, config_path: Path | None, data_dir: Path | None) -> None:
    """List immutable tag rules (of one namespace, or all)."""

    async def work(config: Any, db: Any, lifecycle: Any) -> Any:
        from appliance.lifecycle.rules import list_immutable_rules  # noqa: PLC0415

        return await db.read(lambda tx: list_immutable_rules(tx, namespace))

    for rule in _run(config_path, data_dir, work):
        problem = f"\tprotects no tag: {rule.problem}" if rule.problem else ""
        click.echo(f"{rule.id}\t{rule.namespace}\t{rule.pattern}{problem}")


# -- cleanup policies -------------------------------------------------------------------------


@click.group("policy")
def policy() -> None:
    """Cleanup policies: which tags to remove, previewed before they run."""


def _settings(
    keep_recent: int | None,
    keep_regex: str | None,
    remove_regex: str | None,
    older_than_days: float | None,
    time_basis: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {"time_basis": time_basis}
    for name, value in (
        ("keep_recent", keep_recent),
        ("keep_regex", keep_regex),
        ("remove_regex", remove_regex),
        ("older_than_days", older_than_days),
    ):
        if value is not None:
            out[name] = value
    return out


@policy.command("create")
@click.argument("scope")
@click.option("--keep-recent", type=click.IntRange(0), help="Keep the N newest tags.")
@click.option("--keep-regex", help="Keep tags matching this regular expression.")
@click.option("--remove-regex", help="Only remove tags matching this regular expression.")
@click.option("--older-than-days", type=click.FloatRange(0), help="Only remove older tags.")
@click.option("--time-basis", type=click.Choice(["push", "pull"]), default="push")
@click.option("--disabled", is_flag=True, help="Create it switched off.")
@config_option
@data_dir_option
def policy_create(  # noqa: PLR0917 (one parameter per option)
    scope: str,
    keep_recent: int | None,
    keep_regex: str | None,
    remove_regex: str | None,
    older_than_days: float | None,
    time_basis: str,
    disabled: bool,
    config_path: Path | None,
    data_dir: Path | None,
) -> None:
    """Create a cleanup policy for SCOPE (a namespace, or one repository)."""
    settings = _settings(keep_recent, keep_regex, remove_regex, older_than_days, time_basis)

    async def work(config: Any, db: Any, lifecycle: Any) -> Any:
        return await lifecycle.policies.create(ACTOR, scope, settings, not disabled)

    found = _run(config_path, data_dir, work)
    click.echo(f"policy {found.id} for {scope}: preview it (`berth policy preview {found.id}`)")


@policy.command("list")
@config_option
@data_dir_option
def policy_list(config_path: Path | None, data_dir: Path | None) -> None:
    """List cleanup policies."""

    async def work(config: Any, db: Any, lifecycle: Any) -> Any:
        return await lifecycle.policies.all()

    for p in _run(config_path, data_dir, work):
        state = "enabled" if p.enabled else "disabled"
        previewed = "previewed" if p.previewed_at is not None else "not previewed"
        problem = f"\tremoves nothing: {p.settings.problem}" if p.settings.problem else ""
        settings = json.dumps(p.settings.as_json())
        click.echo(f"{p.id}\t{p.scope}\t{state}, {previewed}\t{settings}{problem}")


def _show_plan(result: dict[str, Any], verb: str) -> None:
    if result.get("problem"):
        click.echo(f"warning: {result['problem']}", err=True)
    for t in result["tags"]:
        click.echo(f"{verb}: {t['repository']}:{t['tag']} ({t['digest']})")
    for t in result["protected"]:
        click.echo(f"kept (immutable rule {t['rule']}): {t['repository']}:{t['tag']}")
    click.echo(
        f"{len(result['tags'])} tag(s), {result['manifests']} manifest(s), "
        f"{result['blobs']} blob(s), {_size(result['unique_bytes'])} of unique bytes"
    )


@policy.command("preview")
@click.argument("policy_id", type=int)
@_json_option
@config_option
@data_dir_option
def policy_preview(
    policy_id: int, as_json: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Show exactly which tags a run would remove now, and the unique bytes freed."""

    async def work(config: Any, db: Any, lifecycle: Any) -> dict[str, Any]:
        return dict((await lifecycle.policies.preview(ACTOR, policy_id)).as_json())

    result = _run(config_path, data_dir, work)
    if as_json:
        _print(result)
    else:
        _show_plan(result, "would remove")


@policy.command("run")
@click.argument("policy_id", type=int)
@_json_option
@config_option
@data_dir_option
def policy_run(
    policy_id: int, as_json: bool, config_path: Path | None, data_dir: Path | None
) -> None:
    """Run a previewed cleanup policy now."""

    async def work(config: Any, db: Any, lifecycle: Any) -> dict[str, Any]:
        return dict((await lifecycle.policies.run(ACTOR, policy_id)).as_json())

    result = _run(config_path, data_dir, work)
    if as_json:
        _print(result)
    else:
        _show_plan(result, "removed")


@policy.command("enable")
@click.argument("policy_id", type=int)
@config_option
@data_dir_option
def policy_enable(policy_id: int, config_path: Path | None, data_dir: Path | None) -> None:
    """Let a policy run on its schedule."""

    async def work(config: Any, db: Any, lifecycle: Any) -> None:
        await lifecycle.policies.update(ACTOR, policy_id, enabled=True)

    _run(config_path, data_dir, work)
    click.echo(f"policy {policy_id} enabled")


@policy.command("disable")
@click.argument("policy_id", type=int)
@config_option
@data_dir_option
def policy_disable(policy_id: int, config_path: Path | None, data_dir: Path | None) -> None:
    """Stop a policy from running on its schedule."""

    async def work(config: Any, db: Any, lifecycle: Any) -> None:
        await lifecycle.policies.update(ACTOR, policy_id, enabled=False)

    _run(config_path, data_dir, work)
    click.echo(f"policy {policy_id} disabled")


@policy.command("delete")
@click.argument("policy_id", type=int)
@config_option
@data_dir_option
def policy_delete(policy_id: int, config_path: Path | None, data_dir: Path | None) -> None:
    """Delete a cleanup policy."""

    async def work(config: Any, db: Any, lifecycle: Any) -> None:
        await lifecycle.policies.delete(ACTOR, policy_id)

    _run(config_path, data_dir, work)
    click.echo(f"policy {policy_id} deleted")

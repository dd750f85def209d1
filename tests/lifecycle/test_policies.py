"""Cleanup policies with an injected clock, on SQLite and PostgreSQL: which tags go, the
preview is exactly the run, immutable tags are kept, every removal is audited, and only
previewed, enabled policies run on the schedule."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.errors import Denied, InvalidName, ManifestNotFound
from appliance.lifecycle.pulls import PullTracker
from appliance.metadata import audit
from tests.lifecycle.world import World, descriptor, image_manifest, index_manifest, sha

REPO = "team/app"
DAY = 86400.0


async def tag_names(world: World, repo: str = REPO) -> list[str]:
    return await world.registry.tags(repo, None, None)


async def push_series(world: World, tags: list[str], repo: str = REPO, gap: float = DAY) -> None:
    """One image per tag, `gap` seconds apart, oldest first; each with its own layer."""
    for tag in tags:
        await world.image(repo, [f"{repo}:{tag}".encode() * 10], tag)
        world.clock.advance(gap)


async def plan(world: World, settings: dict[str, Any], scope: str = REPO) -> tuple[int, list[str]]:
    policy = await world.policies.create("alice", scope, settings)
    result = await world.policies.preview("alice", policy.id)
    return policy.id, sorted(f"{t['repository']}:{t['tag']}" for t in result.tags)


async def test_keep_the_n_most_recent(db_world: World) -> None:
    await push_series(db_world, ["v1", "v2", "v3", "v4"])
    _, going = await plan(db_world, {"keep_recent": 2})
    assert going == [f"{REPO}:v1", f"{REPO}:v2"]


async def test_keep_regex_and_remove_regex(db_world: World) -> None:
    await push_series(db_world, ["main-1", "pr-1", "pr-2", "release-1", "pr-3"])
    _, going = await plan(
        db_world, {"keep_recent": 1, "remove_regex": "pr-.*", "keep_regex": "pr-2"}
    )
    assert going == [f"{REPO}:pr-1"]  # pr-3 is the newest, pr-2 kept by regex


async def test_older_than_days_by_push_time(db_world: World) -> None:
    await push_series(db_world, ["old", "mid", "new"], gap=10 * DAY)
    # now: old is 30 days old, mid 20, new 10
    _, going = await plan(db_world, {"older_than_days": 15})
    assert going == [f"{REPO}:mid", f"{REPO}:old"]


async def test_older_than_days_by_last_pull(db_world: World) -> None:
    await push_series(db_world, ["a", "b", "c"], gap=10 * DAY)
    pulls = PullTracker(db_world.db, db_world.clock)
    db_world.registry.on_tag_resolved = pulls.seen
    await db_world.registry.manifest(REPO, "a")  # pulled just now
    await pulls.flush()
    _, going = await plan(db_world, {"older_than_days": 15, "time_basis": "pull"})
    assert going == [f"{REPO}:b"]  # never pulled: its push time counts
    _, going = await plan(db_world, {"keep_recent": 1, "time_basis": "pull"})
    assert going == [f"{REPO}:b", f"{REPO}:c"]  # a was pulled last


async def test_a_namespace_policy_covers_its_repositories_only(db_world: World) -> None:
    await push_series(db_world, ["1", "2"], repo="team/a")
    await push_series(db_world, ["1", "2"], repo="team/b/deep")
    await push_series(db_world, ["1", "2"], repo="teams/x")
    await push_series(db_world, ["1", "2"], repo="team")
    _, going = await plan(db_world, {"keep_recent": 1}, scope="team")
    assert going == ["team/a:1", "team/b/deep:1", "team:1"]


async def test_preview_is_exactly_the_run_and_frees_unique_bytes(db_world: World) -> None:
    await db_world.image(REPO, [b"shared" * 10, b"only-v1" * 10], "v1")
    db_world.clock.advance(DAY)
    await db_world.image(REPO, [b"shared" * 10], "v2")
    db_world.clock.advance(DAY)
    policy = await db_world.policies.create("alice", REPO, {"keep_recent": 1})
    with pytest.raises(Denied, match="preview it first"):
        await db_world.policies.run("alice", policy.id)
    preview = await db_world.policies.preview("alice", policy.id)
    assert await tag_names(db_world) == ["v1", "v2"]  # nothing changed
    assert (preview.manifests, preview.blobs, preview.unique_bytes) == (1, 1, 70)
    result = await db_world.policies.run("bob", policy.id)
    assert result.as_json() == preview.as_json()
    assert await tag_names(db_world) == ["v2"]
    assert sha(image_manifest(b"{}", [b"shared" * 10, b"only-v1" * 10])) not in (
        await db_world.manifest_digests(REPO)
    )
    deleted = await db_world.db.read(lambda tx: audit.events(tx, action="tag.delete"))
    assert [(e["actor"], e["target"]) for e in deleted] == [("bob", f"{REPO}:v1")]
    assert deleted[0]["details"]["policy"] == policy.id
    manifests = await db_world.db.read(lambda tx: audit.events(tx, action="manifest.delete"))
    assert len(manifests) == 1
    # Webhook subscribers hear of both removals (the preview, rolled back, queued nothing).
    queued = await db_world.rows(
        "SELECT action, repository FROM webhook_events WHERE action = 'delete'"
    )
    assert queued == [("delete", REPO), ("delete", REPO)]
    # The freed blob is collected after the delay.
    db_world.clock.advance(101)
    collected = await db_world.collect()
    assert (collected.blobs, collected.bytes) == (1, 70)
    await db_world.assert_consistent()


async def test_immutable_tags_are_kept_and_reported(db_world: World) -> None:
    await push_series(db_world, ["v1.0", "tmp-1", "tmp-2"])
    await db_world.rules.add_immutable_rule("alice", "team", r"v\d+\.\d+")
    policy = await db_world.policies.create("alice", REPO, {"keep_recent": 0})
    preview = await db_world.policies.preview("alice", policy.id)
    assert sorted(t["tag"] for t in preview.tags) == ["tmp-1", "tmp-2"]
    assert [t["tag"] for t in preview.protected] == ["v1.0"]
    await db_world.policies.run("alice", policy.id)
    assert await tag_names(db_world) == ["v1.0"]


async def test_a_manifest_another_tag_or_an_index_needs_stays(db_world: World) -> None:
    payload = await db_world.image(REPO, [b"kept"], "old")
    await db_world.put(REPO, payload, "stable")
    db_world.clock.advance(DAY)
    child = await db_world.image(REPO, [b"child"])
    await db_world.put(REPO, index_manifest([child]), "multi")
    db_world.clock.advance(DAY)
    await db_world.image(REPO, [b"newest"], "new")
    _, going = await plan(db_world, {"keep_recent": 1, "remove_regex": "old|multi"})
    assert going == [f"{REPO}:multi", f"{REPO}:old"]
    policy = (await db_world.policies.all())[-1]
    result = await db_world.policies.run("alice", policy.id)
    # `old` goes but its manifest stays for `stable`; the index goes with its child.
    assert result.manifests == 2
    digests = await db_world.manifest_digests(REPO)
    assert sha(payload) in digests
    assert sha(child) not in digests


async def test_referrers_go_with_a_removed_image(db_world: World) -> None:
    subject = await db_world.image(REPO, [b"signed"], "v1")
    await db_world.blob(REPO, b"sig")
    signature = image_manifest(
        b"{}",
        [b"sig"],
        artifactType="application/vnd.example.sig",
        subject=descriptor("application/vnd.oci.image.manifest.v1+json", subject),
    )
    await db_world.put(REPO, signature)
    db_world.clock.advance(DAY)
    await db_world.image(REPO, [b"v2"], "v2")
    policy_id, going = await plan(db_world, {"keep_recent": 1})
    assert going == [f"{REPO}:v1"]
    result = await db_world.policies.run("alice", policy_id)
    assert result.manifests == 2
    assert sha(signature) not in await db_world.manifest_digests(REPO)


async def test_the_schedule_runs_only_previewed_enabled_policies(db_world: World) -> None:
    await push_series(db_world, ["a", "b", "c"], repo="team/one")
    await push_series(db_world, ["a", "b", "c"], repo="team/two")
    await push_series(db_world, ["a", "b", "c"], repo="team/three")
    previewed = await db_world.policies.create("alice", "team/one", {"keep_recent": 1})
    await db_world.policies.preview("alice", previewed.id)
    await db_world.policies.create("alice", "team/two", {"keep_recent": 1})  # never previewed
    off = await db_world.policies.create("alice", "team/three", {"keep_recent": 1}, False)
    await db_world.policies.preview("alice", off.id)
    results = await db_world.policies.run_all()
    assert [r.policy for r in results] == [previewed.id]
    assert await tag_names(db_world, "team/one") == ["c"]
    assert await tag_names(db_world, "team/two") == ["a", "b", "c"]
    assert await tag_names(db_world, "team/three") == ["a", "b", "c"]
    stored = await db_world.policies.get(previewed.id)
    assert stored.last_result == {
        "tags": 2,
        "manifests": 2,
        "blobs": 2,
        "unique_bytes": 2 * 100,
        "protected": 0,
    }
    # Once a policy ran, the schedule waits its interval before running it again.
    await db_world.policies.preview("alice", previewed.id)
    assert await db_world.policies.run_all(every=DAY) == []
    db_world.clock.advance(DAY)
    assert [r.policy for r in await db_world.policies.run_all(every=DAY)] == [previewed.id]
    # A change clears the preview: the schedule skips it until previewed again.
    await db_world.policies.update("alice", previewed.id, {"keep_recent": 0})
    assert await db_world.policies.run_all() == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "keep_recent or older_than_days"),
        ({"keep_recent": -1}, "keep_recent"),
        ({"keep_recent": True}, "keep_recent"),
        ({"older_than_days": "ten"}, "older_than_days"),
        ({"keep_recent": 1, "keep_regex": "(*"}, "not a valid regular expression"),
        ({"keep_recent": 1, "remove_regex": "(?<!rc)$"}, "lookahead and lookbehind"),
        ({"keep_recent": 1, "keep_regex": "x" * 257}, "longer than 256 characters"),
        ({"keep_recent": 1, "time_basis": "download"}, "time_basis"),
        ({"keep_recent": 1, "colour": "blue"}, "unknown policy field"),
    ],
)
async def test_bad_settings_are_refused(
    db_world: World, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidName, match=message):
        await db_world.policies.create("alice", REPO, settings)


async def test_a_tag_a_policy_removed_is_not_served_from_memory(db_world: World) -> None:
    await push_series(db_world, ["v1", "v2"])
    assert (await db_world.registry.manifest(REPO, "v1")).digest  # cached now
    policy_id, going = await plan(db_world, {"keep_recent": 1})
    assert going == [f"{REPO}:v1"]
    assert (await db_world.registry.manifest(REPO, "v1")).digest  # a preview changes nothing
    await db_world.policies.run("alice", policy_id)
    with pytest.raises(ManifestNotFound):
        await db_world.registry.manifest(REPO, "v1")

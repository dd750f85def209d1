"""Property tests: random sequences of push, tag, untag, delete, upload, time passing and
collection, checked against a simple model of what must remain.

After every step: every tag resolves to the manifest the model says, and its blobs read back
byte-identical; every manifest the model says is needed (tagged, or untagged for less than
gc.untagged_age) exists; every blob uploaded less than gc.delay ago is still readable. At the
end, once time has passed and the collector has run: exactly the tagged manifests, their blobs
and the repositories' access to them are left, and storage holds exactly those bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from appliance.errors import ManifestNotFound
from appliance.lifecycle.gc import GcSettings
from appliance.metadata.db import open_database
from appliance.storage.filesystem import FilesystemStore
from tests.lifecycle.world import World, build_world, image_manifest, sha

DELAY, UNTAGGED = 100.0, 1000.0
SHM = Path("/dev/shm")
REPOS = ("team/a", "team/b")
TAGS = ("t0", "t1", "t2")
LAYERS = tuple(f"layer-{i}".encode() * (i + 1) for i in range(5))
# Each image: a config and some layers (they overlap, so blobs are shared).
IMAGES = tuple(
    (f'{{"image":{n}}}'.encode(), [LAYERS[i] for i in layers])
    for n, layers in enumerate([(0,), (0, 1), (1, 2), (3,), (2, 3, 4), ()])
)


def payload(image: int) -> bytes:
    config, layers = IMAGES[image]
    return image_manifest(config, layers)


def blobs_of(image: int) -> set[bytes]:
    config, layers = IMAGES[image]
    return {config, *layers}


repo_st = st.sampled_from(REPOS)
image_st = st.integers(0, len(IMAGES) - 1)
push_st = st.tuples(st.just("push"), repo_st, image_st, st.sampled_from((*TAGS, None, None)))
wait_st = st.tuples(st.just("wait"), st.sampled_from((1.0, 60.0, 150.0, 400.0, 1200.0)))
collect_st = st.tuples(st.just("collect"))
# Pushes, waits and collections weigh more: the interesting histories interleave them.
step_st = st.one_of(
    push_st,
    push_st,
    st.tuples(st.just("untag"), repo_st, st.sampled_from(TAGS)),
    st.tuples(st.just("delete"), repo_st, image_st),
    st.tuples(st.just("upload"), repo_st, st.sampled_from(LAYERS)),
    wait_st,
    wait_st,
    collect_st,
    collect_st,
)


@dataclass
class Model:
    now: float
    tags: dict[tuple[str, str], int] = field(default_factory=dict)
    # manifests present: (repo, image) → when it lost its last tag (None: tagged)
    manifests: dict[tuple[str, int], float | None] = field(default_factory=dict)
    uploads: dict[tuple[str, bytes], float] = field(default_factory=dict)  # last upload

    def tagged(self, repo: str, image: int) -> bool:
        return any(i == image for (r, _), i in self.tags.items() if r == repo)

    def untag(self, repo: str, image: int) -> None:
        if not self.tagged(repo, image) and (repo, image) in self.manifests:
            self.manifests[(repo, image)] = self.now


async def read(world: World, repo: str, data: bytes) -> bytes:
    record = await world.registry.blob(repo, sha(data))
    return b"".join([c async for c in world.registry.read_blob(record, 0, record.size)])


async def check(world: World, model: Model) -> None:
    for (repo, tag), image in model.tags.items():
        record = await world.registry.manifest(repo, tag)
        assert record.payload == payload(image)
        for data in blobs_of(image):
            assert await read(world, repo, data) == data
    for (repo, image), since in model.manifests.items():
        if since is None or model.now - since < UNTAGGED:
            assert sha(payload(image)) in await world.manifest_digests(repo)
    for (repo, data), at in model.uploads.items():
        if model.now - at < DELAY:
            assert await read(world, repo, data) == data


async def step(world: World, model: Model, op: tuple[object, ...]) -> None:
    kind = op[0]
    if kind == "push":
        _, repo, image, tag = op
        assert isinstance(repo, str)
        assert isinstance(image, int)
        for data in blobs_of(image):
            await world.blob(repo, data)
            model.uploads[(repo, data)] = model.now
        await world.put(repo, payload(image), tag if isinstance(tag, str) else None)
        if (repo, image) not in model.manifests:
            model.manifests[(repo, image)] = model.now
        if isinstance(tag, str):
            before = model.tags.get((repo, tag))
            model.tags[(repo, tag)] = image
            model.manifests[(repo, image)] = None
            if before is not None and before != image:
                model.untag(repo, before)
    elif kind == "untag":
        _, repo, tag = op
        assert isinstance(repo, str)
        assert isinstance(tag, str)
        try:
            await world.registry.delete_manifest(repo, tag)
        except ManifestNotFound:
            assert (repo, tag) not in model.tags
            return
        image = model.tags.pop((repo, tag))
        model.untag(repo, image)
    elif kind == "delete":
        _, repo, image = op
        assert isinstance(repo, str)
        assert isinstance(image, int)
        try:
            await world.registry.delete_manifest(repo, sha(payload(image)))
        except ManifestNotFound:
            return
        model.manifests.pop((repo, image), None)
        model.tags = {k: v for k, v in model.tags.items() if not (k[0] == repo and v == image)}
    elif kind == "upload":
        _, repo, data = op
        assert isinstance(repo, str)
        assert isinstance(data, bytes)
        await world.blob(repo, data)
        model.uploads[(repo, data)] = model.now
    elif kind == "wait":
        seconds = op[1]
        assert isinstance(seconds, float)
        world.clock.advance(seconds)
        model.now += seconds
    else:
        await world.collect()
        # What the collector may remove is no longer promised by the model.
        for key, since in list(model.manifests.items()):
            if since is not None and model.now - since >= UNTAGGED:
                del model.manifests[key]


async def settle(world: World, model: Model) -> None:
    """Let every delay pass and collect until nothing moves; then only the tagged remain."""
    for _ in range(4):
        world.clock.advance(UNTAGGED + 10 * DELAY)
        model.now = world.clock.now
        await world.collect()
    await check(world, model)
    expected = {(repo, sha(payload(image))) for (repo, _), image in model.tags.items()}
    rows = await world.rows(
        "SELECT r.name, m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
    )
    assert {(r[0], r[1]) for r in rows} == expected
    needed = {
        (repo, sha(data)) for (repo, _), image in model.tags.items() for data in blobs_of(image)
    }
    links = await world.rows(
        "SELECT r.name, rb.digest FROM repository_blobs rb "
        "JOIN repositories r ON r.id = rb.repository_id"
    )
    assert {(r[0], r[1]) for r in links} == needed
    assert set(await world.blob_rows()) == {d for _, d in needed}
    await world.assert_consistent()


async def scenario(root: Path, steps: list[tuple[object, ...]]) -> None:
    db = open_database(f"sqlite:///{root / 'berth.db'}")
    db.migrate()
    try:
        world = build_world(
            db,
            FilesystemStore(root / "storage"),
            GcSettings(delay=DELAY, batch=3, untagged_age=UNTAGGED),
        )
        model = Model(world.clock.now)
        for op in steps:
            await step(world, model, op)
            await check(world, model)
        await settle(world, model)
    finally:
        db.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(st.lists(step_st, min_size=1, max_size=30))
def test_random_histories_keep_what_is_needed_and_only_that(
    steps: list[tuple[object, ...]],
) -> None:
    root = Path(tempfile.mkdtemp(prefix="berth-prop-", dir=SHM if SHM.is_dir() else None))
    try:
        trio.run(scenario, root, steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step_st, min_size=1, max_size=80))
def test_random_histories_long(steps: list[tuple[object, ...]]) -> None:
    root = Path(tempfile.mkdtemp(prefix="berth-prop-", dir=SHM if SHM.is_dir() else None))
    try:
        trio.run(scenario, root, steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""Build small container images offline, byte for byte the same every time, as OCI image layouts.

Nothing is downloaded: layers are tar archives written with `tarfile` (fixed owners, modes and
mtimes, sorted entries) and compressed with `gzip` (no name, mtime 0), and the JSON documents are
serialised canonically, so the same inputs give the same digests. A layout here is the
on-disk format of the OCI image-layout spec (`oci-layout`, `index.json`, `blobs/sha256/...`),
which skopeo, podman and umoci read as `oci:<dir>:<tag>`; the one Docker schema2 image is kept in
skopeo's `dir:` format instead (see `BuiltImage`).

The layout helpers at the bottom (`read_layout`, `compare_images`) read any layout, not only the
ones built here: tests use them to check that an image pulled back from a registry is the one
that was pushed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# Every timestamp in a built image: 2023-11-14T22:13:20Z.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("cat", "echo", "env", "ls", "sh", "sleep", "true")
_CHUNK = 1 << 20


def host_arch() -> str:
    """The Go name of this machine's architecture, as image configs spell it."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest or index says about one piece of content."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Descriptor:
        return cls(
            obj.get("mediaType", ""),
            obj["digest"],
            int(obj["size"]),
            obj.get("platform"),
            obj.get("annotations"),
            obj.get("artifactType"),
        )


@dataclass(frozen=True)
class BuiltImage:
    """A test image on disk, and the tag to push it as.

    `layout` is an OCI image layout holding the image under `tag`, except for Docker schema2
    images: skopeo 1.9 writes those into OCI layouts but cannot read them back ("no descriptor
    found"), so they are kept in skopeo's `dir:` format instead (`transport == "dir"`).
    `manifest_digest` is what the tag points at: an image manifest, or an index for a
    multi-arch image (whose children are `child_manifests`). `blob_digests` lists every config
    and layer blob the image references, children included, each once. `diff_ids` are the
    uncompressed layer digests from the config (single-platform images only).
    """

    name: str
    layout: Path
    tag: str
    media_type: str
    manifest_digest: str
    blob_digests: tuple[str, ...]
    child_manifests: tuple[str, ...] = ()
    diff_ids: tuple[str, ...] = ()
    transport: str = "oci"

    @property
    def ref(self) -> str:
        """The skopeo/podman reference: `oci:<layout>:<tag>` or `dir:<layout>`."""
        if self.transport == "dir":
            return f"dir:{self.layout}"
        return f"oci:{self.layout}:{self.tag}"

    @property
    def config_digest(self) -> str:
        """The config blob's digest, which docker and podman use as the image ID."""
        if self.child_manifests:
            raise ValueError(f"{self.name} is an index: each child has its own config")
        return self.blob_digests[0]

    def content(self) -> LayoutContent:
        """Everything the tag references, read back from disk (and checked) now."""
        return read_layout(self.layout, self.tag)


# --- layer contents -----------------------------------------------------------------------


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755


@dataclass(frozen=True)
class File:
    """A regular file whose bytes are `data`, or copied from `source`."""

    path: str
    data: bytes | None = None
    source: Path | None = None
    mode: int = 0o644


@dataclass(frozen=True)
class RandomFile:
    """`size` pseudo-random bytes from `seed`, streamed so that large files cost no memory."""

    path: str
    size: int
    seed: int
    mode: int = 0o644


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


Entry = Dir | File | RandomFile | Symlink


class _RandomReader:
    """A file-like object that yields `size` deterministic pseudo-random bytes."""

    def __init__(self, size: int, seed: int) -> None:
        self._left = size
        self._rng = random.Random(seed)  # test data, not secrets

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n)


class _HashingWriter(io.RawIOBase):
    """Counts and hashes what is written, then passes it on to `sink`."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _tarinfo(path: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(out: BinaryIO, entries: Iterable[Entry]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            match entry:
                case Dir(path, mode):
                    tar.addfile(_tarinfo(path, tarfile.DIRTYPE, mode))
                case Symlink(path, target):
                    info = _tarinfo(path, tarfile.SYMTYPE, 0o777)
                    info.linkname = target
                    tar.addfile(info)
                case File(path, data, source, mode):
                    if source is not None:
                        size = source.stat().st_size
                        with source.open("rb") as f:
                            tar.addfile(_tarinfo(path, tarfile.REGTYPE, mode, size), f)
                    else:
                        data = data or b""
                        info = _tarinfo(path, tarfile.REGTYPE, mode, len(data))
                        tar.addfile(info, io.BytesIO(data))
                case RandomFile(path, size, seed, mode):
                    info = _tarinfo(path, tarfile.REGTYPE, mode, size)
                    tar.addfile(info, _RandomReader(size, seed))  # type: ignore[arg-type]


# --- writing a layout -----------------------------------------------------------------------


DIR_VERSION = b"Directory Transport Version: 1.1\n"


def is_dir_format(layout: Path) -> bool:
    """True for skopeo's `dir:` format (`version`, `manifest.json`, blobs named by hex)."""
    return (layout / "version").exists() and not (layout / "oci-layout").exists()


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    if is_dir_format(layout):
        return layout / hexdigest
    return layout / "blobs" / algorithm / hexdigest


class LayoutWriter:
    """Adds blobs to an OCI image layout and tags descriptors in its `index.json`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        self._tags: dict[str, Descriptor] = {}

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_bytes(data)
        path = blob_path(self.root, digest)
        if not path.exists():
            path.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_json(self, obj: dict[str, Any], media_type: str) -> Descriptor:
        return self.add_bytes(canonical_json(obj), media_type)

    def add_layer(
        self, entries: Iterable[Entry], media_type: str = OCI_LAYER_GZIP, compresslevel: int = 6
    ) -> tuple[Descriptor, str]:
        """Write a gzipped tar layer; returns its descriptor and its diff ID (uncompressed)."""
        tmp = self.root / "blobs" / "layer.tmp"
        with tmp.open("wb") as f:
            compressed = _HashingWriter(f)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=compresslevel
            ) as gz:
                uncompressed = _HashingWriter(gz)  # type: ignore[arg-type]
                _write_tar(uncompressed, entries)  # type: ignore[arg-type]
        path = blob_path(self.root, compressed.digest)
        os.replace(tmp, path)
        return Descriptor(media_type, compressed.digest, compressed.size), uncompressed.digest

    def add_image(
        self,
        layers: list[tuple[Descriptor, str]],
        config: dict[str, Any],
        *,
        docker: bool = False,
        arch: str | None = None,
        variant: str | None = None,
    ) -> tuple[Descriptor, dict[str, Any]]:
        """Write the config and manifest of an image made of `layers`; returns the manifest."""
        platform_: dict[str, str] = {"architecture": arch or host_arch(), "os": "linux"}
        if variant:
            platform_["variant"] = variant
        full_config = {
            **platform_,
            "created": CREATED,
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
            "history": [
                {"created": CREATED, "created_by": f"berth test image builder: layer {i}"}
                for i in range(len(layers))
            ],
        }
        config_desc = self.add_json(full_config, DOCKER_CONFIG if docker else OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [desc.to_json() for desc, _ in layers],
        }
        desc = self.add_json(manifest, manifest["mediaType"])
        return Descriptor(desc.media_type, desc.digest, desc.size, platform_), manifest

    def tag(self, desc: Descriptor, tag: str) -> None:
        self._tags[tag] = desc
        manifests = []
        for name, d in sorted(self._tags.items()):
            annotations = {**(d.annotations or {}), "org.opencontainers.image.ref.name": name}
            manifests.append(
                Descriptor(d.media_type, d.digest, d.size, d.platform, annotations).to_json()
            )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.root / "index.json").write_bytes(canonical_json(index))


# --- the test images ----------------------------------------------------------------------------


def _describe(name: str, layout: Path, tag: str) -> BuiltImage:
    """Describe what `layout` holds under `tag`, by reading it back."""
    content = read_layout(layout, tag)
    config = content.configs[0] if len(content.configs) == 1 else None
    return BuiltImage(
        name=name,
        layout=layout,
        tag=tag,
        media_type=content.top.media_type,
        manifest_digest=content.top.digest,
        blob_digests=tuple(content.blobs),
        child_manifests=tuple(content.children),
        diff_ids=tuple(config["rootfs"]["diff_ids"]) if config else (),
        transport="dir" if is_dir_format(layout) else "oci",
    )


def _busybox_layers(w: LayoutWriter, media_type: str) -> list[tuple[Descriptor, str]]:
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX}: install the Debian package 'busybox-static'")
    binaries = [
        Dir("bin"),
        File("bin/busybox", source=BUSYBOX, mode=0o755),
        *(Symlink(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS),
    ]
    etc = [
        Dir("etc"),
        File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"),
        File("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
        Dir("root", 0o700),
        Dir("tmp", 0o1777),
    ]
    return [w.add_layer(binaries, media_type), w.add_layer(etc, media_type)]


BUSYBOX_CONFIG = {
    "Env": ["PATH=/bin"],
    "Entrypoint": ["/bin/busybox"],
    "Cmd": ["sh"],
    "WorkingDir": "/",
    "Labels": {"org.opencontainers.image.title": "berth-e2e-busybox"},
}


def build_busybox(root: Path, tag: str = "1.35") -> BuiltImage:
    """A real, runnable busybox image (this machine's architecture) from Debian's static binary.

    Two layers: `/bin/busybox` with applet symlinks, then `/etc/passwd`, `/etc/group`, `/tmp`.
    The entrypoint is busybox itself, so `run <image> echo hi` prints `hi`.
    """
    w = LayoutWriter(root)
    desc, _ = w.add_image(_busybox_layers(w, OCI_LAYER_GZIP), BUSYBOX_CONFIG)
    w.tag(desc, tag)
    return _describe("busybox", root, tag)


def build_docker_schema2(root: Path, tag: str = "schema2") -> BuiltImage:
    """The busybox image with Docker schema2 media types, in skopeo's `dir:` format.

    The layers are the very blobs of `build_busybox`; only the config (a label) differs.
    """
    oci = root.with_name(root.name + ".oci")
    w = LayoutWriter(oci)
    config = {**BUSYBOX_CONFIG, "Labels": {"org.opencontainers.image.title": "berth-e2e-schema2"}}
    desc, _ = w.add_image(_busybox_layers(w, DOCKER_LAYER_GZIP), config, docker=True)
    w.tag(desc, tag)
    oci_to_dir(oci, tag, root)
    shutil.rmtree(oci)
    return _describe("schema2", root, tag)


MULTI_ARCH_PLATFORMS = (("amd64", None), ("arm64", "v8"))


def build_multi_arch(root: Path, tag: str = "multi") -> BuiltImage:
    """An OCI index with one image manifest per platform in `MULTI_ARCH_PLATFORMS`.

    The children share a base layer and each has a layer of its own, so a registry has to keep
    shared blobs once and still serve every child.
    """
    w = LayoutWriter(root)
    base = w.add_layer([Dir("etc"), File("etc/os-release", b"ID=berth-e2e\n")])
    children = []
    for arch, variant in MULTI_ARCH_PLATFORMS:
        own = w.add_layer([File("arch", f"{arch}{variant or ''}\n".encode())])
        desc, _ = w.add_image([base, own], {"Cmd": ["/arch"]}, arch=arch, variant=variant)
        children.append(desc)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [c.to_json() for c in children],
    }
    w.tag(w.add_json(index, OCI_INDEX), tag)
    return _describe("multi-arch", root, tag)


def build_many_layers(root: Path, count: int = 50, tag: str = "layers") -> BuiltImage:
    """An image of `count` small layers, each with a distinct file."""
    w = LayoutWriter(root)
    layers = [
        w.add_layer([Dir(f"layer{i:03d}"), File(f"layer{i:03d}/data", f"{i}\n".encode() * 64)])
        for i in range(count)
    ]
    desc, _ = w.add_image(layers, {"Cmd": ["/bin/sh"]})
    w.tag(desc, tag)
    return _describe(f"{count}-layers", root, tag)


def build_large_layer(root: Path, size: int, seed: int = 1, tag: str = "large") -> BuiltImage:
    """An image with one layer of `size` pseudo-random (incompressible) bytes and a small one."""
    w = LayoutWriter(root)
    big = w.add_layer([RandomFile("random.bin", size, seed)], compresslevel=1)
    small = w.add_layer([File("README", f"{size} random bytes, seed {seed}\n".encode())])
    desc, _ = w.add_image([big, small], {"Cmd": ["/bin/sh"]})
    w.tag(desc, tag)
    return _describe(f"large-{size}", root, tag)


@dataclass
class ImageCache:
    """Builds each test image once, on first use, under `root` (a session's temporary dir)."""

    root: Path
    _built: dict[str, BuiltImage] = field(default_factory=dict)

    def _get(self, key: str, build: Any, *args: Any) -> BuiltImage:
        if key not in self._built:
            layout = self.root / key
            if layout.exists():  # left half-written by a build that failed
                shutil.rmtree(layout)
            self._built[key] = build(layout, *args)
        return self._built[key]

    def busybox(self) -> BuiltImage:
        return self._get("busybox", build_busybox)

    def docker_schema2(self) -> BuiltImage:
        return self._get("schema2", build_docker_schema2)

    def multi_arch(self) -> BuiltImage:
        return self._get("multi-arch", build_multi_arch)

    def many_layers(self, count: int = 50) -> BuiltImage:
        return self._get(f"layers-{count}", build_many_layers, count)

    def large_layer(self, size: int) -> BuiltImage:
        return self._get(f"large-{size}", build_large_layer, size)


# --- reading a layout -----------------------------------------------------------------------


@dataclass
class LayoutContent:
    """What one tag of a layout references: the tagged descriptor and everything below it."""

    top: Descriptor
    children: list[str]  # digests of the image manifests an index points at
    blobs: list[str]  # config and layer digests, each once, in manifest order
    configs: list[dict[str, Any]]
    manifests: dict[str, bytes]  # digest -> raw bytes, the top one and every child


def tagged(layout: Path, tag: str) -> Descriptor:
    """The descriptor `tag` names in the layout's `index.json` (`dir:`: its one manifest)."""
    if is_dir_format(layout):
        data = (layout / "manifest.json").read_bytes()
        return Descriptor(json.loads(data)["mediaType"], sha256_bytes(data), len(data))
    index = json.loads((layout / "index.json").read_bytes())
    for d in index["manifests"]:
        if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return Descriptor.from_json(d)
    raise KeyError(f"{layout}: no tag {tag!r} in index.json")


def _read_blob(layout: Path, digest: str, *, manifest: bool = False) -> bytes:
    path = blob_path(layout, digest)
    if manifest and is_dir_format(layout):
        path = layout / "manifest.json"
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != digest:
        raise ValueError(f"{layout}: blob {digest} holds content with digest {actual}")
    return data


def _manifest_media_type(data: bytes, descriptor_type: str) -> str:
    # umoci and some writers leave `mediaType` out of the manifest; the descriptor has it.
    return json.loads(data).get("mediaType") or descriptor_type


def read_layout(layout: Path, tag: str) -> LayoutContent:
    """Walk `tag` in `layout`, checking each manifest's digest on the way."""
    top = tagged(layout, tag)
    manifests: dict[str, bytes] = {}
    children: list[str] = []
    blobs: list[str] = []
    configs: list[dict[str, Any]] = []

    def image(desc: Descriptor) -> None:
        data = _read_blob(layout, desc.digest, manifest=desc.digest == top.digest)
        manifests[desc.digest] = data
        doc = json.loads(data)
        configs.append(json.loads(_read_blob(layout, doc["config"]["digest"])))
        for d in [doc["config"], *doc["layers"]]:
            if d["digest"] not in blobs:
                blobs.append(d["digest"])

    top_data = _read_blob(layout, top.digest, manifest=True)
    if _manifest_media_type(top_data, top.media_type) in INDEX_TYPES:
        manifests[top.digest] = top_data
        for child in json.loads(top_data)["manifests"]:
            children.append(child["digest"])
            image(Descriptor.from_json(child))
    else:
        image(top)
    return LayoutContent(top, children, blobs, configs, manifests)


def oci_to_dir(layout: Path, tag: str, dest: Path) -> None:
    """Copy the single image under `tag` in an OCI layout into skopeo's `dir:` format."""
    content = read_layout(layout, tag)
    if content.children:
        raise ValueError("the dir: format holds one image manifest, not an index")
    dest.mkdir(parents=True)
    (dest / "version").write_bytes(DIR_VERSION)
    (dest / "manifest.json").write_bytes(content.manifests[content.top.digest])
    for digest in content.blobs:
        shutil.copyfile(blob_path(layout, digest), dest / digest.split(":", 1)[1])


def compare_images(expected: Path, expected_tag: str, actual: Path, actual_tag: str) -> list[str]:
    """How the image under `actual_tag` in `actual` differs from `expected`'s; [] if identical.

    Identical means: the tag points at the same digest, every manifest (the index and each
    child) has the same bytes, and the same config and layer blobs are referenced, each present
    with content whose sha256 is its digest and with the same size as the expected blob.
    """
    want = read_layout(expected, expected_tag)
    try:
        got = read_layout(actual, actual_tag)
    except (OSError, KeyError, ValueError) as e:
        return [f"{actual}: cannot read {actual_tag!r}: {e!r}"]
    problems = []
    if got.top.digest != want.top.digest:
        problems.append(f"tag points at {got.top.digest}, expected {want.top.digest}")
    for digest, data in want.manifests.items():
        if got.manifests.get(digest) != data:
            problems.append(f"manifest {digest} missing or different")
    if got.blobs != want.blobs:
        problems.append(f"blobs {got.blobs} != expected {want.blobs}")
    for digest in want.blobs:
        path = blob_path(actual, digest)
        if not path.exists():
            problems.append(f"blob {digest} missing")
            continue
        if (actual_digest := sha256_file(path)) != digest:
            problems.append(f"blob {digest} holds content with digest {actual_digest}")
        if path.stat().st_size != blob_path(expected, digest).stat().st_size:
            problems.append(f"blob {digest} has a different size")
    return problems


def layer_members(layout: Path, layer_digest: str) -> dict[str, tarfile.TarInfo]:
    """The entries of a (gzipped or plain) tar layer blob, by path."""
    with tarfile.open(blob_path(layout, layer_digest), mode="r:*") as tar:
        return {member.name: member for member in tar}

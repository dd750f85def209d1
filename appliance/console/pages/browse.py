"""What is stored: overview, repositories, tags (with delete), manifest detail, push help."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from quart import Response, request

from appliance.api.inputs import depth
from appliance.console.framework import BadRequest, NavEntry, PageContext, PageNotFound, page
from appliance.errors import BerthError
from appliance.metadata import audit, browse
from appliance.metadata.browse import TagRow
from appliance.metadata.db import Tx
from appliance.oci import mediatypes as mt
from appliance.oci.digest import is_digest
from appliance.oci.names import namespace_of, validate_name, validate_tag

REPOSITORY_PAGE = 50
TAG_PAGE = 100
INDEX_TYPES = frozenset({mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST})
MAX_CONFIG = 1 << 20
# Untrusted JSON on a page: how deep it may nest, how many entries and characters are shown.
MAX_DEPTH = 32
MAX_ITEMS = 500
MAX_TEXT = 2000
# Image configs are content-addressed: what a digest says never changes, so keep a few.
_configs: OrderedDict[str, dict[str, Any]] = OrderedDict()


def visible_namespaces(ctx: PageContext) -> set[str] | None:
    """The namespaces whose repositories the user may see (None: all, for admins)."""
    principal = ctx.principal
    if principal.admin:
        return None
    return set(principal.roles)


async def _visible(ctx: PageContext) -> set[str] | None:
    names = visible_namespaces(ctx)
    if names is None:
        return None
    return names | set(await ctx.access.public_namespaces())


def registry_host(ctx: PageContext) -> str:
    """The host name clients push to: from server.public_url, else the request's Host."""
    public = ctx.services.public_url
    if public:
        return urlsplit(public).netloc
    return request.headers.get("host", "localhost")


async def image_config(ctx: PageContext, repository: str, digest: str) -> dict[str, Any]:
    """The parsed image config blob (empty when unreadable, too large or not JSON)."""
    cached = _configs.get(digest)
    if cached is not None:
        return cached
    try:
        blob = await ctx.registry.blob(repository, digest)
    except BerthError:
        return {}
    if blob.size > MAX_CONFIG:
        return {}
    data = b""
    try:
        async for chunk in ctx.registry.read_blob(blob, 0, blob.size):
            data += chunk
    except BerthError:
        return {}  # unreadable bytes: the page shows what the records say
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):  # "[[[[...": the decoder's stack runs out
        return {}
    if not isinstance(parsed, dict) or depth(parsed) > MAX_DEPTH:
        return {}  # the page shows what the records say rather than break on it
    _configs[digest] = parsed
    while len(_configs) > 512:
        _configs.popitem(last=False)
    return parsed


def _short(value: Any, limit: int = MAX_TEXT) -> str:
    """An untrusted scalar as page text, at most `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value)[: limit + 1]
    return text if len(text) <= limit else text[:limit] + "…"


def _platform(p: Any) -> str:
    if not isinstance(p, dict):
        return ""
    text = f"{_short(p.get('os', '?'), 40)}/{_short(p.get('architecture', '?'), 40)}"
    if p.get("variant"):
        text += f"/{_short(p['variant'], 40)}"
    return text


def config_view(config: dict[str, Any]) -> dict[str, Any]:
    """What the manifest page shows of an image config, shaped and bounded: the config is
    pushed by anyone who may push, so a value of another type, or a huge one, is shown as
    text or left out, never handed to the template as it is."""
    found = config.get("config")
    inner: dict[str, Any] = found if isinstance(found, dict) else {}

    def words(value: Any) -> list[str]:
        if isinstance(value, str):
            return [_short(value)]
        if isinstance(value, list):
            return [_short(v) for v in value[:MAX_ITEMS]]
        return []

    labels = inner.get("Labels")
    return {
        "created": _short(config["created"], 64) if config.get("created") else "",
        "labels": {_short(k, 200): _short(v) for k, v in list(labels.items())[:MAX_ITEMS]}
        if isinstance(labels, dict)
        else {},
        "env": words(inner.get("Env")),
        "entrypoint": words(inner.get("Entrypoint")),
        "cmd": words(inner.get("Cmd")),
    }


def index_children(payload: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return []
    children = doc.get("manifests") if isinstance(doc, dict) else None
    return [c for c in children or [] if isinstance(c, dict)]


async def platforms(ctx: PageContext, repository: str, row: TagRow) -> list[str]:
    if row.media_type in INDEX_TYPES:
        found = [_platform(c.get("platform")) for c in index_children(row.payload)]
        return [p for p in found if p and p != "unknown/unknown"]
    if row.config_digest:
        config = await image_config(ctx, repository, row.config_digest)
        if "os" in config and "architecture" in config:
            return [_platform(config)]
    return []


@page("/", nav=NavEntry("Overview", "/", order=10))
async def overview(ctx: PageContext) -> Response:
    visible = await _visible(ctx)
    own = visible_namespaces(ctx)

    def fn(tx: Tx) -> dict[str, Any]:
        return {
            "totals": browse.totals(tx) if own is None else None,
            "by_namespace": browse.storage_by_namespace(tx, visible),
            "recent": browse.recent_pushes(tx, visible, 10),
        }

    data = await ctx.access.db.read(fn)
    by_ns: dict[str, int] = data["by_namespace"]
    largest = max(by_ns.values(), default=0)
    chart = [(ns, size, (size * 100 // largest) if largest else 0) for ns, size in by_ns.items()]
    return await ctx.render(
        "overview.html",
        title="Overview",
        totals=data["totals"],
        visible_bytes=sum(by_ns.values()),
        chart=chart[:20],
        recent=data["recent"],
        host=registry_host(ctx),
        personal=ctx.principal.name,
    )


@page("/repositories", nav=NavEntry("Repositories", "/repositories", order=20))
async def repositories(ctx: PageContext) -> Response:
    visible = await _visible(ctx)
    search = ctx.arg("q").strip()[:200]
    descending = ctx.arg("sort") == "-name"
    after = ctx.arg("after") or None

    def fn(tx: Tx) -> list[browse.RepositoryRow]:
        return browse.repositories(
            tx,
            visible,
            search=search,
            descending=descending,
            after=after,
            limit=REPOSITORY_PAGE + 1,
        )

    rows = await ctx.access.db.read(fn)
    more = len(rows) > REPOSITORY_PAGE
    rows = rows[:REPOSITORY_PAGE]
    return await ctx.render(
        "repositories.html",
        title="Repositories",
        rows=rows,
        search=search,
        sort="-name" if descending else "name",
        next_after=rows[-1].name if more and rows else None,
        paged=after is not None,
    )


def _repository(name: str) -> str:
    try:
        return validate_name(name)
    except BerthError:
        raise PageNotFound(f"no repository {name}") from None


@page("/r/<path:name>")
async def repository(ctx: PageContext, name: str) -> Response:
    name = _repository(name)
    await ctx.require(name, "pull")
    after = ctx.arg("after") or None

    def fn(tx: Tx) -> list[TagRow] | None:
        if not browse.repository_exists(tx, name):
            return None
        return browse.tags(tx, name, after=after, limit=TAG_PAGE + 1)

    rows = await ctx.access.db.read(fn)
    if rows is None:
        raise PageNotFound(f"no repository {name}")
    more = len(rows) > TAG_PAGE
    rows = rows[:TAG_PAGE]
    tags = [(row, await platforms(ctx, name, row)) for row in rows]
    return await ctx.render(
        "repository.html",
        title=name,
        name=name,
        namespace=namespace_of(name),
        tags=tags,
        next_after=rows[-1].name if more and rows else None,
        may_delete=await ctx.may(name, "delete"),
        host=registry_host(ctx),
    )


@page("/r/<path:name>/-/delete", methods=("POST",))
async def delete_tags(ctx: PageContext, name: str) -> Response:
    """Two steps: the tags ticked on the repository page are listed for confirmation; the
    confirmation form (with `confirm=yes`) deletes them."""
    name = _repository(name)
    await ctx.require(name, "delete")
    chosen = []
    for tag in await ctx.form_list("tag"):
        try:
            chosen.append(validate_tag(tag))
        except BerthError:
            raise BadRequest(f"not a tag name: {tag!r}") from None
    if not chosen:
        return await ctx.redirect(f"/r/{name}", "No tag was selected.")
    form = await ctx.form()
    if form.get("confirm") != "yes":
        return await ctx.render("confirm_delete.html", title="Delete tags", name=name, tags=chosen)
    deleted = []
    for tag in chosen:
        actor = ctx.actor

        def note(tx: Tx, tag: str = tag, actor: str = actor) -> None:
            audit.record(tx, actor, "tag.delete", f"{name}:{tag}", via="console")

        try:
            await ctx.registry.delete_manifest(name, tag, audit=note)
        except BerthError:
            continue  # gone meanwhile
        deleted.append(tag)
    ctx.access.invalidate()
    return await ctx.redirect(f"/r/{name}", f"Deleted {len(deleted)} tag(s): {', '.join(deleted)}")


@page("/r/<path:name>/-/manifest/<digest>")
async def manifest_detail(ctx: PageContext, name: str, digest: str) -> Response:
    name = _repository(name)
    await ctx.require(name, "pull")
    if not is_digest(digest):
        raise PageNotFound(f"no manifest {digest}")
    row = await ctx.access.db.read(lambda tx: browse.manifest(tx, name, digest))
    if row is None:
        raise PageNotFound(f"manifest {digest} is not in {name}")
    try:
        doc = json.loads(row.payload)
    except (ValueError, RecursionError):
        doc = {}
    layers: list[dict[str, Any]] = []
    children: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    if row.media_type in INDEX_TYPES:
        for child in index_children(row.payload):
            children.append(
                {
                    "digest": str(child.get("digest", "")),
                    "size": child.get("size"),
                    "platform": _platform(child.get("platform")),
                    "media_type": child.get("mediaType", ""),
                }
            )
    else:
        for layer in doc.get("layers") or []:
            if isinstance(layer, dict):
                layers.append(
                    {
                        "digest": str(layer.get("digest", "")),
                        "size": layer.get("size"),
                        "media_type": str(layer.get("mediaType", "")),
                    }
                )
        if row.config_digest:
            config = await image_config(ctx, name, row.config_digest)
    referrers = await ctx.registry.referrers(name, digest, None)
    shown = config_view(config)
    # Re-indented only when shallow: the indenting encoder recurses in Python, and a
    # manifest nested a few hundred levels deep is valid JSON.
    pretty = bool(doc) and depth(doc) <= MAX_DEPTH
    return await ctx.render(
        "manifest.html",
        title=f"{name}@{digest[:19]}",
        name=name,
        row=row,
        layers=layers,
        children=children,
        config=shown if config else {},
        labels=shown["labels"],
        env=shown["env"],
        entrypoint=shown["entrypoint"],
        cmd=shown["cmd"],
        platform=_platform(config) if config else "",
        referrers=[_referrer(r) for r in referrers],
        payload=json.dumps(doc, indent=2) if pretty else row.payload.decode(errors="replace"),
        host=registry_host(ctx),
    )


REFERRER_KINDS = {
    "application/vnd.dev.cosign.artifact.sig.v1+json": "signature (cosign)",
    "application/vnd.dev.sigstore.bundle.v0.3+json": "signature (sigstore bundle)",
    "application/vnd.cncf.notary.signature": "signature (notation)",
    "application/spdx+json": "SBOM (SPDX)",
    "application/vnd.cyclonedx+json": "SBOM (CycloneDX)",
    "application/vnd.in-toto+json": "attestation (in-toto)",
}


def _referrer(descriptor: dict[str, Any]) -> dict[str, Any]:
    kind = str(descriptor.get("artifactType") or descriptor.get("mediaType") or "")
    label = REFERRER_KINDS.get(kind)
    if label is None:
        label = "SBOM" if "sbom" in kind.lower() or "spdx" in kind.lower() else kind
    return {
        "digest": str(descriptor.get("digest", "")),
        "size": descriptor.get("size"),
        "kind": label,
        "artifact_type": kind,
        "annotations": descriptor.get("annotations") or {},
    }


@page("/push", nav=NavEntry("Push here", "/push", order=80))
async def push_help(ctx: PageContext) -> Response:
    namespaces = sorted(ctx.principal.roles) or [ctx.principal.name]
    return await ctx.render(
        "push.html",
        title="Push here",
        host=registry_host(ctx),
        user=ctx.principal.name,
        namespace=ctx.principal.name if ctx.principal.name in namespaces else namespaces[0],
        via=ctx.session.via if ctx.session is not None else "",
    )

"""The proxy's own records (migration 0008): proxy namespaces, cached tags, staged manifests.

Cached blobs and complete manifests are ordinary registry records, written through the
registry service like a push; these tables only hold what a cache needs besides: which upstream
a namespace mirrors, when each tag was last checked upstream, and manifests fetched before
everything they refer to was cached. Each coroutine is one unit of work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import ConfigError
from appliance.metadata import audit
from appliance.metadata.db import Database, Tx
from appliance.metadata.store import ensure_repository


@dataclass(frozen=True)
class CachedTag:
    digest: str
    validated_at: float


@dataclass(frozen=True)
class StagedManifest:
    digest: str
    media_type: str
    payload: bytes


@dataclass(frozen=True)
class RepositoryStatus:
    name: str
    tags: int
    manifests: int
    staged: int
    last_validated: float | None


def is_proxy_namespace(tx: Tx, name: str) -> bool:
    return tx.scalar("SELECT 1 FROM proxy_namespaces WHERE name = :n", {"n": name}) is not None


class ProxyStore:
    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    async def register(self, namespaces: dict[str, str]) -> None:
        """Claim each proxy namespace (name → upstream URL) in the shared name space.

        Raises ConfigError when the name is a user's personal namespace, or a namespace that
        already holds repositories of its own. A namespace created empty beforehand (to give
        it members or make it public) becomes the proxy namespace.
        """
        now = self.clock()

        def fn(tx: Tx) -> None:
            for name, url in namespaces.items():
                known = tx.one("SELECT upstream FROM proxy_namespaces WHERE name = :n", {"n": name})
                row = tx.one(
                    "SELECT n.id, u.name FROM namespaces n "
                    "LEFT JOIN users u ON u.id = n.owner_user WHERE n.name = :n",
                    {"n": name},
                )
                owner = tx.scalar("SELECT name FROM users WHERE name = :n", {"n": name})
                if owner is None and row is not None:
                    owner = row[1]
                if owner is not None:
                    raise ConfigError(
                        f"proxy.upstreams: {name!r} is the personal namespace of user "
                        f"{owner!r}; choose another name for the proxy namespace"
                    )
                if known is None:
                    owned = tx.scalar(
                        "SELECT name FROM repositories WHERE SUBSTR(name, 1, :n) = :p LIMIT 1",
                        {"p": name + "/", "n": len(name) + 1},
                    )
                    if owned is not None:
                        raise ConfigError(
                            f"proxy.upstreams: namespace {name!r} already holds repositories "
                            f"(e.g. {owned!r}) that were pushed, not cached; choose another "
                            "name for the proxy namespace"
                        )
                if row is None:
                    tx.execute(
                        "INSERT INTO namespaces (name, public, created_at) VALUES (:n, 0, :now)",
                        {"n": name, "now": now},
                    )
                if known is None or known[0] != url:
                    tx.execute(
                        "INSERT INTO proxy_namespaces (name, upstream, created_at) "
                        "VALUES (:n, :u, :now) ON CONFLICT (name) DO UPDATE "
                        "SET upstream = excluded.upstream",
                        {"n": name, "u": url, "now": now},
                    )
                    audit.record(tx, "system", "proxy.namespace.configure", name, upstream=url)

        await self.db.write(fn)

    async def tag(self, repository: str, tag: str) -> CachedTag | None:
        def fn(tx: Tx) -> CachedTag | None:
            row = tx.one(
                "SELECT p.digest, p.validated_at FROM proxy_tags p "
                "JOIN repositories r ON r.id = p.repository_id "
                "WHERE r.name = :name AND p.tag = :tag",
                {"name": repository, "tag": tag},
            )
            return None if row is None else CachedTag(row[0], float(row[1]))

        return await self.db.read(fn)

    async def set_tag(self, repository: str, tag: str, digest: str, validated_at: float) -> None:
        now = self.clock()

        def fn(tx: Tx) -> None:
            repo_id = ensure_repository(tx, repository, now)
            tx.execute(
                "INSERT INTO proxy_tags (repository_id, tag, digest, validated_at) "
                "VALUES (:r, :t, :d, :v) ON CONFLICT (repository_id, tag) DO UPDATE "
                "SET digest = excluded.digest, validated_at = excluded.validated_at",
                {"r": repo_id, "t": tag, "d": digest, "v": validated_at},
            )

        await self.db.write(fn)

    async def stage(self, repository: str, digest: str, media_type: str, payload: bytes) -> None:
        now = self.clock()

        def fn(tx: Tx) -> None:
            repo_id = ensure_repository(tx, repository, now)
            tx.execute(
                "INSERT INTO proxy_manifests (repository_id, digest, media_type, payload, "
                "fetched_at) VALUES (:r, :d, :mt, :p, :now) "
                "ON CONFLICT (repository_id, digest) DO NOTHING",
                {"r": repo_id, "d": digest, "mt": media_type, "p": payload, "now": now},
            )

        await self.db.write(fn)

    async def staged(self, repository: str, digest: str | None = None) -> list[StagedManifest]:
        """Staged manifests of `repository` (only `digest`, when given), oldest first."""

        def fn(tx: Tx) -> list[StagedManifest]:
            sql = (
                "SELECT p.digest, p.media_type, p.payload FROM proxy_manifests p "
                "JOIN repositories r ON r.id = p.repository_id WHERE r.name = :name"
            )
            params = {"name": repository}
            if digest is not None:
                sql += " AND p.digest = :d"
                params["d"] = digest
            rows = tx.execute(sql + " ORDER BY p.fetched_at, p.digest", params)
            return [StagedManifest(r[0], r[1], bytes(r[2])) for r in rows]

        return await self.db.read(fn)

    async def tags_of(self, repository: str, digest: str) -> list[str]:
        """Cached tags that point at `digest` upstream."""

        def fn(tx: Tx) -> list[str]:
            rows = tx.execute(
                "SELECT p.tag FROM proxy_tags p JOIN repositories r ON r.id = p.repository_id "
                "WHERE r.name = :name AND p.digest = :d ORDER BY p.tag",
                {"name": repository, "d": digest},
            )
            return [r[0] for r in rows]

        return await self.db.read(fn)

    async def unstage(self, repository: str, digest: str) -> None:
        def fn(tx: Tx) -> None:
            tx.execute(
                "DELETE FROM proxy_manifests WHERE digest = :d AND repository_id = "
                "(SELECT id FROM repositories WHERE name = :name)",
                {"d": digest, "name": repository},
            )

        await self.db.write(fn)

    async def status(self, namespace: str, limit: int = 200) -> list[RepositoryStatus]:
        """Cached repositories of a proxy namespace, for the console and `berth mirror status`."""

        def fn(tx: Tx) -> list[RepositoryStatus]:
            rows = tx.execute(
                "SELECT r.name, "
                "(SELECT COUNT(*) FROM tags t WHERE t.repository_id = r.id), "
                "(SELECT COUNT(*) FROM manifests m WHERE m.repository_id = r.id), "
                "(SELECT COUNT(*) FROM proxy_manifests s WHERE s.repository_id = r.id), "
                "(SELECT MAX(p.validated_at) FROM proxy_tags p WHERE p.repository_id = r.id) "
                "FROM repositories r WHERE SUBSTR(r.name, 1, :len) = :p "
                "ORDER BY r.name LIMIT :n",
                {"p": namespace + "/", "len": len(namespace) + 1, "n": limit},
            )
            return [
                RepositoryStatus(
                    r[0], int(r[1]), int(r[2]), int(r[3]), None if r[4] is None else float(r[4])
                )
                for r in rows
            ]

        return await self.db.read(fn)

"""Advisory data imported offline: OSV records and the Debian security tracker's JSON.

`berth vulndb import PATH` reads a directory or a zip of OSV JSON files (one advisory per file,
as OSV publishes them per ecosystem; zips inside a directory are read too) or the Debian
security tracker's one big JSON document. Every import is numbered and recorded; an advisory
whose content did not change is left alone (imports are incremental), a changed one is
replaced, a withdrawn one removed. The database's version is the newest import that changed
something, and reports remember the version they were matched against.

A file that does not parse is reported by name and skipped; the rest of the import goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import BerthError
from appliance.metadata import audit
from appliance.metadata.db import Tx
from appliance.scan import records
from appliance.scan.matching import RANK, SEVERITIES, Affected, normalize_name

log = logging.getLogger("berth.scan")

BATCH = 500

# OSV ecosystem (before any `:release`) → Package URL type.
OSV_ECOSYSTEMS = {
    "Debian": "deb",
    "Ubuntu": "deb",
    "Alpine": "apk",
    "Wolfi": "apk",
    "Chainguard": "apk",
    "Red Hat": "rpm",
    "Rocky Linux": "rpm",
    "AlmaLinux": "rpm",
    "openSUSE": "rpm",
    "SUSE": "rpm",
    "Mageia": "rpm",
    "PyPI": "pypi",
    "npm": "npm",
    "Go": "golang",
}
# Debian's urgency words → severity.
DEBIAN_URGENCY = {
    "unimportant": "low",
    "low": "low",
    "low**": "low",
    "medium": "medium",
    "medium**": "medium",
    "high": "high",
    "high**": "high",
}


class AdvisoryError(BerthError):
    """An advisory file that could not be read."""


@dataclass
class Advisory:
    source: str
    id: str
    severity: str
    summary: str
    modified: str
    affected: list[dict[str, Any]]
    withdrawn: bool = False

    def content_hash(self) -> str:
        doc = [self.severity, self.summary, self.affected]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class ImportResult:
    import_id: int
    source: str
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "import": self.import_id,
            "source": self.source,
            "added": self.added,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": len(self.errors),
            "errors": self.errors,
        }


# -- severities -------------------------------------------------------------------------------


def _cvss_severity(kind: str, vector: str) -> str | None:
    from cvss import CVSS2, CVSS3, CVSS4  # type: ignore[import-untyped]  # noqa: PLC0415

    try:
        if kind == "CVSS_V4":
            return str(CVSS4(vector).severity).lower()
        if kind == "CVSS_V3":
            return str(CVSS3(vector).severities()[0]).lower()
        if kind == "CVSS_V2":
            score = float(CVSS2(vector).scores()[0])
            return "high" if score >= 7 else "medium" if score >= 4 else "low"
    except Exception:  # the cvss library raises its own kinds for a malformed vector
        return None
    return None


def _word_severity(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    word = value.strip().lower()
    word = {"moderate": "medium", "important": "high", "negligible": "low"}.get(word, word)
    return word if word in RANK and word != "unknown" else None


def _severity_of(block: dict[str, Any]) -> str | None:
    """The worst severity an OSV object (record or affected entry) states."""
    found: list[str] = []
    for item in block.get("severity") or []:
        if isinstance(item, dict) and isinstance(item.get("score"), str):
            sev = _cvss_severity(str(item.get("type")), item["score"])
            if sev is None:
                sev = _word_severity(item["score"])
            if sev:
                found.append(sev)
    for holder in ("database_specific", "ecosystem_specific"):
        extra = block.get(holder)
        if isinstance(extra, dict):
            sev = _word_severity(extra.get("severity"))
            if sev:
                found.append(sev)
    found = [s for s in found if s in RANK]
    return max(found, key=RANK.__getitem__) if found else None


# -- OSV --------------------------------------------------------------------------------------


def parse_osv(doc: object, where: str) -> Advisory:
    """One OSV record (https://ossf.github.io/osv-schema/). Raises AdvisoryError."""
    if not isinstance(doc, dict):
        raise AdvisoryError(f"{where}: an OSV record is a JSON object")
    adv_id = doc.get("id")
    if not isinstance(adv_id, str) or not adv_id:
        raise AdvisoryError(f"{where}: no 'id'")
    affected_in = doc.get("affected", [])
    if not isinstance(affected_in, list):
        raise AdvisoryError(f"{where}: 'affected' must be a list")
    record_severity = _severity_of(doc)
    affected: list[dict[str, Any]] = []
    for i, entry in enumerate(affected_in):
        if not isinstance(entry, dict):
            raise AdvisoryError(f"{where}: affected[{i}] must be an object")
        package = entry.get("package")
        if not isinstance(package, dict):
            continue
        ecosystem = package.get("ecosystem")
        name = package.get("name")
        if not isinstance(ecosystem, str) or not isinstance(name, str):
            raise AdvisoryError(f"{where}: affected[{i}].package needs ecosystem and name")
        base, _, release = ecosystem.partition(":")
        purl_type = OSV_ECOSYSTEMS.get(base)
        if purl_type is None:
            continue  # an ecosystem Berth reads no packages of
        ranges = entry.get("ranges", [])
        versions = entry.get("versions", [])
        if not isinstance(ranges, list) or not isinstance(versions, list):
            raise AdvisoryError(f"{where}: affected[{i}] ranges/versions must be lists")
        for r in ranges:
            if not isinstance(r, dict) or not isinstance(r.get("events", []), list):
                raise AdvisoryError(f"{where}: affected[{i}] has a malformed range")
            for event in r.get("events", []):
                if not isinstance(event, dict) or not all(
                    isinstance(v, str) for v in event.values()
                ):
                    raise AdvisoryError(f"{where}: affected[{i}] has a malformed event")
        affected.append(
            {
                "ecosystem": purl_type,
                "distro": release.removeprefix("v") if purl_type == "apk" else release,
                "package": normalize_name(purl_type, name),
                "ranges": ranges,
                "versions": [str(v) for v in versions],
                "severity": _severity_of(entry),
            }
        )
    worst = [a["severity"] for a in affected if a["severity"]]
    severity = record_severity or (max(worst, key=RANK.__getitem__) if worst else "unknown")
    summary = doc.get("summary") or doc.get("details") or ""
    return Advisory(
        "osv",
        adv_id,
        severity,
        str(summary)[:500],
        str(doc.get("modified", "")),
        affected,
        withdrawn=bool(doc.get("withdrawn")),
    )


# -- Debian security tracker --------------------------------------------------------------------


def looks_like_debian_tracker(doc: object) -> bool:
    if not isinstance(doc, dict) or not doc or "id" in doc:
        return False
    first = next(iter(doc.values()))
    return isinstance(first, dict) and all(isinstance(v, dict) for v in first.values())


def parse_debian_tracker(doc: dict[str, Any], where: str) -> Iterator[Advisory | AdvisoryError]:
    """The tracker's JSON (`{source package: {CVE: {releases: {codename: {...}}}}}`), one
    advisory per CVE with an affected entry per source package and release."""
    by_cve: dict[str, Advisory] = {}
    for package, cves in doc.items():
        if not isinstance(cves, dict):
            yield AdvisoryError(f"{where}: entry {package!r} is not an object")
            continue
        for cve, info in cves.items():
            if not isinstance(info, dict) or not isinstance(info.get("releases", {}), dict):
                yield AdvisoryError(f"{where}: {package} {cve} is malformed")
                continue
            adv = by_cve.setdefault(
                cve,
                Advisory("debian", cve, "unknown", str(info.get("description", ""))[:500], "", []),
            )
            for codename, rel in sorted(info.get("releases", {}).items()):
                if not isinstance(rel, dict):
                    continue
                status = rel.get("status")
                fixed = rel.get("fixed_version")
                if status == "resolved" and (not fixed or fixed == "0"):
                    continue  # never affected in that release
                if status not in ("resolved", "open", "undetermined"):
                    continue
                events: list[dict[str, str]] = [{"introduced": "0"}]
                if status == "resolved":
                    events.append({"fixed": str(fixed)})
                urgency = DEBIAN_URGENCY.get(str(rel.get("urgency", "")).lower())
                adv.affected.append(
                    {
                        "ecosystem": "deb",
                        "distro": codename,
                        "package": package,
                        "ranges": [{"type": "ECOSYSTEM", "events": events}],
                        "versions": [],
                        "severity": urgency,
                    }
                )
                if urgency and RANK[urgency] > RANK[adv.severity]:
                    adv.severity = urgency
    yield from (adv for adv in by_cve.values() if adv.affected)


# -- reading files --------------------------------------------------------------------------------


def _documents(path: Path) -> Iterator[tuple[str, bytes | AdvisoryError]]:
    """(name, bytes) of every JSON document under `path` (a file, a directory or a zip)."""
    if not path.exists():
        raise AdvisoryError(f"{path} does not exist")
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and child.suffix in (".json", ".zip"):
                yield from _documents(child)
        return
    if path.suffix == ".zip" or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.is_dir() or not info.filename.endswith(".json"):
                        continue
                    yield f"{path}:{info.filename}", archive.read(info)
        except (zipfile.BadZipFile, OSError) as e:
            yield str(path), AdvisoryError(f"{path}: not a readable zip ({e})")
        return
    try:
        yield str(path), path.read_bytes()
    except OSError as e:
        yield str(path), AdvisoryError(f"{path}: {e.strerror}")


def read_advisories(path: Path) -> Iterator[Advisory | AdvisoryError]:
    """Every advisory under `path`, or an error per file that does not parse."""
    for name, data in _documents(path):
        if isinstance(data, AdvisoryError):
            yield data
            continue
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            yield AdvisoryError(f"{name}: not JSON ({e})")
            continue
        if isinstance(doc, list):  # some dumps hold a list of OSV records
            for i, item in enumerate(doc):
                try:
                    yield parse_osv(item, f"{name}[{i}]")
                except AdvisoryError as e:
                    yield e
        elif looks_like_debian_tracker(doc):
            yield from parse_debian_tracker(doc, name)
        else:
            try:
                yield parse_osv(doc, name)
            except AdvisoryError as e:
                yield e


# -- storing ------------------------------------------------------------------------------------


def _store_batch(tx: Tx, batch: list[Advisory], result: ImportResult) -> None:
    for adv in batch:
        digest = adv.content_hash()
        old = records.advisory_hash(tx, adv.source, adv.id)
        if adv.withdrawn:
            if old is not None:
                records.clear_affected(tx, adv.source, adv.id)
                records.delete_advisory(tx, adv.source, adv.id)
                result.removed += 1
            continue
        if old == digest:
            result.unchanged += 1
            continue
        params = {
            "s": adv.source,
            "id": adv.id,
            "sev": adv.severity,
            "sum": adv.summary,
            "mod": adv.modified,
            "h": digest,
            "imp": result.import_id,
        }
        if old is None:
            records.insert_advisory(tx, params)
            result.added += 1
        else:
            records.update_advisory(tx, params)
            records.clear_affected(tx, adv.source, adv.id)
            result.changed += 1
        records.add_affected(
            tx,
            [
                {
                    "s": adv.source,
                    "id": adv.id,
                    "eco": a["ecosystem"],
                    "distro": a["distro"],
                    "pkg": a["package"],
                    "ranges": json.dumps(a["ranges"]),
                    "versions": json.dumps(a["versions"]),
                    "sev": a["severity"],
                }
                for a in adv.affected
            ],
        )


def import_path(
    run_write: Callable[[Callable[[Tx], Any]], Any], path: Path, now: float, actor: str
) -> ImportResult:
    """Import every advisory under `path` (blocking). `run_write` runs a unit of work in a
    write transaction (`Database.run_sync_write`). Batches commit one by one under one import
    number; the import row gets its counts at the end."""
    path = path.resolve()
    items = read_advisories(path)

    def start(tx: Tx) -> int:
        return records.start_import(tx, str(path), now)

    result = ImportResult(int(run_write(start)), "")
    sources: set[str] = set()
    batch: list[Advisory] = []
    for item in items:
        if isinstance(item, AdvisoryError):
            log.warning("advisory import: %s", item.message)
            result.errors.append(item.message)
            continue
        sources.add(item.source)
        batch.append(item)
        if len(batch) >= BATCH:
            run_write(lambda tx, b=batch: _store_batch(tx, b, result))  # type: ignore[misc]
            batch = []
    if batch:
        run_write(lambda tx: _store_batch(tx, batch, result))
    result.source = ",".join(sorted(sources)) or "none"

    def finish(tx: Tx) -> None:
        records.finish_import(
            tx,
            {
                "source": result.source,
                "a": result.added,
                "c": result.changed + result.removed,
                "u": result.unchanged,
                "f": len(result.errors),
                "id": result.import_id,
            },
        )
        audit.record(
            tx,
            actor,
            "vulndb.import",
            str(path),
            at=now,
            import_id=result.import_id,
            added=result.added,
            changed=result.changed,
            removed=result.removed,
            failed=len(result.errors),
        )
        bump_generation(tx)

    run_write(finish)
    return result


SCAN_TOPIC = "scan"  # the change stamp of pull verdicts (policies, advisories, reports)


def bump_generation(tx: Tx) -> None:
    """Tell every serving process that cached pull verdicts may be stale: the counter for the
    gates, the change stamp so that they look at once (metadata/changes.py)."""
    records.next_generation(tx)
    tx.touch(SCAN_TOPIC)


def current_version(tx: Tx) -> int:
    """The newest import that changed the advisory data (0: none)."""
    return records.newest_import(tx)


def status(tx: Tx) -> dict[str, Any]:
    """What `berth vulndb status` and the API show."""
    by_source = {str(r[0]): int(r[1]) for r in records.advisories_by_source(tx)}
    by_ecosystem = {str(r[0]): int(r[1]) for r in records.advisories_by_ecosystem(tx)}
    imports = [
        {
            "import": int(r[0]),
            "source": r[1],
            "path": r[2],
            "imported_at": float(r[3]),
            "added": int(r[4]),
            "changed": int(r[5]),
            "unchanged": int(r[6]),
            "failed": int(r[7]),
        }
        for r in records.recent_imports(tx, 10)
    ]
    return {
        "version": current_version(tx),
        "advisories": sum(by_source.values()),
        "by_source": by_source,
        "by_ecosystem": by_ecosystem,
        "imports": imports,
    }


class AdvisoryIndex:
    """The affected entries of every advisory, by (ecosystem, package), for matching many
    SBOMs at once without a query per package."""

    def __init__(self, entries: list[Affected]) -> None:
        self.by_package: dict[tuple[str, str], list[Affected]] = {}
        for entry in entries:
            self.by_package.setdefault((entry.ecosystem, entry.package), []).append(entry)

    def lookup(self, ecosystem: str, name: str) -> list[Affected]:
        return self.by_package.get((ecosystem, name), [])


def load_index(tx: Tx, packages: set[tuple[str, str]] | None = None) -> AdvisoryIndex:
    """The whole advisory index, or only the entries for `packages` ((ecosystem, name))."""
    rows = records.affected_rows(tx, packages)
    entries = [
        Affected(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            str(r[3]),
            str(r[4]),
            json.loads(r[5]),
            json.loads(r[6]),
            str(r[7]) if r[7] in SEVERITIES else "unknown",
            str(r[8] or ""),
        )
        for r in rows
    ]
    return AdvisoryIndex(entries)

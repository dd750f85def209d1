"""The scanner: SBOMs for pushed images, findings against the imported advisories, metrics.

A push queues its image manifest (`scan_queue`, in the push's own transaction). The jobs
leader takes due rows every `scan.interval` seconds: it streams the image's layers once each
from the blob store into a scan worker, a process of its own with bounded memory and time
(`worker.py`), which answers the CycloneDX SBOM; the leader stores it as the image's report,
pushes it into the repository as an OCI artifact whose `subject` is the image (so the
referrers API and `oras discover` list it) and matches it against the advisory data. Reports
are kept per manifest digest, so the same image in another repository only gets its referrer.
When advisory data is imported, every stored SBOM is matched again; no layer is read twice.

A layer that cannot be read makes that image's report an error (shown with the message) and
the scanner moves on to the next image. A layer over one of the bounds (`scan.max_*`,
`scan.timeout`) is read up to the bound: the report is `incomplete`, says which bound cut
what, and holds the findings of what was read. Storage or database faults leave the row
queued, retried later with a growing delay.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import trio
from prometheus_client import Counter, Gauge

from appliance.config import Config
from appliance.errors import (
    BerthError,
    ConfigError,
    Denied,
    ManifestBlobUnknown,
    ManifestInvalid,
)
from appliance.metadata import events
from appliance.metadata.db import Database, Tx
from appliance.metadata.leader import Fence
from appliance.metadata.store import ManifestRecord
from appliance.oci import manifest as manifests
from appliance.oci import mediatypes as mt
from appliance.oci.digest import Digest
from appliance.registry import Registry
from appliance.runtime.jobs import Job
from appliance.runtime.metrics import REGISTRY
from appliance.runtime.program import program_command
from appliance.scan import records, vulndb
from appliance.scan import sbom as sboms
from appliance.scan.layers import LayerError, Limits
from appliance.scan.matching import RANK, SEVERITIES, Affected, affected_by, distro_matches
from appliance.scan.packages import OsRelease
from appliance.scan.policy import PullGate
from appliance.scan.vulndb import AdvisoryIndex, bump_generation
from appliance.scan.worker import Extraction, Layer, WorkerSettings, extract

log = logging.getLogger("berth.scan")

IMAGE_CONFIGS = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
MAX_ATTEMPTS = 5
BATCH = 20
STATUSES = ("ok", "incomplete", "error")  # a report's status; incomplete: cut by a bound
SCANNED = ("ok", "incomplete")  # statuses with an SBOM and findings

SCANS = Counter(
    "berth_scan_scans", "Image SBOM extractions, by result.", ["result"], registry=REGISTRY
)
LAYER_BYTES = Counter(
    "berth_scan_layer_bytes", "Compressed layer bytes read for SBOMs.", registry=REGISTRY
)
FINDINGS = Gauge(
    "berth_scan_findings",
    "Vulnerability findings in stored images, by severity (kept by the jobs leader).",
    ["severity"],
    registry=REGISTRY,
    multiprocess_mode="max",
)
IMAGES = Gauge(
    "berth_scan_images",
    "Scanned image manifests, by report status (kept by the jobs leader).",
    ["status"],
    registry=REGISTRY,
    multiprocess_mode="max",
)


@dataclass(frozen=True)
class Finding:
    advisory_id: str
    severity: str
    package: str
    purl: str
    installed: str
    fixed: str | None
    summary: str

    def as_json(self) -> dict[str, Any]:
        return {
            "advisory": self.advisory_id,
            "severity": self.severity,
            "package": self.package,
            "purl": self.purl,
            "installed": self.installed,
            "fixed": self.fixed,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class Report:
    digest: str
    status: str
    error: str | None
    packages: int
    scanned_at: float
    vulndb_version: int
    sbom_digest: str | None
    findings: list[Finding]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(reversed(SEVERITIES), 0)
        for f in self.findings:
            out[f.severity] += 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "status": self.status,
            "error": self.error,
            "packages": self.packages,
            "scanned_at": self.scanned_at,
            "vulndb_version": self.vulndb_version,
            "sbom": self.sbom_digest,
            "counts": self.counts(),
            "findings": [f.as_json() for f in self.findings],
        }


def is_image(parsed: manifests.Manifest) -> bool:
    """An image manifest whose layers are a filesystem (not an artifact, not a referrer)."""
    return (
        parsed.media_type in mt.IMAGE_MANIFESTS
        and parsed.subject is None
        and parsed.config is not None
        and parsed.config.media_type in IMAGE_CONFIGS
    )


# -- matching --------------------------------------------------------------------------------


Memo = dict[tuple[str, str, str, str, str], list[tuple[Affected, str | None]]]


def _hits(
    index: AdvisoryIndex, ecosystem: str, name: str, version: str, release: tuple[str, str]
) -> list[tuple[Affected, str | None]]:
    out = []
    for entry in index.lookup(ecosystem, name):
        if ecosystem in ("deb", "apk", "rpm") and not distro_matches(entry.distro, release):
            continue
        hit, fixed = affected_by(ecosystem, version, entry)
        if hit:
            out.append((entry, fixed))
    return out


def match(index: AdvisoryIndex, document: str | bytes, memo: Memo | None = None) -> list[Finding]:
    """The findings of one SBOM against `index`, worst first. `memo` carries results between
    calls on the same index (images share base layers, so packages recur)."""
    return match_packages(index, *sboms.read(document), memo)


def match_packages(
    index: AdvisoryIndex,
    os: OsRelease,
    packages: list[sboms.SbomPackage],
    memo: Memo | None = None,
) -> list[Finding]:
    """`match` of an SBOM already read (`sbom.read`)."""
    release = (os.version_id, os.codename)
    found: dict[tuple[str, str], Finding] = {}
    for p in packages:
        for name, version in p.candidates:
            key5 = (p.ecosystem, name, version, *release)
            hits = memo.get(key5) if memo is not None else None
            if hits is None:
                hits = _hits(index, p.ecosystem, name, version, release)
                if memo is not None:
                    memo[key5] = hits
            for entry, fixed in hits:
                key = (entry.advisory_id, p.purl)
                old = found.get(key)
                if old is None or RANK[entry.severity] > RANK[old.severity]:
                    found[key] = Finding(
                        entry.advisory_id,
                        entry.severity,
                        p.display,
                        p.purl,
                        p.version,
                        fixed,
                        entry.summary,
                    )
    return sorted(found.values(), key=lambda f: (-RANK[f.severity], f.advisory_id, f.package))


def save_findings(
    tx: Tx, digest: str, findings: list[Finding], version: int, now: float
) -> list[Finding]:
    """Replace an image's findings; return the critical ones it did not have before."""
    before = records.finding_keys(tx, digest)
    records.clear_findings(tx, digest)
    records.add_findings(
        tx,
        [
            {
                "d": digest,
                "a": f.advisory_id,
                "p": f.purl,
                "n": f.package,
                "i": f.installed,
                "f": f.fixed,
                "s": f.severity,
                "r": RANK[f.severity],
                "sum": f.summary,
            }
            for f in findings
        ],
    )
    records.mark_matched(tx, digest, version, now)
    new_critical = [
        f for f in findings if f.severity == "critical" and (f.advisory_id, f.purl) not in before
    ]
    if new_critical:
        _notify(tx, digest, new_critical)
    return new_critical


def _notify(tx: Tx, digest: str, findings: list[Finding]) -> None:
    """A webhook event per repository holding the image."""
    for repository in records.repositories_holding(tx, digest):
        events.emit(
            tx,
            "vulnerability",
            repository=repository,
            digest=digest,
            actor="scanner",
            findings=[f.as_json() for f in findings],
        )


def report_in(tx: Tx, repository: str, digest: str) -> tuple[bool, Report | None]:
    """(whether `repository` holds manifest `digest`, its report if scanned). Reports are kept
    per digest: without the first check a caller could read any namespace's report by naming
    a repository of their own."""
    if not records.repository_holds(tx, repository, digest):
        return False, None
    return True, read_report(tx, digest)


def read_report(tx: Tx, digest: str) -> Report | None:
    row = records.report_row(tx, digest)
    if row is None:
        return None
    findings = [
        Finding(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or "")
        for r in records.findings(tx, digest)
    ]
    return Report(row[0], row[1], row[2], int(row[3]), float(row[4]), int(row[5]), row[6], findings)


def rematch_all(
    run_read: Callable[[Callable[[Tx], Any]], Any],
    run_write: Callable[[Callable[[Tx], Any]], Any],
    now: float,
    *,
    only_stale: bool = False,
) -> int:
    """Match every stored SBOM against the advisory data again (blocking); return how many
    images were matched. `only_stale`: only those matched against an older version."""

    def load(tx: Tx) -> tuple[int, AdvisoryIndex, list[str]]:
        version = vulndb.current_version(tx)
        digests = records.matched_digests(tx, version, only_stale=only_stale)
        return version, vulndb.load_index(tx) if digests else AdvisoryIndex([]), digests

    version, index, digests = run_read(load)
    memo: Memo = {}
    for start in range(0, len(digests), 100):
        chunk = digests[start : start + 100]

        def sboms_of(tx: Tx, c: list[str] = chunk) -> list[tuple[str, Any]]:
            return [(d, records.sbom(tx, d)) for d in c]

        documents = run_read(sboms_of)
        results = [(d, match(index, doc, memo)) for d, doc in documents if doc]

        def store(tx: Tx, results: list[tuple[str, list[Finding]]] = results) -> None:
            for d, findings in results:
                save_findings(tx, d, findings, version, now)
            bump_generation(tx)

        run_write(store)
    return len(digests)


def refresh_metrics(tx: Tx) -> None:
    """Set the gauges from the database (the reports of images still stored)."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for severity, n in records.findings_by_severity(tx):
        counts[str(severity)] = int(n)
    for severity, n in counts.items():
        FINDINGS.labels(severity).set(n)
    statuses = dict.fromkeys(STATUSES, 0)
    for status, n in records.reports_by_status(tx):
        statuses[str(status)] = int(n)
    for status, n in statuses.items():
        IMAGES.labels(status).set(n)


class Scanner:
    """Scans images of `registry`; its reports live in `db` (the same database)."""

    def __init__(self, registry: Registry, db: Database, clock: Callable[[], float]) -> None:
        self.registry = registry
        self.db = db
        self.clock = clock
        self.enabled = True
        self.interval = 10.0
        self.worker = WorkerSettings(program_command())

    def jobs(self) -> list[Job]:
        """The leader's scan job (none when `scan.enabled` is off)."""
        return [Job("scan", self.interval, self.run_queue)] if self.enabled else []

    async def scan(self, repository: str, reference: str) -> list[Report]:
        """Scan an image now (by tag or digest); an index scans each image it lists."""
        record = await self.registry.manifest(repository, reference)
        if record.media_type in mt.INDEXES:
            doc = json.loads(record.payload)
            out = []
            for child in doc.get("manifests", []):
                child_record = await self.registry.manifest(repository, str(child["digest"]))
                out.append(await self._scan_record(repository, child_record))
            return out
        return [await self._scan_record(repository, record)]

    async def _scan_record(self, repository: str, record: ManifestRecord) -> Report:
        parsed = manifests.parse(record.payload, record.media_type)
        if not is_image(parsed):
            raise LayerError(f"{repository}@{record.digest} is not an image manifest")
        return await self.scan_image(repository, record.digest, parsed, len(record.payload))

    async def scan_image(
        self, repository: str, digest: str, parsed: manifests.Manifest, size: int
    ) -> Report:
        """Extract, store, attach and match one image. A layer that cannot be read gives a
        report with status `error` (and raises nothing); other faults raise."""
        now = self.clock()
        try:
            extraction = await self._extract(repository, digest, parsed)
        except LayerError as e:
            SCANS.labels("error").inc()
            message = e.message
            log.warning("scan of %s@%s failed: %s", repository, digest, message)

            def failed(tx: Tx) -> None:
                records.save_report(tx, digest, "error", message, None, None, 0, now)
                records.clear_findings(tx, digest)
                bump_generation(tx)

            await self.db.write(failed)
            report = await self.db.read(lambda tx: read_report(tx, digest))
            assert report is not None
            return report
        LAYER_BYTES.inc(extraction.layer_bytes)
        document = extraction.document
        status, error = "ok", None
        if extraction.cuts:
            status, error = "incomplete", incomplete_message(extraction.cuts)
            log.warning("scan of %s@%s: %s", repository, digest, error)
        try:
            sbom_digest = await self._attach(repository, digest, parsed.media_type, size, document)
        except (Denied, ManifestBlobUnknown, ManifestInvalid) as e:
            # A rule of the namespace (a quota, say) refuses the artifact: the report stands
            # without its referrer.
            log.warning("SBOM of %s@%s not attached: %s", repository, digest, e.message)
            sbom_digest = str(Digest.of(document))
        count = extraction.packages

        os, pkgs = await trio.to_thread.run_sync(sboms.read, document)  # read once
        wanted = {(p.ecosystem, name) for p in pkgs for name, _ in p.candidates}

        def index_for(tx: Tx) -> tuple[int, AdvisoryIndex]:
            return vulndb.current_version(tx), vulndb.load_index(tx, wanted)

        version, index = await self.db.read(index_for)
        findings = await trio.to_thread.run_sync(match_packages, index, os, pkgs)

        def save(tx: Tx) -> None:
            records.save_report(
                tx, digest, status, error, document.decode(), sbom_digest, count, now
            )
            save_findings(tx, digest, findings, version, now)
            bump_generation(tx)

        await self.db.write(save)
        SCANS.labels(status).inc()
        report = await self.db.read(lambda tx: read_report(tx, digest))
        assert report is not None
        return report

    async def _extract(
        self, repository: str, digest: str, parsed: manifests.Manifest
    ) -> Extraction:
        """Stream every layer once into a scan worker (worker.py). Raises LayerError; a
        storage fault propagates. A cancellation kills the worker."""
        layers: list[Layer] = []
        try:
            for descriptor in parsed.layers:
                if descriptor.media_type in mt.NON_DISTRIBUTABLE:
                    continue
                blob = await self.registry.blob(repository, str(descriptor.digest))
                chunks = self.registry.read_blob(blob, 0, blob.size)
                layers.append(Layer(str(descriptor.digest), blob.size, chunks))
            return await extract(self.worker, digest, repository, layers)
        finally:
            with trio.CancelScope(shield=True):
                for layer in layers:
                    aclose = getattr(layer.chunks, "aclose", None)
                    if aclose is not None:
                        await aclose()

    async def _attach(
        self, repository: str, subject: str, subject_type: str, subject_size: int, document: bytes
    ) -> str:
        """Push the SBOM into `repository` as an artifact referring to the image; an SBOM that
        lists nothing (no package, no operating system) is not pushed: as a referrer it would
        say nothing the report does not, and only change what clients list. Raises
        ManifestBlobUnknown when the image was deleted meanwhile (the artifact needs it)."""
        sbom_digest = str(Digest.of(document))
        if not json.loads(document).get("components"):
            return sbom_digest
        empty = b"{}"
        for data in (document, empty):
            digest = str(Digest.of(data))
            try:
                await self.registry.blob(repository, digest)
            except BerthError:
                await self.registry.upload_monolithic(repository, digest, _once(data))
        payload = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "artifactType": sboms.MEDIA_TYPE,
                "config": {
                    "mediaType": mt.OCI_EMPTY,
                    "digest": str(Digest.of(empty)),
                    "size": len(empty),
                },
                "layers": [
                    {
                        "mediaType": sboms.MEDIA_TYPE,
                        "digest": sbom_digest,
                        "size": len(document),
                        "annotations": {"org.opencontainers.image.title": "sbom.cdx.json"},
                    }
                ],
                "subject": {"mediaType": subject_type, "digest": subject, "size": subject_size},
                "annotations": {mt.GENERATED_BY: "berth"},
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        await self.registry.put_manifest(
            repository, str(Digest.of(payload)), payload, mt.OCI_MANIFEST
        )
        return sbom_digest

    async def run_queue(self, fence: Fence | None = None) -> int:
        """The leader's job: scan what is due in the queue, re-match stale reports, refresh
        the metrics. Returns how many queued images were handled."""
        now = self.clock()

        def due(tx: Tx) -> list[tuple[int, str, str, str, bytes, int]]:
            rows = records.due(tx, now, BATCH)
            return [(int(r[0]), r[1], r[2], r[3], bytes(r[4]), int(r[5])) for r in rows]

        handled = 0
        for manifest_id, repository, digest, media_type, payload, attempts in await self.db.read(
            due
        ):
            try:
                await self._handle(repository, digest, media_type, payload)
            except (BerthError, OSError) as e:
                message = getattr(e, "message", str(e))
                log.warning("scan of %s@%s will be retried: %s", repository, digest, message)
                await self.db.write(
                    functools.partial(
                        _retry,
                        manifest_id=manifest_id,
                        attempts=attempts,
                        message=message,
                        digest=digest,
                        now=self.clock(),
                    )
                )
                continue
            await self.db.write(functools.partial(records.dequeue, manifest_id=manifest_id))
            handled += 1
        await trio.to_thread.run_sync(
            lambda: rematch_all(
                self.db.run_sync_read, self.db.run_sync_write, self.clock(), only_stale=True
            )
        )
        await self.db.read(refresh_metrics)
        return handled

    async def _handle(self, repository: str, digest: str, media_type: str, payload: bytes) -> None:
        parsed = manifests.parse(payload, media_type)
        if not is_image(parsed):
            return
        existing = await self.db.read(lambda tx: records.status_and_sbom(tx, digest))
        if existing is not None and existing[0] in SCANNED and existing[1]:
            # Scanned in another repository: this one gets the referrer too.
            await self._attach(repository, digest, media_type, len(payload), existing[1].encode())
            return
        await self.scan_image(repository, digest, parsed, len(payload))

    async def report(self, repository: str, reference: str) -> tuple[str, list[Report | None]]:
        """The reports of an image (or of each image an index lists)."""
        record = await self.registry.manifest(repository, reference)
        digests = [record.digest]
        if record.media_type in mt.INDEXES:
            digests = [str(c["digest"]) for c in json.loads(record.payload).get("manifests", [])]

        def fn(tx: Tx) -> list[Report | None]:
            return [read_report(tx, d) for d in digests]

        return record.digest, await self.db.read(fn)


def _retry(
    tx: Tx, *, manifest_id: int, attempts: int, message: str, digest: str, now: float
) -> None:
    if attempts + 1 >= MAX_ATTEMPTS:
        records.save_report(
            tx,
            digest,
            "error",
            f"gave up after {MAX_ATTEMPTS} attempts: {message}",
            None,
            None,
            0,
            now,
        )
        records.dequeue(tx, manifest_id)
        return
    records.postpone(tx, manifest_id, now + 60.0 * 2**attempts)


def incomplete_message(cuts: list[str], shown: int = 5) -> str:
    """The report's message for a scan cut by bounds: the first few, and how many more."""
    text = "scan incomplete: " + "; ".join(cuts[:shown])
    if len(cuts) > shown:
        text += f"; and {len(cuts) - shown} more"
    return text


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


__all__ = ["Finding", "Report", "Scanner", "is_image", "match"]


def open_scanner(
    config: Config, db: Database, registry: Registry, clock: Callable[[], float]
) -> Scanner:
    """The scanner of a serving process, with the pull gate installed on `registry`."""
    unscanned = config["scan.unscanned"]  # allow or deny: the settings table checked it
    scanner = Scanner(registry, db, clock)
    scanner.enabled = bool(config["scan.enabled"])
    scanner.interval = float(config["scan.interval"])
    scanner.worker = replace(
        scanner.worker,
        limits=Limits(
            layer_bytes=_positive(config, "scan.max_layer_bytes"),
            layer_files=_positive(config, "scan.max_layer_files"),
            db_bytes=_positive(config, "scan.max_db_bytes"),
            packages=_positive(config, "scan.max_packages"),
        ),
        memory=max(0, int(config["scan.max_memory"])),
        timeout=float(_positive(config, "scan.timeout")),
    )
    gate = PullGate(db, clock, unscanned_default=unscanned)
    registry.pull_gate = gate.check
    return scanner


def _positive(config: Config, key: str) -> Any:
    value = config[key]
    if value <= 0:
        raise ConfigError(f"{key} must be more than 0, not {value}")
    return value

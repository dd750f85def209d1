"""Offline vulnerability scanning: SBOMs read from image layers, advisories imported by the
operator, findings per image and a pull policy per namespace.

    layers.py    one streaming pass over an image's layers (gzip, zstd), whiteouts applied
    packages.py  installed-package databases (dpkg, apk, rpm, Python, npm, Go build info)
    sbom.py      CycloneDX documents with Package URLs
    vulndb.py    OSV and Debian security tracker imports, versioned and incremental
    matching.py  packages against advisories, in each ecosystem's own version order
    policy.py    the pull gate: per-namespace policy with expiring exceptions, cached
    service.py   the scanner: queue, reports, referrer artifacts, metrics, re-matching
"""

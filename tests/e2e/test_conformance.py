"""The OCI distribution-spec conformance suite (v1.1.1, the official prebuilt binary) against
a real Berth: all four workflows (pull, push, content discovery, content management) with the
suite's own defaults, and not one failure allowed.

Berth runs with its own defaults too, scanner included, and the scanner sweeps its queue every
half second: whatever it does in the background (scans, SBOMs) while the suite pushes, lists
and deletes must not change a single answer the suite sees. `make test` runs this on SQLite +
filesystem; `make test-slow` on every backend profile (`BERTH_E2E_BACKENDS=all`).

The suite is found through `BERTH_OCI_CONFORMANCE` (its directory, holding `run.sh`), then
`<repo>/../shared/tools/oci-conformance`, then `/work/shared/tools/oci-conformance`.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.backends import e2e_profiles, profile_env
from tests.support.clients import Skopeo
from tests.support.images import ImageCache
from tests.support.servers import REPO_ROOT, Server, start_berth, unavailable

# The reference registry predates the referrers API the suite exercises.
pytestmark = pytest.mark.berth_only

SUITE_TIMEOUT = 900.0  # seconds; a run takes about a minute on a quiet machine
SUMMARY = re.compile(r"^conformance: (\d+) passed, (\d+) failed, (\d+) skipped$", re.M)


def conformance_suite() -> Path:
    """The directory of the prebuilt suite (`run.sh`, `conformance.test`)."""
    candidates = [
        os.environ.get("BERTH_OCI_CONFORMANCE", ""),
        str(REPO_ROOT.parent / "shared" / "tools" / "oci-conformance"),
        "/work/shared/tools/oci-conformance",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "run.sh").is_file():
            return Path(candidate)
    unavailable(
        "the OCI conformance suite is missing: set BERTH_OCI_CONFORMANCE to its directory "
        f"(looked in {', '.join(c for c in candidates if c)})"
    )


@pytest.fixture(scope="module", params=e2e_profiles())
def fresh_berth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A new Berth on one backend profile, with its defaults and a busy scanner."""
    env = {**profile_env(request, request.param), "BERTH_SCAN_INTERVAL": "0.5"}
    server = start_berth(tmp_path_factory.mktemp("conformance") / "data", env=env)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"berth exited {code} on SIGTERM:\n{server.log()[-4000:]}"


def scans_done(server: Server) -> float:
    """How many images the scanner has scanned so far (its metric, read as the admin)."""
    assert server.credentials is not None
    text = httpx.get(f"{server.url}/metrics", auth=server.credentials, timeout=30).text
    found = re.findall(r'^berth_scan_scans_total\{result="(?:ok|error)"\} (\S+)$', text, re.M)
    return sum(float(n) for n in found)


def test_oci_conformance_suite_passes(
    fresh_berth: Server, images: ImageCache, tmp_path: Path
) -> None:
    suite = conformance_suite()
    assert fresh_berth.credentials is not None
    user, password = fresh_berth.credentials
    # The scanner has work from the start (the suite's own images may be deleted before their
    # scan comes up: the suite takes a few seconds now that its token requests are answered
    # from remembered sign-ins).
    Skopeo(tmp_path / "skopeo").push(
        images.busybox(),
        f"docker://{fresh_berth.host}/scanned/while-the-suite-runs:1",
        creds=f"{user}:{password}",
    )
    run = subprocess.run(  # noqa: PLW1510 - the exit code is asserted below, with the output
        ["bash", str(suite / "run.sh"), fresh_berth.url, "conformance/suite", user, password],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        env={**os.environ, "REPORT_DIR": str(tmp_path / "report")},
    )
    output = run.stdout + run.stderr
    summary = SUMMARY.search(output)
    assert summary is not None, f"the suite printed no summary (exit {run.returncode}):\n{output}"
    passed, failed, _ = (int(n) for n in summary.groups())
    report = f"{summary.group(0)}\n\n{output[-30000:]}"
    assert failed == 0, report
    assert run.returncode == 0, report
    assert passed >= 70, summary.group(0)  # all four workflows ran
    # The scanner worked meanwhile (each pushed image is scanned): its background work did not
    # change an answer. A scan it started during the suite may end just after it.
    deadline = time.monotonic() + 60
    while scans_done(fresh_berth) == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert scans_done(fresh_berth) > 0, fresh_berth.log()[-4000:]

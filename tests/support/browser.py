"""A real browser for console tests: Playwright driving Debian's Chromium.

Fixtures (register `tests.support.browser` in tests/conftest.py `pytest_plugins`):

- `browser`: one Chromium for the whole session (~2 s to launch), closed at the end.
- `page`: a fresh context (own cookies) and page per test; on failure its screenshot is saved
  to `artifacts/screenshots/FAILED-<test>.png`.
- `console_berth`: one Berth for the session's console tests (admin: servers.ADMIN).

`screenshot(page, name)` keeps `artifacts/screenshots/<name>.png` so a person can look at
every page (CI keeps the folder as an artifact). Playwright's own browser download is never
used: `playwright install` is not needed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import REPO_ROOT, Server, start_berth, unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as artifacts/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path


def console_signin(page: Any, server: Server, username: str, password: str) -> None:
    """Sign `page` in through the console's sign-in form; fails the test if it does not work."""
    page.goto(server.url + "/signin")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_load_state()
    assert "/signin" not in page.url, page.content()[:2000]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        unavailable("chromium not found: install the Debian package 'chromium'")
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        unavailable("playwright not installed: pip install playwright (no 'playwright install')")
    manager = sync_playwright().start()
    try:
        chromium = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        manager.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        if request.node.stash.get(_FAILED, False):
            # A missing screenshot must not hide the failure itself.
            with contextlib.suppress(Exception):
                screenshot(tab, f"FAILED-{request.node.name}")
        context.close()


@pytest.fixture(scope="session")
def console_berth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console-berth")
    server = start_berth(tmp / "data")
    try:
        yield server
    finally:
        server.stop()

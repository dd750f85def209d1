"""The proxy cache's console page, in a real browser: upstreams, cached repositories and when
their tags were last re-validated."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.proxy.conftest import Upstream, push
from tests.support.browser import console_signin, screenshot
from tests.support.clients import Skopeo
from tests.support.images import ImageCache
from tests.support.servers import ADMIN, ADMIN_PASSWORD, Server


def test_proxy_status_page(
    tmp_path: Path,
    upstream: Upstream,
    make_berth: Callable[..., Server],
    images: ImageCache,
    page: Any,  # after make_berth: the browser goes before Berth stops (keep-alive)
) -> None:
    push(tmp_path / "push", images.busybox(), f"docker://{upstream.registry.host}/lib/busybox:1")
    berth = make_berth(upstream.url, credentials="up=someone:never-shown-secret")
    console_signin(page, berth, ADMIN, ADMIN_PASSWORD)
    page.goto(berth.url + "/proxy")
    section = page.locator("#proxy-up")
    assert upstream.url in section.inner_text()
    assert "Nothing cached yet." in section.inner_text()

    Skopeo(tmp_path / "skopeo").copy(
        f"docker://{berth.host}/up/lib/busybox:1",
        f"oci:{tmp_path / 'out'}:t",
        creds=f"{ADMIN}:{ADMIN_PASSWORD}",
    )
    row = page.locator("table.proxy-repositories tbody tr")
    # The last blob's commit stores the manifest just after the client has all its bytes.
    deadline = time.monotonic() + 20
    while True:
        page.goto(berth.url + "/proxy")
        assert row.count() == 1
        cells = row.locator("td").all_inner_texts()
        if cells[3] == "0" or time.monotonic() > deadline:
            break
    assert cells[0] == "up/lib/busybox"
    assert cells[1:4] == ["1", "1", "0"]  # one tag, one manifest, nothing pending
    assert "UTC" in cells[4]  # when the tag was last checked upstream
    assert "credentials configured" in page.content()
    assert "never-shown-secret" not in page.content()
    screenshot(page, "proxy-status")

"""One domain error, one HTTP status, whichever surface answers: `/v2`, `/token`, `/api/v1` and
the console all take it from the table in `appliance/api/codes.py`.

The metadata database is made to fail the way a lost one does (every read and write raises
`Unavailable`, as `metadata/postgres.py` and `metadata/sqlite.py` translate it), after the console
session is opened; each surface is then asked over HTTP through the in-process app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from appliance import errors
from appliance.api.codes import error_for, status_for
from appliance.app import create_app
from appliance.server import Services
from tests.api.conftest import ADMIN, ADMIN_PASSWORD, api_client
from tests.console.test_sessions import sign_in


@pytest.fixture
async def anonymous(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(create_app(services.registry, access=services.access), auth=None) as c:
        yield c


async def _console_cookie(client: httpx.AsyncClient) -> dict[str, str]:
    signed_in = await sign_in(client)
    return {"cookie": f"berth_session={signed_in.cookies['berth_session']}"}


def _fail_with(services: Services, monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    def fail_sync(*args: Any, **kwargs: Any) -> Any:
        raise exc

    for name in ("read", "write"):
        monkeypatch.setattr(services.db, name, fail)
    for name in ("run_sync_read", "run_sync_write"):
        monkeypatch.setattr(services.db, name, fail_sync)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (errors.Unavailable("metadata database: connection lost"), 503),
        (errors.Denied("a rule refuses it"), 403),
        (errors.TooMany("too many open uploads"), 429),
        (errors.StorageFull("no space left"), 507),
    ],
)
async def test_a_domain_error_has_one_status_on_every_surface(
    anonymous: httpx.AsyncClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    exc: errors.BerthError,
    status: int,
) -> None:
    assert status_for(exc) == status
    mapped = error_for(exc)
    assert mapped is not None
    assert mapped[0] == status
    cookie = await _console_cookie(anonymous)
    basic = httpx.BasicAuth(ADMIN, ADMIN_PASSWORD)
    _fail_with(services, monkeypatch, exc)

    v2 = await anonymous.get("/v2/_catalog", auth=basic)
    assert v2.status_code == status, v2.text
    assert v2.json()["errors"][0]["code"] == mapped[1].value

    token = await anonymous.get("/token", params={"service": "berth"}, auth=basic)
    assert token.status_code == status, token.text
    assert token.json()["errors"][0]["code"] == mapped[1].value

    v1 = await anonymous.get("/api/v1/me", auth=basic)
    assert v1.status_code == status, v1.text
    assert set(v1.json()) == {"error"}

    console = await anonymous.get("/", headers=cookie)
    assert console.status_code == status, console.text[:500]
    assert "text/html" in console.headers["content-type"]
    if status >= 500:  # the backend's own words stay in the log
        for response in (token, v1, console):
            assert exc.message not in response.text

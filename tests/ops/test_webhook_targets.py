"""Namespace webhooks may not be aimed inward, written as the attacks: addresses `is_global`
alone lets through (shared address space, 6to4, NAT64, mapped IPv4, multicast), a name that
resolves to a private address, and DNS rebinding (a resolver that answers a public address
first and a private one next: the connection goes to the address checked, never to a second
answer). Redirects are not followed. The resolver is injected in the deliverer; the
connections are real, except where a public address is "reached" (there is no internet here):
there a transport records the request instead."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from appliance.webhooks.endpoints import add_endpoint, internal_reason, private_target
from appliance.webhooks.records import deliveries
from tests.api import oci
from tests.api.conftest import FakeClock, api_client
from tests.ops.conftest import Receiver, operations

PUBLIC = "93.184.215.14"  # a global unicast address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("100.64.0.1", "shared address space"),
        ("169.254.169.254", "link-local"),
        ("2002:7f00:1::1", "6to4"),
        ("2002:808:808::1", "6to4"),  # even of a public address: a tunnel decides
        ("::ffff:127.0.0.1", "loopback, as 127.0.0.1"),
        ("::ffff:10.0.0.1", "private, as 10.0.0.1"),
        ("64:ff9b::7f00:1", "loopback, as 127.0.0.1"),  # NAT64
        ("64:ff9b:1::a00:1", "local-use NAT64"),
        ("::7f00:1", "reserved"),  # IPv4-compatible
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("192.0.0.8", "IETF protocol assignments"),
        ("192.88.99.1", "6to4 relay"),
        ("fec0::1", "site-local"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("198.18.0.1", "private"),
        ("127.0.0.2", "loopback"),
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, reason: str) -> None:
    why = internal_reason(ipaddress.ip_address(address))
    assert why is not None
    assert reason in why


@pytest.mark.parametrize(
    "address", [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert internal_reason(ipaddress.ip_address(address)) is None


async def test_internal_urls_are_refused_when_saved(data_dir: Path, clock: FakeClock) -> None:
    async with operations(data_dir, clock) as (_services, app), api_client(app) as admin:
        for url, reason in (
            ("http://100.64.0.1/hook", "shared address space"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://[2002:7f00:1::1]/hook", "6to4"),
            ("http://[::ffff:127.0.0.1]:8080/hook", "loopback, as 127.0.0.1"),
            ("http://[64:ff9b::a9fe:a9fe]/hook", "link-local"),  # NAT64 of the metadata address
            ("http://localhost:9/hook", "loopback"),  # a name that resolves inward
        ):
            resp = await admin.post("/api/v1/namespaces/admin/webhooks", json={"url": url})
            assert resp.status_code == 400, url
            error = resp.json()["error"]
            assert "an internal address" in error, error
            assert reason in error, error
            assert error.endswith("not allowed as a webhook target")
        listed = await admin.get("/api/v1/namespaces/admin/webhooks")
        assert listed.json() == []


class Recorder:
    """Stands in for the network at a public address: records each request, answers 200."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200)


def rebinding(*answers: str) -> tuple[Callable[[str, int], list[str]], list[str]]:
    """A resolver that gives each answer in turn (then the last again), and the names asked."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return [answers[min(len(asked), len(answers)) - 1]]

    return resolve, asked


async def test_dns_rebinding_cannot_lead_a_delivery_inward(
    data_dir: Path, clock: FakeClock
) -> None:
    """The name answers a public address, then 127.0.0.1. Each delivery resolves the name
    once and connects to the address it checked: the first goes to the public address (with
    the name in Host and for TLS), the next is refused; no request is made by name."""
    resolver, asked = rebinding(PUBLIC, "127.0.0.1")
    url = "https://hooks.rebind.example:8443/hook"
    # Saved: the check sees the public answer (an attacker times it so).
    assert private_target(url, rebinding(PUBLIC)[0]) is None
    recorder = Recorder()
    async with operations(data_dir, clock) as (services, app), api_client(app) as admin:
        assert services.ops is not None
        deliverer = services.ops.deliverer
        deliverer.resolver = resolver
        deliverer.transport = httpx.MockTransport(recorder)
        await services.db.write(lambda tx: add_endpoint(tx, "admin", "admin", url, actions="push"))
        await oci.push_image(admin, "admin/app", "1")
        assert await deliverer.run_once() == 1
        assert asked == ["hooks.rebind.example"]  # once: the connection did not ask again
        (sent,) = recorder.requests
        assert sent.url.host == PUBLIC
        assert sent.url.port == 8443
        assert sent.headers["host"] == "hooks.rebind.example:8443"
        assert sent.extensions["sni_hostname"] == "hooks.rebind.example"

        await oci.push_image(admin, "admin/app", "2", seed="two")
        assert await deliverer.run_once() == 0
        assert len(recorder.requests) == 1  # nothing sent
        log = await services.db.read(deliveries)
    assert log[0]["error"] == (
        "refused: hooks.rebind.example leads to 127.0.0.1, an internal address (loopback) "
        "(webhooks.allow_private_targets)"
    )


async def test_a_name_with_one_private_address_is_refused(data_dir: Path, clock: FakeClock) -> None:
    """Public and private answers at once: either could be the one connected to."""
    recorder = Recorder()
    async with operations(data_dir, clock) as (services, app), api_client(app) as admin:
        assert services.ops is not None
        deliverer = services.ops.deliverer
        deliverer.resolver = lambda host, port: [PUBLIC, "10.1.2.3"]
        deliverer.transport = httpx.MockTransport(recorder)
        url = "http://intranet.example/hook"
        await services.db.write(lambda tx: add_endpoint(tx, "admin", "admin", url, actions="push"))
        await oci.push_image(admin, "admin/app", "1")
        assert await deliverer.run_once() == 0
        log = await services.db.read(deliveries)
    assert recorder.requests == []
    assert "intranet.example leads to 10.1.2.3, an internal address (private)" in log[0]["error"]


async def test_allowed_private_targets_are_still_pinned(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    """`webhooks.allow_private_targets` lets an administrator aim at internal receivers; the
    request still goes to the address resolved for it. `hook.invalid` cannot be resolved by
    the system, so the real receiver getting the request shows the pinning."""
    port = httpx.URL(receiver.url).port
    resolver, asked = rebinding("127.0.0.1")
    allow = {"webhooks.allow_private_targets": True}
    async with operations(data_dir, clock, **allow) as (services, app), api_client(app) as admin:
        assert services.ops is not None
        services.ops.deliverer.resolver = resolver
        url = f"http://hook.invalid:{port}/hook"
        await services.db.write(lambda tx: add_endpoint(tx, "admin", "admin", url, actions="push"))
        await oci.push_image(admin, "admin/app", "1")
        assert await services.ops.deliverer.run_once() == 1
    assert asked == ["hook.invalid"]
    ((headers, _body),) = receiver.requests
    assert headers["host"] == f"hook.invalid:{port}"


async def test_redirects_are_not_followed(
    data_dir: Path, clock: FakeClock, receiver: Receiver
) -> None:
    """A public receiver that answers 302 towards an internal address: Berth does not
    follow it (the delivery failed; it is retried, to the same URL, later)."""
    receiver.answer, receiver.location = 307, "http://169.254.169.254/latest/meta-data/"
    allow = {"webhooks.allow_private_targets": True}  # the receiver is on loopback
    async with operations(data_dir, clock, **allow) as (services, app), api_client(app) as admin:
        assert services.ops is not None
        await services.db.write(
            lambda tx: add_endpoint(tx, "admin", "admin", receiver.url, actions="push")
        )
        await oci.push_image(admin, "admin/app", "1")
        assert await services.ops.deliverer.run_once() == 0
        log = await services.db.read(deliveries)
    assert len(receiver.requests) == 1
    assert (log[0]["status"], log[0]["error"]) == (307, "HTTP 307 (redirects are not followed)")

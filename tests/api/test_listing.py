"""Tag lists and the catalog: lexical order, `n`/`last` pagination and the `Link` header."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.api.oci import assert_error, image_manifest, push_blob, put_manifest

NAME = "team/app"
TAGS = ["v10", "v2", "latest", "Latest", "1.0", "_x", "v1", "a-b", "a_b", "a.b", "Z"]
REPOSITORIES = ["zeta", "alpha/one", "alpha", "alpha-two", "beta/x/y", "alpha/one/two", "b"]
LINK = re.compile(r'^<(?P<url>[^>]+)>;\s*rel="next"$')


@pytest.fixture
async def tagged(client: httpx.AsyncClient) -> list[str]:
    config, layer = b'{"os": "linux"}', b"layer"
    await push_blob(client, NAME, config)
    await push_blob(client, NAME, layer)
    payload = image_manifest(config, [layer])
    for tag in TAGS:
        assert (await put_manifest(client, NAME, tag, payload)).status_code == 201
    return sorted(TAGS)


@pytest.fixture
async def repositories(client: httpx.AsyncClient) -> list[str]:
    config = b'{"os": "linux"}'
    for name in REPOSITORIES:
        await push_blob(client, name, config)
        resp = await put_manifest(client, name, "v1", image_manifest(config, []))
        assert resp.status_code == 201
    # A repository with blobs but no manifest is not in the catalog.
    await push_blob(client, "only/blobs", b"x")
    return sorted(REPOSITORIES)


async def follow(client: httpx.AsyncClient, url: str, key: str) -> tuple[list[str], int]:
    """Every entry reachable from `url` by following Link headers; and how many pages."""
    seen: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url is not None:
        resp = await client.get(next_url)
        assert resp.status_code == 200, resp.text
        pages += 1
        assert pages < 50
        seen += resp.json()[key]
        link = resp.headers.get("link")
        if link is None:
            next_url = None
        else:
            m = LINK.match(link)
            assert m, link
            next_url = m.group("url")
    return seen, pages


async def test_tags_are_listed_in_lexical_order(
    client: httpx.AsyncClient, tagged: list[str]
) -> None:
    resp = await client.get(f"/v2/{NAME}/tags/list")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"name": NAME, "tags": tagged}
    assert "link" not in resp.headers


async def test_tags_page_with_n(client: httpx.AsyncClient, tagged: list[str]) -> None:
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"n": 3})
    assert resp.status_code == 200
    assert resp.json()["tags"] == tagged[:3]
    link = LINK.match(resp.headers["link"])
    assert link
    assert link.group("url").startswith(f"/v2/{NAME}/tags/list?")
    assert "n=3" in link.group("url")
    assert f"last={tagged[2]}" in link.group("url")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10])
async def test_following_links_yields_every_tag_once(
    client: httpx.AsyncClient, tagged: list[str], n: int
) -> None:
    seen, pages = await follow(client, f"/v2/{NAME}/tags/list?n={n}", "tags")
    assert seen == tagged
    assert pages == -(-len(tagged) // n)  # no empty trailing page


async def test_exact_page_has_no_link_when_nothing_follows(
    client: httpx.AsyncClient, tagged: list[str]
) -> None:
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"n": len(tagged)})
    assert resp.json()["tags"] == tagged
    assert "link" not in resp.headers
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"n": len(tagged) + 5})
    assert resp.json()["tags"] == tagged
    assert "link" not in resp.headers


async def test_tags_after_last(client: httpx.AsyncClient, tagged: list[str]) -> None:
    last = tagged[4]
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"last": last})
    assert resp.json()["tags"] == tagged[5:]
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"n": 2, "last": last})
    assert resp.json()["tags"] == tagged[5:7]
    assert last not in resp.json()["tags"]
    # `last` need not be a tag that exists.
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"last": "v15"})
    assert resp.json()["tags"] == [t for t in tagged if t > "v15"]
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"last": tagged[-1]})
    assert resp.json()["tags"] == []


async def test_n_zero_is_an_empty_page(client: httpx.AsyncClient, tagged: list[str]) -> None:
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"n": 0})
    assert resp.status_code == 200
    assert resp.json()["tags"] == []


@pytest.mark.parametrize("n", ["abc", "-1", "1.5"])
async def test_bad_n_is_400(client: httpx.AsyncClient, tagged: list[str], n: str) -> None:
    resp = await client.get(f"/v2/{NAME}/tags/list", params={"n": n})
    assert resp.status_code == 400
    assert resp.json()["errors"]


async def test_tags_of_unknown_repository_is_404_name_unknown(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v2/no/such/repo/tags/list"), 404, "NAME_UNKNOWN")


async def test_repository_without_tags_lists_none(client: httpx.AsyncClient) -> None:
    await push_blob(client, NAME, b"x")
    resp = await client.get(f"/v2/{NAME}/tags/list")
    assert resp.status_code == 200
    assert resp.json()["tags"] in ([], None)


async def test_catalog_in_lexical_order(client: httpx.AsyncClient, repositories: list[str]) -> None:
    resp = await client.get("/v2/_catalog")
    assert resp.status_code == 200
    assert resp.json() == {"repositories": repositories}
    assert "link" not in resp.headers


async def test_catalog_page_with_n_and_link(
    client: httpx.AsyncClient, repositories: list[str]
) -> None:
    resp = await client.get("/v2/_catalog", params={"n": 2})
    assert resp.json()["repositories"] == repositories[:2]
    link = LINK.match(resp.headers["link"])
    assert link
    assert link.group("url").startswith("/v2/_catalog?")
    resp = await client.get("/v2/_catalog", params={"n": 2, "last": repositories[1]})
    assert resp.json()["repositories"] == repositories[2:4]


@pytest.mark.parametrize("n", [1, 3, 7, 100])
async def test_following_catalog_links_yields_every_repository_once(
    client: httpx.AsyncClient, repositories: list[str], n: int
) -> None:
    seen, _ = await follow(client, f"/v2/_catalog?n={n}", "repositories")
    assert seen == repositories


async def test_catalog_n_zero(client: httpx.AsyncClient, repositories: list[str]) -> None:
    resp = await client.get("/v2/_catalog", params={"n": 0})
    assert resp.status_code == 200
    assert resp.json()["repositories"] == []


async def test_empty_catalog(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v2/_catalog")
    assert resp.status_code == 200
    assert resp.json() == {"repositories": []}


async def test_repository_leaves_the_catalog_with_its_last_manifest(
    client: httpx.AsyncClient, repositories: list[str]
) -> None:
    resp = await client.head("/v2/zeta/manifests/v1")
    assert (
        await client.delete(f"/v2/zeta/manifests/{resp.headers['docker-content-digest']}")
    ).status_code == 202
    resp = await client.get("/v2/_catalog")
    assert resp.json()["repositories"] == [r for r in repositories if r != "zeta"]


async def test_deleted_tag_leaves_the_list(client: httpx.AsyncClient, tagged: list[str]) -> None:
    assert (await client.delete(f"/v2/{NAME}/manifests/v2")).status_code == 202
    resp = await client.get(f"/v2/{NAME}/tags/list")
    assert resp.json()["tags"] == [t for t in tagged if t != "v2"]

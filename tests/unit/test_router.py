"""The `/v2/` router (`appliance.api.v2.match`): repository names may contain slashes and even
the words the routes use, so the name is the shortest prefix that leaves a known route."""

from __future__ import annotations

import pytest

from appliance.api.v2 import Route, match

D = "sha256:" + "a" * 64
U = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("", Route("base")),
        ("_catalog", Route("catalog")),
        ("app/tags/list", Route("tags", "app")),
        ("team/app/tags/list", Route("tags", "team/app")),
        ("app/manifests/latest", Route("manifests", "app", "latest")),
        (f"team/app/manifests/{D}", Route("manifests", "team/app", D)),
        (f"app/blobs/{D}", Route("blobs", "app", D)),
        (f"a/b/c/d/blobs/{D}", Route("blobs", "a/b/c/d", D)),
        ("app/blobs/uploads/", Route("uploads", "app", "")),
        ("app/blobs/uploads", Route("uploads", "app", "")),
        (f"app/blobs/uploads/{U}", Route("upload", "app", U)),
        (f"team/app/blobs/uploads/{U}", Route("upload", "team/app", U)),
        (f"app/referrers/{D}", Route("referrers", "app", D)),
        (f"team/app/referrers/{D}", Route("referrers", "team/app", D)),
    ],
)
def test_routes(path: str, route: Route) -> None:
    assert match(path) == route


@pytest.mark.parametrize(
    ("path", "route"),
    [
        # Names made of route words are still names.
        ("tags/tags/list", Route("tags", "tags")),
        ("manifests/manifests/latest", Route("manifests", "manifests", "latest")),
        (f"blobs/blobs/{D}", Route("blobs", "blobs", D)),
        ("blobs/blobs/uploads/", Route("uploads", "blobs", "")),
        ("a/tags/list/tags/list", Route("tags", "a/tags/list")),
        ("a/manifests/b/manifests/latest", Route("manifests", "a/manifests/b", "latest")),
        (f"a/blobs/uploads/blobs/{D}", Route("blobs", "a/blobs/uploads", D)),
        (f"x/blobs/uploads/{U}/blobs/uploads/{U}", Route("upload", f"x/blobs/uploads/{U}", U)),
        ("x/blobs/uploads/manifests/latest", Route("manifests", "x/blobs/uploads", "latest")),
        ("_catalog/tags/list", Route("tags", "_catalog")),
        ("referrers/referrers/x", Route("referrers", "referrers", "x")),
    ],
)
def test_names_that_contain_route_words(path: str, route: Route) -> None:
    assert match(path) == route


@pytest.mark.parametrize(
    "path",
    [
        "app",
        "app/",
        "app/tags",
        "app/tags/list/",
        "app/tags/lists",
        "app/manifests",
        "app/manifests/",
        "app/manifests/a/b",
        "app/blobs",
        "app/blobs/",
        f"app/blobs/{D}/extra",
        f"app/blobs/uploads/{U}/extra",
        "app/referrers",
        "app/referrers/",
        "app/unknown/thing",
        "_catalog/",
        "_catalogue",
        "/tags/list",
        "tags/list",
        "manifests/latest",
    ],
)
def test_unknown_paths(path: str) -> None:
    assert match(path) is None


def test_the_reference_is_never_split() -> None:
    route = match("app/manifests/v1.0-rc_1")
    assert route == Route("manifests", "app", "v1.0-rc_1")


def test_routes_are_values() -> None:
    assert match("a/tags/list") == match("a/tags/list")
    with pytest.raises(AttributeError):
        Route("base").name = "x"  # type: ignore[misc]

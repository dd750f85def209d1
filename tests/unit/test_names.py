"""The repository-name and tag grammar (`appliance.oci.names`)."""

from __future__ import annotations

import pytest

from appliance.errors import InvalidName
from appliance.oci.names import MAX_NAME_LENGTH, namespace_of, validate_name, validate_tag

VALID_NAMES = [
    "a",
    "0",
    "library/busybox",
    "team/app/image",
    "a.b",
    "a_b",
    "a__b",
    "a-b",
    "a--b",
    "a---b",
    "a.b_c__d-e--f",
    "x/y/z/w/v",
    "1/2/3",
    "a" * MAX_NAME_LENGTH,
    "/".join(["ab"] * 85),  # 254 characters, 85 components
]

INVALID_NAMES = [
    "",
    "A",
    "Team/app",
    "team/App",
    "a" * (MAX_NAME_LENGTH + 1),
    "a/" + "b" * (MAX_NAME_LENGTH - 1),
    "/a",
    "a/",
    "a//b",
    "..",
    "a/../b",
    "../a",
    ".",
    "a/./b",
    ".a",
    "a.",
    "-a",
    "a-",
    "_a",
    "a_",
    "a..b",
    "a___b",
    "a._b",
    "a-.b",
    "a b",
    "a\tb",
    "a\nb",
    "a:b",
    "a@b",
    "a%2fb",
    "a%2e%2e",
    "caf\u00e9",
    "a\x00b",
    "a\\b",
    "a/b\n",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_name(name)
    assert len(info.value.message) < 400


def test_max_length_counts_the_whole_name() -> None:
    name = "a/" * 127 + "a"
    assert len(name) == 255
    assert validate_name(name) == name
    with pytest.raises(InvalidName):
        validate_name(name + "a")


VALID_TAGS = ["latest", "v1", "1.0.0", "_underscore", "UPPER", "a-b_c.d", "0", "w" * 128]
INVALID_TAGS = [
    "",
    "-dash",
    ".dot",
    "w" * 129,
    "with space",
    "a:b",
    "a/b",
    "a+b",
    "a@b",
    "caf\u00e9",
    "latest\n",
    "sha256:abc",
]


@pytest.mark.parametrize("tag", VALID_TAGS)
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", INVALID_TAGS)
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(InvalidName):
        validate_tag(tag)


@pytest.mark.parametrize(
    ("name", "namespace"),
    [("a", "a"), ("team/app", "team"), ("team/app/image", "team")],
)
def test_namespace_is_the_first_component(name: str, namespace: str) -> None:
    assert namespace_of(name) == namespace

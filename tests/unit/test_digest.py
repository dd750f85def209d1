"""Digests: parsing, validation, canonical form and hashing (`appliance.oci.digest`)."""

from __future__ import annotations

import hashlib

import pytest

from appliance.errors import InvalidDigest
from appliance.oci.digest import ALGORITHMS, Digest, is_digest, new_hasher

SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512_EMPTY = hashlib.sha512(b"").hexdigest()


def test_parse_sha256() -> None:
    d = Digest.parse(f"sha256:{SHA256_EMPTY}")
    assert d.algorithm == "sha256"
    assert d.hex == SHA256_EMPTY
    assert str(d) == f"sha256:{SHA256_EMPTY}"


def test_parse_sha512() -> None:
    d = Digest.parse(f"sha512:{SHA512_EMPTY}")
    assert d == Digest("sha512", SHA512_EMPTY)
    assert len(d.hex) == 128


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        ":" + SHA256_EMPTY,
        SHA256_EMPTY,
        "sha256:" + SHA256_EMPTY[:-1],
        "sha256:" + SHA256_EMPTY + "0",
        "sha256:" + SHA256_EMPTY.upper(),
        "SHA256:" + SHA256_EMPTY,
        "sha256:" + "g" * 64,
        "sha256:" + "=" * 64,
        "sha512:" + SHA256_EMPTY,
        "sha256:" + SHA512_EMPTY,
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha384:" + "a" * 96,
        "blake3:" + "a" * 64,
        " sha256:" + SHA256_EMPTY,
        "sha256:" + SHA256_EMPTY + "\n",
        "sha256::" + SHA256_EMPTY,
        "sha256:/" + SHA256_EMPTY[1:],
        "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
    ],
)
def test_invalid_digests_are_refused(text: str) -> None:
    with pytest.raises(InvalidDigest):
        Digest.parse(text)


def test_error_message_is_bounded() -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest.parse("sha256:" + "z" * 10_000)
    assert len(info.value.message) < 400


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_of_matches_hashlib(algorithm: str) -> None:
    data = b"hello, registry"
    d = Digest.of(data, algorithm)
    assert d == Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
    assert Digest.parse(str(d)) == d
    assert len(d.hex) == ALGORITHMS[algorithm]


def test_of_defaults_to_sha256() -> None:
    assert str(Digest.of(b"")) == f"sha256:{SHA256_EMPTY}"


def test_empty_json_digest() -> None:
    expected = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert str(Digest.of(b"{}")) == expected


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_hasher_streams_like_of(algorithm: str) -> None:
    h = Digest.of(b"", algorithm).hasher()
    for piece in (b"abc", b"", b"def" * 1000):
        h.update(piece)
    assert h.hexdigest() == Digest.of(b"abc" + b"def" * 1000, algorithm).hex


def test_new_hasher_refuses_unknown_algorithms() -> None:
    with pytest.raises(InvalidDigest):
        new_hasher("md5")
    assert new_hasher().hexdigest() == SHA256_EMPTY


def test_digests_are_values() -> None:
    a = Digest.parse(f"sha256:{SHA256_EMPTY}")
    b = Digest("sha256", SHA256_EMPTY)
    assert a == b
    assert hash(a) == hash(b)
    assert {a, b} == {a}
    assert sorted([Digest("sha512", "a" * 128), Digest("sha256", "b" * 64)])[0].algorithm == (
        "sha256"
    )
    with pytest.raises(AttributeError):
        a.hex = "0" * 64  # type: ignore[misc]


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("latest", False),
        ("v1.0", False),
        ("sha256", False),
        (f"sha256:{SHA256_EMPTY}", True),
        ("sha256:short", True),  # a digest, if a malformed one: parsing it fails later
    ],
)
def test_is_digest(reference: str, expected: bool) -> None:
    assert is_digest(reference) is expected

"""`--repository` patterns: globs matched without regexes, bounded, and refused when they could
never name a repository."""

from __future__ import annotations

import pytest

from appliance.errors import InvalidName
from appliance.importer.patterns import MAX_PATTERNS, RepositoryFilter, compile_pattern


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("team/app", "team/app", True),
        ("team/app", "team/app2", False),
        ("team/*", "team/app", True),
        ("team/*", "team/app/web", False),  # * stays within one component
        ("team/**", "team/app/web", True),
        ("team/**", "team", False),
        ("**/web", "team/app/web", True),
        ("**", "a", True),
        ("*", "team/app", False),
        ("team/a?p", "team/app", True),
        ("team/a?p", "team/a/p", False),  # ? is never /
        ("*/*", "a/b", True),
        ("t*m/*-*", "team/web-ui", True),
        ("t*m/*-*", "team/webui", False),
        ("a**b", "a/x/y/b", True),
        ("a***b", "a/x/b", True),  # *** is **
        ("*a*a*a*a*a*a*a*b", "a" * 200, False),  # no backtracking blow-up, just False
    ],
)
def test_matching(pattern: str, name: str, matches: bool) -> None:
    assert compile_pattern(pattern).matches(name) is matches


@pytest.mark.parametrize(
    "pattern", ["", "Team/*", "team//app", "/team", "team app", "a" * 256, "team/[ab]", "x\n"]
)
def test_patterns_that_could_not_name_a_repository_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidName):
        compile_pattern(pattern)


def test_a_filter() -> None:
    everything = RepositoryFilter.of([])
    assert everything("any/thing")
    assert everything.names is None
    some = RepositoryFilter.of(["team/*", "multi"])
    assert some("multi")
    assert some("team/x")
    assert not some("other")
    assert some.names is None  # a wildcard: the source must be listed
    named = RepositoryFilter.of(["b/c", "a", "b/c"])
    assert named.names == ["a", "b/c"]  # plain names: no listing needed
    with pytest.raises(InvalidName):
        RepositoryFilter.of(["a"] * (MAX_PATTERNS + 1))

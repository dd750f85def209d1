"""User-supplied tag patterns on RE2: what is refused at save time (and how it is said), what a
stored pattern RE2 refuses does (matches nothing, never raises), and that matching stays quick
whatever the pattern: the classic catastrophic-backtracking patterns, and random ones."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import InvalidName, InvalidPattern
from appliance.oci.patterns import MAX_LENGTH, compile_pattern, stored

# Patterns that take exponential time on a backtracking engine, each with a tag that makes it
# backtrack (the tags stay within the tag grammar: 128 characters).
CATASTROPHIC = [
    ("(a+)+$", "a" * 100 + "b"),
    ("(a|aa)+$", "a" * 100 + "b"),
    ("(a|a?)+$", "a" * 100 + "b"),
    ("(.*a){20}", "a" * 100 + "b"),  # a polynomial of degree 20 on a backtracking engine
    ("([a-z0-9]+)*-release", "x" * 120 + "!"),
    ("(\\w+\\d+)+v", "a1" * 60 + "x"),
]


@pytest.mark.parametrize(("pattern", "tag"), CATASTROPHIC)
def test_catastrophic_patterns_answer_correctly(pattern: str, tag: str) -> None:
    compiled = compile_pattern(pattern)
    assert compiled.fullmatch(tag) is False
    assert compiled.error is None


def test_matching_is_a_full_match() -> None:
    rule = compile_pattern(r"v\d+\.\d+")
    assert rule.fullmatch("v1.2")
    assert not rule.fullmatch("v1.2-rc")  # no partial match
    assert not rule.fullmatch("xv1.2")
    assert compile_pattern("(a+)+$").fullmatch("a" * 128)


@pytest.mark.parametrize(
    ("pattern", "said"),
    [
        (r"(a)\1", "backreferences"),
        (r"(?P<x>a)(?P=x)", "backreferences"),
        (r"v(?=1)\d", "lookahead and lookbehind"),
        (r"(?!latest).*", "lookahead and lookbehind"),
        (r"(?<=v)\d+", "lookahead and lookbehind"),
        (r"(?<!v)\d+", "lookahead and lookbehind"),
        (r"(?>a+)b", "atomic groups"),
        (r"a++", "possessive repetition"),
        (r"a{1001}", "above 1000"),
        (r"[unclosed", "not a valid regular expression (missing ]"),
        (r"(", "not a valid regular expression"),
    ],
)
def test_unsupported_syntax_is_refused_with_a_clear_message(pattern: str, said: str) -> None:
    with pytest.raises(InvalidPattern) as refused:
        compile_pattern(pattern, "keep_regex")
    message = refused.value.message
    assert said in message
    assert message.startswith("keep_regex ")
    assert repr(pattern) in message
    assert isinstance(refused.value, InvalidName)  # every handler of bad input answers 400
    assert "Traceback" not in message
    assert "re2." not in message  # RE2's words, not a Python exception's repr


@pytest.mark.parametrize("source", ["", "a" * (MAX_LENGTH + 1), None, 5])
def test_empty_long_and_non_strings_are_refused(source: object) -> None:
    with pytest.raises(InvalidPattern):
        compile_pattern(source)  # type: ignore[arg-type]


def test_a_pattern_at_the_length_limit_is_accepted() -> None:
    assert compile_pattern("a" * MAX_LENGTH).fullmatch("a" * MAX_LENGTH)


def test_a_stored_pattern_re2_refuses_matches_nothing_and_says_why() -> None:
    # Saved by an older Berth, which compiled patterns with Python's re.
    old = stored(r"(?!latest).*", "the rule's pattern")
    assert old.error is not None
    assert "lookahead" in old.error
    for tag in ("v1", "latest", "anything"):
        assert old.fullmatch(tag) is False
    assert stored(r"v\d+").error is None
    assert stored(r"v\d+").fullmatch("v7")


# Characters of regular expressions, weighted towards the ones that nest and repeat.
_ATOMS = st.sampled_from(
    [
        *("a", "b", "1", ".", "\\d", "\\w", "[a-z]", "[^b]", "(", ")", "(?:", "|"),
        *("*", "+", "?", "{2}", "{1,3}", "^", "$", "-", "\\.", "a*", "(a+)+", "(a|aa)+"),
    ]
)
_PATTERNS = st.lists(_ATOMS, min_size=1, max_size=60).map("".join)
_TAGS = st.from_regex(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", fullmatch=True)
GENEROUS = 1.0  # seconds for one match of one tag (about 10 microseconds is usual)


@settings(max_examples=300, deadline=None)
@given(pattern=_PATTERNS, tags=st.lists(_TAGS, min_size=1, max_size=5))
def test_random_patterns_match_random_tags_quickly(pattern: str, tags: list[str]) -> None:
    try:
        compiled = compile_pattern(pattern)
    except InvalidPattern:
        return  # refused when saved (its message is tested above): nothing to match
    for tag in [*tags, "a" * 127 + "!", "a" * 128]:
        started = time.perf_counter()
        answer = compiled.fullmatch(tag)
        took = time.perf_counter() - started
        assert isinstance(answer, bool)
        assert took < GENEROUS, (pattern, tag, took)

"""User-supplied tag patterns (immutable tag rules, cleanup-policy regexes), on a bounded engine.

Every pattern a user can save is compiled here, with RE2 (`google-re2`), never with Python's
`re`: RE2 does not backtrack, so matching takes time linear in the tag whatever the pattern
(`(a+)+$` against a long tag is as quick as any other), and its memory per pattern is capped.
The price is RE2's syntax, which has no backreferences, lookaround, atomic groups or
possessive repetition; those are refused when the pattern is saved, with a message saying so.

A pattern stored before these checks (an older Berth compiled with Python's `re`) that RE2
cannot compile is loaded with `stored()`: it matches nothing and carries the reason in
`error`, for the caller to report; it never raises while serving.

Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import re2

from appliance.errors import InvalidPattern

MAX_LENGTH = 256  # characters; tags are at most 128
MAX_MEMORY = 1 << 20  # bytes RE2 may spend on one compiled pattern

_NOTE = "(patterns run on RE2, which never backtracks)"


def _plainly(diagnostic: str) -> str | None:
    """RE2's diagnostic for syntax Python's `re` has and RE2 refuses, said plainly."""
    operator = diagnostic.removeprefix("invalid perl operator: ")
    if diagnostic.startswith("invalid escape sequence: \\") and diagnostic[-1:].isdigit():
        return "backreferences (\\1 ...) are not supported"
    if operator == "(?P":
        return "backreferences ((?P=name)) are not supported"
    if operator in ("(?=", "(?!", "(?<=", "(?<!"):
        return "lookahead and lookbehind ((?=...), (?!...), (?<=...), (?<!...)) are not supported"
    if operator == "(?>":
        return "atomic groups ((?>...)) are not supported"
    if diagnostic.startswith("bad repetition operator: ") and diagnostic.endswith("+"):
        return "possessive repetition (a++ ...) is not supported"
    if diagnostic.startswith("invalid repetition size"):
        return "a repetition count above 1000 is not supported"
    if diagnostic.startswith("pattern too large"):
        return "the pattern is too complex"
    return None


def _options() -> Any:
    options = re2.Options()
    options.max_mem = MAX_MEMORY
    options.log_errors = False  # a refused pattern is the caller's message, not a log line
    return options


def _explain(error: Exception) -> str:
    raw = error.args[0] if error.args else ""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    plain = _plainly(text)
    if plain is not None:
        return f"{plain} {_NOTE}"
    return f"not a valid regular expression ({text or 'RE2 refused it'})"


@dataclass(frozen=True)
class TagPattern:
    """A compiled pattern, matched against whole tags. With `error` set (a stored pattern RE2
    refuses) it matches nothing."""

    source: str
    error: str | None = None
    _compiled: Any = field(default=None, repr=False, compare=False)

    def fullmatch(self, text: str) -> bool:
        if self._compiled is None:
            return False
        return self._compiled.fullmatch(text) is not None


def compile_pattern(source: str, what: str = "pattern") -> TagPattern:
    """Compile a pattern a user is saving; raises InvalidPattern naming `what` and the reason
    (empty, longer than MAX_LENGTH, syntax RE2 does not support, or not a regular expression)."""
    if not isinstance(source, str) or not source:
        raise InvalidPattern(f"{what} must be a regular expression of 1 to {MAX_LENGTH} characters")
    if len(source) > MAX_LENGTH:
        raise InvalidPattern(f"{what} is longer than {MAX_LENGTH} characters")
    try:
        compiled = re2.compile(source, _options())
    except re2.error as e:
        raise InvalidPattern(f"{what} {source!r}: {_explain(e)}", {"pattern": source}) from None
    return TagPattern(source, None, compiled)


def stored(source: str, what: str = "pattern") -> TagPattern:
    """A pattern read back from the database: compiled as `compile_pattern` does, or, when
    that fails, one that matches nothing, with the reason in `error`. Never raises."""
    try:
        return compile_pattern(source, what)
    except InvalidPattern as e:
        return TagPattern(source, e.message)


__all__ = ["MAX_LENGTH", "TagPattern", "compile_pattern", "stored"]

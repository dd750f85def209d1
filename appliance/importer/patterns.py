"""Which repositories an import takes: `--repository` glob patterns, matched without regexes.

A pattern is a repository name in which `*` stands for any characters within one path
component, `**` for any characters across components (`/` included) and `?` for one character
other than `/`. Anything else matches itself. Patterns are bounded (length, count) and matched
in time proportional to the length of the pattern times that of the name, whatever they hold:
a pattern is never turned into a regular expression, so none can make matching take
exponential time.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import InvalidName
from appliance.oci.names import MAX_NAME_LENGTH, validate_name

MAX_PATTERNS = 100
_WILD = frozenset("*?")


def _tokens(pattern: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append("**")
            while i < len(pattern) and pattern[i] == "*":  # `***` is `**`
                i += 1
            continue
        out.append(pattern[i])
        i += 1
    return tuple(out)


@dataclass(frozen=True)
class Pattern:
    text: str
    parts: tuple[str, ...]

    @property
    def literal(self) -> bool:
        """A plain repository name (no wildcard): it can be asked for without a listing."""
        return not _WILD & set(self.text)

    def matches(self, name: str) -> bool:
        # The positions of `name` reachable after each token, as the bits of an int: one pass
        # over the name per token, whatever the pattern.
        n = len(name)
        states = 1  # before any token: position 0
        for part in self.parts:
            if not states:
                return False
            if part == "**":
                low = states & -states  # the first reachable position; all later ones follow
                states = ((1 << (n + 1)) - 1) & ~(low - 1)
            elif part == "*":
                reach = 0
                carry = False
                for i in range(n + 1):
                    carry = carry or bool(states >> i & 1)
                    if carry:
                        reach |= 1 << i
                    if i < n and name[i] == "/":
                        carry = False
                states = reach
            else:
                moved = 0
                for i in range(n):
                    if states >> i & 1 and (name[i] == part or (part == "?" and name[i] != "/")):
                        moved |= 1 << (i + 1)
                states = moved
        return bool(states >> n & 1)


def compile_pattern(text: str) -> Pattern:
    """A `--repository` pattern; InvalidName when it is empty, too long, or could never match a
    repository name (upper case, spaces, ...)."""
    if not text or len(text) > MAX_NAME_LENGTH:
        raise InvalidName(f"a repository pattern has 1 to {MAX_NAME_LENGTH} characters")
    # With every wildcard replaced by a letter, a pattern must read as a repository name.
    try:
        validate_name(text.replace("**", "a").replace("*", "a").replace("?", "a"))
    except InvalidName:
        raise InvalidName(
            f"invalid --repository pattern {text[:100]!r}: lowercase letters, digits, "
            "separators (. _ __ -), / between components, and the wildcards * ** ?"
        ) from None
    return Pattern(text, _tokens(text))


@dataclass(frozen=True)
class RepositoryFilter:
    """Several patterns: a repository is taken when any matches (all, when there are none)."""

    patterns: tuple[Pattern, ...] = ()

    @classmethod
    def of(cls, texts: tuple[str, ...] | list[str]) -> RepositoryFilter:
        if len(texts) > MAX_PATTERNS:
            raise InvalidName(f"at most {MAX_PATTERNS} --repository patterns")
        return cls(tuple(compile_pattern(t) for t in texts))

    def __call__(self, name: str) -> bool:
        return not self.patterns or any(p.matches(name) for p in self.patterns)

    @property
    def names(self) -> list[str] | None:
        """The repositories named, when every pattern is a plain name (no listing needed)."""
        if self.patterns and all(p.literal for p in self.patterns):
            return sorted({p.text for p in self.patterns})
        return None

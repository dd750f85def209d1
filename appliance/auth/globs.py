"""Repository path globs of CI trust rules, matched without regular expressions.

A glob is matched against a repository's path below its namespace (`app/web` of `team/app/web`):
`*` is any run of characters within one path segment, `**` any run of characters across
segments, `?` one character other than `/`; everything else matches itself. Globs are at most
`MAX_LENGTH` characters of the repository-name alphabet, and matching is a dynamic programme
over (pattern, path) positions: its cost is bounded by their product (at most 128 by 255, the
longest repository name), whatever the pattern (no backtracking blow-up).
"""

from __future__ import annotations

import functools
import re

from appliance.errors import InvalidName

MAX_LENGTH = 128
_ALPHABET = re.compile(r"[a-z0-9._/*?-]+")


def check_glob(pattern: str) -> str:
    """`pattern` if it is a valid glob; raises InvalidName saying what is wrong."""
    if not pattern or len(pattern) > MAX_LENGTH:
        raise InvalidName(f"a repository glob is 1 to {MAX_LENGTH} characters")
    if not _ALPHABET.fullmatch(pattern):
        raise InvalidName(
            f"the repository glob {pattern[:MAX_LENGTH]!r} may hold lowercase letters, digits, "
            "'.', '_', '-', '/', and the wildcards '*', '**' and '?'"
        )
    if "***" in pattern:
        raise InvalidName("a repository glob has '*' (one segment) or '**' (any depth), not '***'")
    return pattern


def _parts(pattern: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append("**")
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return out


@functools.lru_cache(maxsize=4096)
def glob_match(pattern: str, path: str) -> bool:
    """Whether `path` matches the (valid) glob `pattern` in full. Remembered: a CI job's
    grants are matched against the same repository on every request it makes."""
    tokens = _parts(pattern)
    n = len(path)
    # reach[j]: the tokens seen so far can match exactly path[:j].
    reach = [False] * (n + 1)
    reach[0] = True
    for part in tokens:
        nxt = [False] * (n + 1)
        if part == "**":
            seen = False
            for j in range(n + 1):
                seen = seen or reach[j]
                nxt[j] = seen
        elif part == "*":
            for j in range(n + 1):
                nxt[j] = reach[j] or (j > 0 and nxt[j - 1] and path[j - 1] != "/")
        else:
            for j in range(1, n + 1):
                char = path[j - 1]
                if reach[j - 1] and (char == part or (part == "?" and char != "/")):
                    nxt[j] = True
        reach = nxt
    return reach[n]

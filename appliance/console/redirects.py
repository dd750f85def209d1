"""Where the console may send a browser: the one decision for every redirect to a path of ours.

A target taken from a request (`?next=` after sign-in, the SAML `RelayState` the identity
provider posts back, the target an OpenID Connect sign-in keeps with its pending state) is
hostile: browsers drop tabs and newlines from URLs and read a backslash as a slash, so
`/<TAB>/evil.example/` or `/\\evil.example` leave the site as surely as `//evil.example` or
`https://evil.example`. `same_origin_path` accepts only an absolute path of this origin, in
printable ASCII, with no backslash (encoded or not), no scheme and no host, and returns it
normalised (dot segments resolved, repeated slashes collapsed, fragment dropped); anything
else falls back to `/`.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

MAX_TARGET = 2000
# Pages a browser is never sent back to after signing in (it would loop or sign out).
_NOT_AFTER_SIGN_IN = ("/signin", "/signout", "/saml/", "/oidc/")


def _printable(text: str) -> bool:
    """Visible ASCII only: no control character, space, DEL or anything a browser might
    strip or fold."""
    return all("!" <= c <= "~" for c in text)


def _normalised(path: str) -> str:
    """`path` with `.`/`..` segments resolved and empty segments dropped (so it can never
    start with `//`); a trailing slash is kept."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    text = "/" + "/".join(out)
    if path.endswith("/") and out:
        text += "/"
    return text


def same_origin_path(target: object, fallback: str = "/") -> str:
    """`target` as a normalised absolute path (and query) of this console, or `fallback`."""
    if not isinstance(target, str) or not target or len(target) > MAX_TARGET:
        return fallback
    if not _printable(target) or "\\" in target or not target.startswith("/"):
        return fallback
    if target.startswith("//"):  # scheme-relative, however many slashes follow
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return fallback
    decoded = unquote(parts.path)
    if not _printable(decoded) or "\\" in decoded or decoded.startswith("//"):
        return fallback
    path = _normalised(parts.path)
    return path + ("?" + parts.query if parts.query else "")


def after_sign_in(target: object) -> str:
    """Where to go once signed in: `same_origin_path`, and never back to a sign-in page."""
    path = same_origin_path(target)
    if path.startswith(_NOT_AFTER_SIGN_IN) or path in ("/saml", "/oidc"):
        return "/"
    return path

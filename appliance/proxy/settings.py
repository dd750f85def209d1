"""Proxy namespaces as configured: which namespace mirrors which upstream, with what credentials.

`proxy.upstreams` maps namespaces to upstream registries (`hub=https://registry-1.docker.io;
quay=https://quay.io`); credentials come from `proxy.credentials` (the environment) or
`proxy.credentials_file` (one `NAMESPACE=USER:PASSWORD` per line), never from the upstream list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from appliance.config import Config
from appliance.errors import ConfigError
from appliance.oci.names import validate_component

# Docker Hub's registry: one-component names are official images under `library/`.
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})


@dataclass(frozen=True)
class ProxyNamespace:
    """One namespace whose repositories are fetched from `url` on first use."""

    name: str
    url: str  # scheme://host[:port], no trailing slash
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    library: bool = False  # `alpine` is `library/alpine` upstream (Docker Hub's convention)

    def upstream_name(self, repository: str) -> str:
        """The upstream repository of local `repository` (`hub/alpine` → `library/alpine`)."""
        rest = repository[len(self.name) + 1 :]
        if self.library and "/" not in rest:
            return "library/" + rest
        return rest

    def local_name(self, repository: str) -> str:
        """The repository the cache keeps `repository` in: the same for every alias
        (`hub/alpine` and `hub/library/alpine` are one repository)."""
        return f"{self.name}/{self.upstream_name(repository)}"


def _items(text: str, separators: str) -> list[str]:
    for sep in separators[1:]:
        text = text.replace(sep, separators[0])
    return [item.strip() for item in text.split(separators[0]) if item.strip()]


def _credentials(text: str, source: str) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for item in _items(text, "\n"):
        name, sep, pair = item.partition("=")
        user, colon, password = pair.partition(":")
        if not sep or not colon or not user:
            # Never echo the item: it holds a password.
            raise ConfigError(f"{source}: expected NAMESPACE=USER:PASSWORD items")
        out[name.strip()] = (user.strip(), password)
    return out


def parse(config: Config) -> dict[str, ProxyNamespace]:
    """The configured proxy namespaces by name. Raises ConfigError with one clear line."""
    upstreams: dict[str, str] = {}
    for item in _items(config["proxy.upstreams"], ";\n"):
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        if not sep:
            raise ConfigError(f"proxy.upstreams: expected NAMESPACE=URL, not {item!r}")
        try:
            validate_component(name)
        except Exception as e:  # InvalidName: say which setting it came from
            raise ConfigError(f"proxy.upstreams: {e}") from None
        url = registry_url(url, f"proxy.upstreams: {name}: the upstream")
        if name in upstreams:
            raise ConfigError(f"proxy.upstreams: namespace {name!r} is listed twice")
        upstreams[name] = url
    creds: dict[str, tuple[str, str]] = {}
    path = config["proxy.credentials_file"]
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"proxy.credentials_file: cannot read {path}: {e.strerror}") from e
        creds.update(_credentials(text, "proxy.credentials_file"))
    # Items of the inline setting may be separated by ';' (an environment variable is one line).
    creds.update(_credentials(config["proxy.credentials"].replace(";", "\n"), "proxy.credentials"))
    unknown = sorted(set(creds) - set(upstreams))
    if unknown:
        raise ConfigError(f"proxy credentials for {unknown[0]!r}, which is not in proxy.upstreams")
    library = {n.strip() for n in config["proxy.library"].split(",") if n.strip()}
    stray = sorted(library - set(upstreams))
    if stray:
        raise ConfigError(f"proxy.library: {stray[0]!r} is not in proxy.upstreams")
    out: dict[str, ProxyNamespace] = {}
    for name, url in upstreams.items():
        user, password = creds.get(name, (None, None))
        hub = is_docker_hub(url)
        out[name] = ProxyNamespace(name, url, user, password, hub or name in library)
    return out


def is_docker_hub(url: str) -> bool:
    return (urlsplit(url).hostname or "") in DOCKER_HUB_HOSTS


def registry_url(text: str, what: str) -> str:
    """A registry's address as `http(s)://HOST[:PORT]`, without a trailing slash; ConfigError
    (starting with `what`) for anything else. Docker Hub's registry API answers at
    registry-1.docker.io, whatever the user wrote."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ConfigError(f"{what} must be http(s)://HOST[:PORT], not {url[:200]!r}")
    if parts.username is not None or parts.password is not None:
        # Never echo it: it holds a password.
        raise ConfigError(f"{what} must not hold credentials (give them separately)")
    return "https://registry-1.docker.io" if is_docker_hub(url) else url

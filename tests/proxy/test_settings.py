"""Proxy namespaces in the configuration, and their place in the shared name space."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from appliance.config import load
from appliance.errors import ConfigError
from appliance.proxy.settings import parse
from appliance.proxy.upstream import parse_challenge
from tests.support.servers import berth_command, start_berth


def proxies(tmp_path: Path | None = None, **env: str) -> dict:
    return parse(load(environ={f"BERTH_PROXY_{k.upper()}": v for k, v in env.items()}))


def test_upstreams_credentials_and_the_library_convention(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("quay=robot:pa;ss=word\n")
    ns = proxies(
        upstreams="hub=https://docker.io; quay=https://quay.io/ ;local=http://10.0.0.5:5000",
        credentials="hub=me:token",
        credentials_file=str(creds),
        library="local",
    )
    assert sorted(ns) == ["hub", "local", "quay"]
    hub, quay, local = ns["hub"], ns["quay"], ns["local"]
    assert hub.url == "https://registry-1.docker.io"  # Docker Hub's registry API
    assert (hub.username, hub.password, hub.library) == ("me", "token", True)
    assert (quay.url, quay.username, quay.password, quay.library) == (
        "https://quay.io",
        "robot",
        "pa;ss=word",  # a file line keeps ';' in a password
        False,
    )
    assert local.library
    assert hub.local_name("hub/alpine") == "hub/library/alpine"
    assert hub.local_name("hub/library/alpine") == "hub/library/alpine"
    assert hub.upstream_name("hub/bitnami/redis") == "bitnami/redis"
    assert quay.upstream_name("quay/alpine") == "alpine"
    assert "token" not in repr(hub)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"upstreams": "hub"}, "expected NAMESPACE=URL"),
        ({"upstreams": "Hub=https://x.io"}, "invalid"),
        ({"upstreams": "hub=ftp://x.io"}, "http(s)://HOST[:PORT]"),
        ({"upstreams": "hub=https://x.io/v2"}, "http(s)://HOST[:PORT]"),
        ({"upstreams": "hub=https://x.io;hub=https://y.io"}, "listed twice"),
        ({"upstreams": "hub=https://x.io", "credentials": "hub=nocolon"}, "USER:PASSWORD"),
        ({"upstreams": "hub=https://x.io", "credentials": "other=a:b"}, "not in proxy.upstreams"),
        ({"upstreams": "hub=https://x.io", "library": "other"}, "not in proxy.upstreams"),
        ({"upstreams": "hub=https://x.io", "credentials_file": "/nonexistent"}, "cannot read"),
    ],
)
def test_bad_settings_are_one_clear_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        proxies(**env)
    assert message in e.value.message
    assert "\n" not in e.value.message


def test_a_password_is_never_in_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        proxies(upstreams="hub=https://x.io", credentials="hub-secret-password")
    assert "secret" not in e.value.message


def test_bearer_challenge_parsing() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/alpine:pull",
    }
    assert parse_challenge('Basic realm="registry"') == ("basic", {"realm": "registry"})


def test_a_proxy_namespace_cannot_take_a_users_name(tmp_path: Path) -> None:
    # The first start creates the admin user, whose personal namespace is `admin`.
    first = start_berth(tmp_path / "data")
    assert first.stop() == 0
    with pytest.raises(RuntimeError) as e:
        start_berth(
            tmp_path / "data", env={"BERTH_PROXY_UPSTREAMS": "admin=http://127.0.0.1:9"}, timeout=20
        )
    assert "'admin' is the personal namespace of user 'admin'" in str(e.value)


def test_a_user_cannot_take_a_proxy_namespaces_name(tmp_path: Path) -> None:
    server = start_berth(tmp_path / "data", env={"BERTH_PROXY_UPSTREAMS": "up=http://127.0.0.1:9"})
    assert server.stop() == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    result = subprocess.run(
        [
            *berth_command(),
            "user",
            "add",
            "up",
            "--password-stdin",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        input="a-long-enough-password-1\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "a namespace of that name exists" in result.stderr

"""OpenID Connect providers as configured: what the settings refuse (each with the setting's
name), a discovery document from a file for offline sites, and `berth config show|check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import config as settings
from appliance.auth.oidc import providers_from_config
from appliance.cli import main
from appliance.errors import ConfigError

ISSUER = "https://login.example.org/realms/corp"


def discovery(issuer: str = ISSUER) -> dict[str, object]:
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/auth",
        "token_endpoint": issuer + "/token",
        "userinfo_endpoint": issuer + "/userinfo",
        "jwks_uri": issuer + "/certs",
        "end_session_endpoint": issuer + "/logout",
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }


def load(**env: str) -> settings.Config:
    return settings.load(None, environ={f"BERTH_OIDC_CORP_{k.upper()}": v for k, v in env.items()})


def refused(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        providers_from_config(load(**env))
    return info.value.message


def test_what_the_settings_refuse(tmp_path: Path) -> None:
    assert providers_from_config(settings.load(None, environ={})) == {}
    assert "set issuer" in refused(client_id="berth")
    assert "oidc.corp.client_id must be set" in refused(issuer=ISSUER)
    assert "must be https" in refused(issuer="ftp://login.example.org", client_id="b")
    assert "explicit test setting" in refused(issuer="http://127.0.0.1:8080", client_id="b")
    loopback = load(issuer="http://127.0.0.1:8080", client_id="b", allow_http="1")
    assert list(providers_from_config(loopback)) == ["corp"]
    assert "must be https" in refused(
        issuer="http://login.example.org", client_id="b", allow_http="true"
    ), "http only on a loopback address, even in a test setup"
    assert "oidc.corp.group_roles" in refused(issuer=ISSUER, client_id="b", group_roles="x")
    assert "oidc.corp.client_secret_file" in refused(
        issuer=ISSUER, client_id="b", client_secret_file=str(tmp_path / "missing")
    )


async def test_an_offline_discovery_document(tmp_path: Path) -> None:
    path = tmp_path / "discovery.json"
    path.write_text(json.dumps(discovery()))
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    providers = providers_from_config(
        load(discovery_file=str(path), client_id="berth", client_secret_file=str(secret))
    )
    corp = providers["corp"]
    assert corp.settings.issuer == ISSUER  # taken from the document
    assert corp.settings.client_secret == "s3cret"
    assert corp.settings.scopes == ("openid", "profile", "email")
    url, pending = await corp.begin("https://registry.example.org/oidc/corp/callback")
    assert url.startswith(ISSUER + "/auth?response_type=code&client_id=berth")
    assert f"state={pending.state}" in url
    assert "code_challenge_method=S256" in url
    assert await corp.logout_url("https://registry.example.org/signin") == (
        ISSUER + "/logout?client_id=berth&post_logout_redirect_uri="
        "https%3A%2F%2Fregistry.example.org%2Fsignin"
    )
    path.write_text(json.dumps(discovery("https://elsewhere.example.org")))
    assert "not 'https://login.example.org/realms/corp'" in refused(
        issuer=ISSUER, discovery_file=str(path), client_id="berth"
    )
    path.write_text(json.dumps({**discovery(), "token_endpoint": "http://x.example.org/t"}))
    assert "token_endpoint" in refused(discovery_file=str(path), client_id="berth")


def test_config_show_and_check(tmp_path: Path) -> None:
    path = tmp_path / "berth.toml"
    path.write_text(f'[oidc.corp]\nissuer = "{ISSUER}"\nclient_id = "berth"\n')
    shown = CliRunner().invoke(main, ["config", "show", "--config", str(path)], env={})
    assert shown.exit_code == 0, shown.output
    assert "\n[oidc.corp]\n" in shown.output
    assert f'issuer = "{ISSUER}"' in shown.output
    assert '(env BERTH_OIDC_<NAME>_CLIENT_ID)\nclient_id = "berth"' in shown.output
    checked = CliRunner().invoke(main, ["config", "check", str(path)], env={})
    assert checked.exit_code == 0, checked.output
    path.write_text(f'[oidc.corp]\nissuer = "{ISSUER}"\n')
    checked = CliRunner().invoke(main, ["config", "check", str(path)], env={})
    assert checked.exit_code == 2
    assert "oidc.corp.client_id must be set" in checked.output

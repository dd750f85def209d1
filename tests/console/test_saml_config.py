"""SAML service-provider settings: IdP metadata from a file, what the config refuses, and the
mapping of assertion attributes and groups to an account and namespace roles."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from appliance import config as settings
from appliance.auth.saml import RequestInfo, SamlError, provider_from_config
from appliance.errors import ConfigError
from tests.support.simplesamlphp import SimpleSamlPhp


def load(**values: str) -> settings.Config:
    return settings.load(None, environ={}, overrides=values)


def test_saml_is_off_unless_an_idp_is_named():
    assert provider_from_config(load()) is None


def test_url_and_file_together_are_refused(tmp_path: Path):
    config = load(
        **{"saml.idp_metadata_url": "http://idp/metadata", "saml.idp_metadata_file": "x.xml"}
    )
    with pytest.raises(ConfigError, match="not both"):
        provider_from_config(config)


def test_a_bad_group_mapping_names_the_saml_setting():
    with pytest.raises(ConfigError, match=r"saml\.group_roles"):
        provider_from_config(
            load(**{"saml.idp_metadata_file": "x.xml", "saml.group_roles": "devs=team"})
        )


def test_idp_metadata_from_a_file(tmp_path: Path, simplesamlphp: SimpleSamlPhp):
    path = tmp_path / "idp.xml"
    with urllib.request.urlopen(simplesamlphp.metadata_url, timeout=10) as r:
        path.write_bytes(r.read())
    provider = provider_from_config(load(**{"saml.idp_metadata_file": str(path)}))
    assert provider is not None
    idp = provider.idp()
    assert idp["entityId"] == simplesamlphp.metadata_url
    assert idp["singleSignOnService"]["url"].startswith(simplesamlphp.url)
    info = RequestInfo(https=False, host="registry.test:5000", path="/saml/login", get={}, post={})
    url, request_id = provider.login_url("http://registry.test:5000", info, "/")
    assert url.startswith(simplesamlphp.url + "/saml2/idp/SSOService.php?SAMLRequest=")
    assert request_id
    metadata = provider.metadata("http://registry.test:5000")
    assert 'entityID="http://registry.test:5000/saml/metadata"' in metadata
    assert "http://registry.test:5000/saml/acs" in metadata


def test_unreadable_metadata_is_a_clear_error(tmp_path: Path):
    provider = provider_from_config(
        load(**{"saml.idp_metadata_file": str(tmp_path / "missing.xml")})
    )
    assert provider is not None
    with pytest.raises(SamlError, match="cannot read the SAML IdP metadata"):
        provider.idp()


def test_attributes_and_groups_map_to_name_email_and_roles():
    provider = provider_from_config(
        load(
            **{
                "saml.idp_metadata_file": "x.xml",
                "saml.group_roles": "devs=team:developer; leads=team:owner; ops=*:admin",
            }
        )
    )
    assert provider is not None
    who = provider._identity(
        "Jane.Doe@Example.org",
        {"mail": ["jane@example.org"], "groups": ["devs", "leads"], "cn": ["Jane Doe"]},
    )
    assert who.name == "jane.doe"  # no uid attribute: the NameID before '@', normalized
    assert who.email == "jane@example.org"
    assert who.display_name == "Jane Doe"
    assert provider.roles_for(who) == ({"team": "owner"}, False)
    admin = provider._identity("x@example.org", {"uid": ["Root User"], "groups": ["ops"]})
    assert admin.name == "root-user"
    assert provider.roles_for(admin) == ({}, True)
    with pytest.raises(SamlError, match="names no user"):
        provider._identity("", {})

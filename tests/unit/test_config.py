"""Settings (`appliance.config`): defaults, the TOML file, `BERTH_*` variables and overrides,
their precedence, and a one-line ConfigError for every unknown key or wrong type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.config import SECRET_KEYS, SETTINGS, Config, load, parse_listen
from appliance.errors import ConfigError

DEFAULTS = {s.key: s.default for s in SETTINGS if not s.templated}
# A boolean setting, whichever the table has: the tests of boolean parsing use it.
FLAG = next(s for s in SETTINGS if s.type is bool)
FLAG_SECTION, _, FLAG_NAME = FLAG.key.rpartition(".")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "berth.toml"
    path.write_text(text)
    return path


def refused(**kwargs: Any) -> str:
    """The message of the ConfigError that `load(**kwargs)` raises; it must be one line."""
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    message = info.value.message
    assert "\n" not in message, message
    return message


# -- defaults ------------------------------------------------------------------------------


def test_defaults_with_no_file_and_no_environment() -> None:
    config = load(None, environ={})
    assert dict(config.values) == DEFAULTS
    assert config.source == "defaults"
    assert config.listen == ("127.0.0.1", 5000)
    assert config["uploads.expiry"] == 24 * 3600
    assert config["manifests.max_size"] == 4 * 1024 * 1024
    assert config["storage.backend"] == "filesystem"


def test_derived_paths(tmp_path: Path) -> None:
    config = load(None, environ={}, overrides={"server.data_dir": str(tmp_path / "d")})
    assert config.data_dir == tmp_path / "d"
    assert config.storage_root == tmp_path / "d" / "storage"
    assert config.metadata_url == f"sqlite:///{tmp_path / 'd' / 'berth.db'}"


def test_relative_and_home_paths_are_made_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    config = load(None, environ={}, overrides={"server.data_dir": "~/data"})
    assert config.data_dir == Path("/home/someone/data")
    config = load(None, environ={}, overrides={"server.data_dir": "rel"})
    assert config.data_dir.is_absolute()
    assert config.data_dir == Path.cwd() / "rel"


def test_explicit_storage_root_and_metadata_url(tmp_path: Path) -> None:
    config = load(
        write(
            tmp_path,
            f'[storage]\nroot = "{tmp_path / "blobs"}"\n'
            f'[metadata]\nurl = "sqlite:///{tmp_path / "m.db"}"\n',
        ),
        environ={},
    )
    assert config.storage_root == tmp_path / "blobs"
    assert config.metadata_url == f"sqlite:///{tmp_path / 'm.db'}"


# -- the environment-variable mapping ------------------------------------------------------


def test_every_setting_maps_to_its_variable() -> None:
    for setting in SETTINGS:
        assert setting.env == "BERTH_" + setting.key.replace(".", "_").upper()
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert len({s.key for s in SETTINGS}) == len(SETTINGS)


def test_keys_with_underscores_stay_unambiguous() -> None:
    config = load(
        None,
        environ={
            "BERTH_SERVER_DATA_DIR": "/srv/berth",
            "BERTH_UPLOADS_PURGE_INTERVAL": "5",
        },
    )
    assert config["server.data_dir"] == "/srv/berth"
    assert config["uploads.purge_interval"] == 5.0


# -- settings repeated per named instance (one table per OpenID Connect provider) ----------


def test_an_instance_table_in_the_file_and_its_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[oidc.corp]\nissuer = "https://login.example.org"\nclient_id = "berth"\n'
        "[oidc.lab2]\nallow_http = true\n",
    )
    config = load(path, environ={})
    assert config.instances("oidc") == ["corp", "lab2"]
    assert config["oidc.corp.issuer"] == "https://login.example.org"
    assert config["oidc.corp.scopes"] == "openid profile email"  # unset: the default
    assert config["oidc.lab2.allow_http"] is True
    assert config["oidc.lab2.issuer"] == ""
    keys = [key for key, _ in config.rows() if key.startswith("oidc.")]
    # Each instance's keys together, so `berth config show` prints one table per instance.
    assert keys.index("oidc.corp.allow_http") < keys.index("oidc.lab2.issuer")


def test_an_instance_from_the_environment_only() -> None:
    config = load(
        None,
        environ={
            "BERTH_OIDC_CORP_CLIENT_SECRET_FILE": "/etc/berth/corp.secret",
            "BERTH_OIDC_CORP_USERNAME_CLAIM": "email",
            "BERTH_OIDC_WEB2_NAME_CLAIM": "nickname",
        },
    )
    assert config.instances("oidc") == ["corp", "web2"]
    assert config["oidc.corp.client_secret_file"] == "/etc/berth/corp.secret"
    assert config["oidc.corp.username_claim"] == "email"
    assert config["oidc.corp.name_claim"] == "name"  # NAME_CLAIM is not USERNAME_CLAIM
    assert config["oidc.web2.name_claim"] == "nickname"
    assert load(None, environ={}).instances("oidc") == []


def test_instance_names_and_keys_are_checked(tmp_path: Path) -> None:
    assert "lowercase letters and digits" in refused(
        path=write(tmp_path, '[oidc.Corp_1]\nissuer = "https://x"\n')
    )
    assert "unknown setting 'oidc.corp.colour'" in refused(
        path=write(tmp_path, '[oidc.corp]\ncolour = "red"\n')
    )
    assert "must be a bool" in refused(environ={"BERTH_OIDC_CORP_ALLOW_HTTP": "maybe"})
    assert "unknown environment variable BERTH_OIDC_CO_RP_ISSUER" in refused(
        environ={"BERTH_OIDC_CO_RP_ISSUER": "https://x"}
    )


# -- the TOML file -------------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
listen = "0.0.0.0:8080"
shutdown_timeout = 5

[uploads]
expiry = 3600.5
purge_interval = 60

[manifests]
max_size = 1024

[metadata]
readers = 2

[log]
level = "debug"
""",
    )
    config = load(path, environ={})
    assert config.source == str(path)
    assert config.listen == ("0.0.0.0", 8080)
    assert config["server.shutdown_timeout"] == 5.0
    assert isinstance(config["server.shutdown_timeout"], float)
    assert config["uploads.expiry"] == 3600.5
    assert config["uploads.purge_interval"] == 60.0
    assert config["manifests.max_size"] == 1024
    assert config["metadata.readers"] == 2
    assert config["log.level"] == "debug"
    # Untouched keys keep their defaults.
    assert config["storage.backend"] == "filesystem"


def test_dotted_keys_and_inline_tables(tmp_path: Path) -> None:
    path = write(tmp_path, 'server.listen = "127.0.0.1:1"\nuploads = { expiry = 7 }\n')
    config = load(path, environ={})
    assert config.listen == ("127.0.0.1", 1)
    assert config["uploads.expiry"] == 7.0


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert dict(load(write(tmp_path, ""), environ={}).values) == DEFAULTS


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[server]\nlisten_on = "x:1"\n', "server.listen_on"),
        ('[serverr]\nlisten = "x:1"\n', "serverr.listen"),
        ('listen = "x:1"\n', "listen"),
        ("[storage.floppy]\ndrive = 'a'\n", "storage.floppy.drive"),
        ("[uploads]\nexpiry = 1\n[uploads.extra]\nx = 1\n", "uploads.extra.x"),
    ],
)
def test_unknown_key_in_the_file(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    message = refused(path=path)
    assert named in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nlisten = 5000\n", "server.listen"),
        ('[metadata]\nreaders = "four"\n', "metadata.readers"),
        ("[metadata]\nreaders = 4.5\n", "metadata.readers"),
        ("[metadata]\nreaders = true\n", "metadata.readers"),
        ('[uploads]\nexpiry = "soon"\n', "uploads.expiry"),
        ("[uploads]\nexpiry = true\n", "uploads.expiry"),
        ("[uploads]\nexpiry = [1]\n", "uploads.expiry"),
        (f"[{FLAG_SECTION}]\n{FLAG_NAME} = 1\n", FLAG.key),
        (f'[{FLAG_SECTION}]\n{FLAG_NAME} = "maybe"\n', FLAG.key),
        ("[server.listen]\nhost = 'x'\n", "server.listen"),
        ("[log]\nlevel = 3\n", "log.level"),
    ],
)
def test_wrong_type_in_the_file(tmp_path: Path, text: str, key: str) -> None:
    message = refused(path=write(tmp_path, text))
    assert key in message


@pytest.mark.parametrize("text", ["[server\n", "listen = \n", "a = 'b' c\n", "[a]\n[a]\n"])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    message = refused(path=path)
    assert "invalid TOML" in message
    assert str(path) in message


def test_missing_or_unreadable_file(tmp_path: Path) -> None:
    assert "cannot read" in refused(path=tmp_path / "absent.toml")
    assert "cannot read" in refused(path=tmp_path)  # a directory


def test_invalid_listen_in_the_file(tmp_path: Path) -> None:
    assert "listen" in refused(path=write(tmp_path, '[server]\nlisten = "nowhere"\n'))


def test_unknown_storage_backend(tmp_path: Path) -> None:
    message = refused(path=write(tmp_path, '[storage]\nbackend = "floppy"\n'))
    assert "floppy" in message


# -- BERTH_* variables -----------------------------------------------------------------------


def test_environment_values_are_typed() -> None:
    config = load(
        None,
        environ={
            "BERTH_SERVER_LISTEN": "127.0.0.1:6000",
            "BERTH_METADATA_READERS": " 8 ",
            "BERTH_UPLOADS_EXPIRY": "1.5",
            "BERTH_MANIFESTS_MAX_SIZE": "2048",
            FLAG.env: "yes",
        },
    )
    assert config.listen == ("127.0.0.1", 6000)
    assert config["metadata.readers"] == 8
    assert config["uploads.expiry"] == 1.5
    assert config["manifests.max_size"] == 2048
    assert config[FLAG.key] is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_environment_booleans(value: str, expected: bool) -> None:
    config = load(None, environ={FLAG.env: value})
    assert config[FLAG.key] is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BERTH_METADATA_READERS", "many"),
        ("BERTH_METADATA_READERS", "2.5"),
        ("BERTH_METADATA_READERS", ""),
        ("BERTH_UPLOADS_EXPIRY", "a day"),
        (FLAG.env, "maybe"),
        (FLAG.env, ""),
        ("BERTH_SERVER_LISTEN", "localhost"),
        ("BERTH_SERVER_LISTEN", "localhost:99999"),
        ("BERTH_STORAGE_BACKEND", "s4"),
    ],
)
def test_wrong_type_in_the_environment(name: str, value: str) -> None:
    message = refused(environ={name: value})
    assert name in message or "listen" in message or value in message


@pytest.mark.parametrize("name", ["BERTH_NOPE", "BERTH_SERVER", "BERTH_SERVER_LISTENS", "BERTH_"])
def test_unknown_berth_variable(name: str) -> None:
    assert name in refused(environ={name: "x"})


def test_other_variables_are_ignored() -> None:
    config = load(None, environ={"HOME": "/", "berth_server_listen": "x", "XBERTH_A": "1"})
    assert dict(config.values) == DEFAULTS


def test_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("BERTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BERTH_LOG_LEVEL", "warning")
    assert load(None)["log.level"] == "warning"


# -- overrides and precedence ----------------------------------------------------------------


def test_precedence_defaults_file_environment_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[server]\nlisten = "127.0.0.1:1001"\ndata_dir = "/from/file"\n'
        "[uploads]\nexpiry = 11\npurge_interval = 12\n",
    )
    environ = {"BERTH_SERVER_LISTEN": "127.0.0.1:2002", "BERTH_UPLOADS_EXPIRY": "22"}
    overrides = {"server.listen": "127.0.0.1:3003", "server.data_dir": None}
    config = load(path, environ=environ, overrides=overrides)
    assert config.listen == ("127.0.0.1", 3003)  # override beats all
    assert config["uploads.expiry"] == 22.0  # environment beats file
    assert config["uploads.purge_interval"] == 12.0  # file beats default
    assert config["server.data_dir"] == "/from/file"  # a None override leaves it alone
    assert config["log.level"] == "info"  # default


def test_overrides_are_typed() -> None:
    config = load(
        None,
        environ={},
        overrides={FLAG.key: True, "uploads.expiry": 5, "metadata.readers": "3"},
    )
    assert config[FLAG.key] is True
    assert config["uploads.expiry"] == 5.0
    assert config["metadata.readers"] == 3


def test_override_of_the_wrong_type() -> None:
    message = refused(overrides={"metadata.readers": "lots"})
    assert "metadata.readers" in message


def test_override_of_an_unknown_key() -> None:
    assert "server.nope" in refused(overrides={"server.nope": "x"})


def test_invalid_listen_override() -> None:
    assert "listen" in refused(overrides={"server.listen": "127.0.0.1"})


# -- the listen address ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:5000", ("::1", 5000)),
        ("[::]:80", ("::", 80)),
        (":5000", ("127.0.0.1", 5000)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["", "5000", "host:", "host:port", "host:65536", "host:-1"])
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(value)


def test_config_is_read_only() -> None:
    config = load(None, environ={})
    assert isinstance(config, Config)
    with pytest.raises(AttributeError):
        config.source = "x"  # type: ignore[misc]


def test_config_show_never_prints_secrets(tmp_path):
    env = {
        "BERTH_STORAGE_S3_SECRET_KEY": "s3-secret-value",
        "BERTH_STORAGE_S3_ACCESS_KEY": "s3-access-value",
        "BERTH_ADMIN_PASSWORD": "admin-secret-value",
        "BERTH_LDAP_BIND_PASSWORD": "ldap-secret-value",
    }
    # Every other secret setting too, whatever its section.
    for setting in SETTINGS:
        if setting.secret and setting.env not in env:
            env[setting.env] = f"{setting.key.replace('.', '-')}-secret-value"
    result = CliRunner().invoke(main, ["config", "show"], env=env)
    assert result.exit_code == 0, result.output
    assert "secret-value" not in result.output
    assert "access-value" not in result.output
    assert result.output.count('"********"') == len(SECRET_KEYS)


@pytest.mark.parametrize(
    ("table", "line"),
    [
        (
            '[log]\nformat = "xml"\n',
            "log.format must be one of auto, text, json, not 'xml'",
        ),
        (
            '[metadata]\nauto_migrate = "maybe"\n',
            "metadata.auto_migrate must be one of auto, yes, no, true, false, on, off, 1, 0, "
            "not 'maybe'",
        ),
        (
            '[storage.s3]\naddressing = "sideways"\n',
            "storage.s3.addressing must be one of path, virtual, auto, not 'sideways'",
        ),
        ('[storage]\nbackend = "tape"\n', "storage.backend must be one of filesystem, s3, azure"),
        ('[scan]\nunscanned = "shrug"\n', "scan.unscanned must be one of allow, deny"),
    ],
)
def test_config_check_refuses_a_word_the_table_does_not_allow(
    tmp_path: Path, table: str, line: str
) -> None:
    """`berth config check` refuses what serving would: one line naming the setting, the
    allowed words and the value given, and a non-zero exit; serving's loader says the same."""
    path = tmp_path / "berth.toml"
    path.write_text(table)
    checked = CliRunner().invoke(main, ["config", "check", str(path)], env={})
    assert checked.exit_code != 0
    (said,) = [text for text in checked.output.splitlines() if text.strip()]
    assert said.startswith("berth: ")
    assert line in said, said
    with pytest.raises(ConfigError, match="must be one of"):
        load(path, environ={})
    key = said.split(": ")[2].split(" ")[0]
    variable = "BERTH_" + key.replace(".", "_").upper()
    with pytest.raises(ConfigError, match=f"^{variable}: {key} must be one of"):
        load(None, environ={variable: "nonsense"})


def test_allowed_words_match_without_regard_to_case() -> None:
    loaded = load(
        None,
        environ={
            "BERTH_LOG_FORMAT": " JSON ",
            "BERTH_METADATA_AUTO_MIGRATE": "On",
            "BERTH_STORAGE_S3_ADDRESSING": "Virtual",
        },
    )
    assert loaded["log.format"] == "json"
    assert loaded["metadata.auto_migrate"] == "on"
    assert loaded["storage.s3.addressing"] == "virtual"

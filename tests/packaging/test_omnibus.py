"""omnibus/ and `berth ctl`: config template, validation, rendering, reconfigure without systemd."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import config as settings
from appliance.config import SETTINGS
from appliance.omnibus import checks, ctl, template
from tests.support.servers import require_binary, unavailable

BERTH = [sys.executable, "-m", "appliance"]


def berth(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BERTH, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_config_template_lists_every_setting_commented(tmp_path: Path):
    text = template.render()
    for setting in SETTINGS:
        key = setting.key.rpartition(".")[2]
        assert f"(env {setting.env})" in text, setting.key
        if setting.key in template.INSTALL_VALUES:
            assert f"\n{key} = " in text
        else:
            assert f"\n# {key} = {template.toml_value(setting.default)}\n" in text, setting.key
    # Uncommenting every line gives the defaults back: the commented values are real TOML.
    # The example table of templated settings (`# [oidc.example]`) is uncommented with them.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and (" = " in line or line.startswith("# [")) else line
        for line in text.splitlines()
    )
    loaded = settings.load(_write(tmp_path, "uncommented.toml", uncommented), environ={})
    for setting in SETTINGS:
        key = setting.for_instance(template.EXAMPLE_INSTANCE)
        expected = template.INSTALL_VALUES.get(setting.key, setting.default)
        assert loaded[key] == expected, setting.key
    assert loaded.instances("oidc") == [template.EXAMPLE_INSTANCE]


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_config_check_accepts_the_template(tmp_path: Path):
    path = _write(tmp_path, "berth.toml", template.render())
    result = berth("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nlisten_port = 5000\n", "unknown setting 'server.listen_port'"),
        ('[server]\nworkers = "four"\n', "server.workers must be 'auto' or a number"),
        (
            '[nginx]\ntls_cert = "/nonexistent/cert.pem"\ntls_key = "/nonexistent/key.pem"\n',
            "nginx.tls_cert: cannot read certificate /nonexistent/cert.pem: No such file",
        ),
        ('[ldap]\nca_file = "NOTPEM"\n', "ldap.ca_file: cannot read certificate NOTPEM"),
        ("[nginx]\nenabled = true\n", "server.public_url must be set when nginx.enabled is true"),
        (
            '[nginx]\nupstreams = "10.0.0.1:5000;include /etc/shadow"\n',
            "nginx.upstreams: '10.0.0.1:5000;include /etc/shadow' is not HOST:PORT",
        ),
        (
            '[nginx]\nupstreams = "10.0.0.1:5000, evil}host:80"\n',
            "nginx.upstreams: 'evil}host:80' is not HOST:PORT",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "unreadable-cert",
        "missing-ca",
        "nginx-without-url",
        "upstream-injection",
        "upstream-brace",
    ],
)
def test_config_mistakes_are_one_clear_line(tmp_path: Path, text: str, expected: str):
    path = _write(tmp_path, "berth.toml", text)
    result = berth("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("berth: ")
    assert expected in lines[0]


def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path):
    bogus = _write(tmp_path, "cert.pem", "hello\n")
    key = _write(tmp_path, "key.pem", "-----BEGIN PRIVATE KEY-----\n")
    path = _write(tmp_path, "berth.toml", f'[nginx]\ntls_cert = "{bogus}"\ntls_key = "{key}"\n')
    result = berth("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"berth: nginx.tls_cert: {bogus} holds no PEM certificate"


def test_systemd_unit_is_hardened():
    config = settings.load(None, environ={}, overrides=template.INSTALL_VALUES)
    unit = ctl.render_unit(config, Path("/etc/berth/berth.toml"), exe="/usr/bin/berth")
    for line in (
        "User=berth",
        "ExecStart=/usr/bin/berth serve --config /etc/berth/berth.toml",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/opt/berth /var/log/berth",
        "PrivateTmp=yes",
        "Restart=on-failure",
    ):
        assert f"\n{line}\n" in unit, line


def test_nginx_config_renders_and_nginx_accepts_it(tmp_path: Path):
    nginx = pytest.importorskip("shutil").which("nginx")
    config = settings.load(
        None,
        environ={},
        overrides={
            "server.data_dir": str(tmp_path / "data"),
            "log.dir": str(tmp_path / "log"),
            "nginx.enabled": True,
            "server.public_url": "https://registry.example",
            "nginx.listen": "127.0.0.1:8443",
            "nginx.redirect_listen": "127.0.0.1:8080",
        },
    )
    cert, key = checks.tls_paths(config)
    ctl.make_self_signed(cert, key, "registry.example")
    text = ctl.render_nginx(config, user="root")
    assert "client_max_body_size 0;" in text
    assert "proxy_request_buffering off;" in text
    assert "return 301 https://$host:8443$request_uri;" in text
    assert f"alias {config.storage_root}/;" in text
    assert 'proxy_set_header X-Berth-Accel "1";' in text
    if nginx is None:
        unavailable("nginx not installed: install the Debian package 'nginx'")
    prefix = ctl.nginx_prefix(config)
    prefix.mkdir(parents=True)
    (tmp_path / "log").mkdir()
    (prefix / "nginx.conf").write_text(text)
    result = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_nginx_pool_renders_every_host_with_passive_checks(tmp_path: Path):
    """nginx.upstreams: one `server` line per host, checked passively; a request whose body
    was not sent yet goes to the next host; no X-Accel-Redirect (a pool has no local blobs);
    nginx accepts it."""
    config = settings.load(
        None,
        environ={},
        overrides={
            "server.data_dir": str(tmp_path / "data"),
            "log.dir": str(tmp_path / "log"),
            "nginx.enabled": True,
            "server.public_url": "https://registry.example",
            "nginx.listen": "127.0.0.1:8443",
            "nginx.redirect_listen": "",
            "nginx.upstreams": "127.0.0.1:5001, 127.0.0.2:5002,[::1]:5003",
        },
    )
    cert, key = checks.tls_paths(config)
    ctl.make_self_signed(cert, key, "registry.example")
    text = ctl.render_nginx(config, user="root")
    for address in ("127.0.0.1:5001", "127.0.0.2:5002", "[::1]:5003"):
        assert f"server {address} max_fails=2 fail_timeout=10s;" in text
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in text
    assert "proxy_request_buffering off;" in text
    assert "client_max_body_size 0;" in text
    assert 'proxy_set_header X-Berth-Accel "0";' in text
    nginx = require_binary("nginx", "nginx")
    prefix = ctl.nginx_prefix(config)
    prefix.mkdir(parents=True)
    (tmp_path / "log").mkdir()
    (prefix / "nginx.conf").write_text(text)
    result = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_reconfigure_without_systemd(tmp_path: Path):
    """What the packages' post-install step does, in a directory: validate, migrate, render,
    and say that the restart is skipped."""
    config = _write(
        tmp_path,
        "berth.toml",
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n[log]\ndir = "{tmp_path / "log"}"\n',
    )
    units = tmp_path / "units"
    result = berth(
        "ctl", "reconfigure", "--config", str(config), "--systemd-dir", str(units), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "schema version" in result.stdout
    assert "systemd is not running here" in result.stdout
    unit = (units / "berth.service").read_text()
    assert f"ReadWritePaths={tmp_path / 'data'} {tmp_path / 'log'}" in unit
    assert (tmp_path / "data" / "berth.db").exists()
    # Twice is a no-op that says so.
    again = berth(
        "ctl", "reconfigure", "--config", str(config), "--systemd-dir", str(units), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert f"unchanged {units / 'berth.service'}" in again.stdout
    doctor = berth("ctl", "doctor", "--config", str(config), cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for check in ("disk", "permissions", "database", "storage", "clock", "certificates"):
        assert f"] {check}: " in doctor.stdout, check
    assert doctor.stdout.strip().endswith("doctor: ok") or "doctor: warn" in doctor.stdout


def test_doctor_gives_a_fix_hint(tmp_path: Path):
    config = _write(tmp_path, "berth.toml", f'[server]\ndata_dir = "{tmp_path / "missing"}"\n')
    result = berth("ctl", "doctor", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "[fail] permissions:" in result.stdout
    assert "fix: run `berth ctl reconfigure`" in result.stdout


def test_installed_config_parses_as_toml():
    tomllib.loads(template.render())

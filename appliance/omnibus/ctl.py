"""`berth ctl`: administer an installed Berth the omnibus way.

`reconfigure` makes the machine match /etc/berth/berth.toml: it validates the config, makes the
data and log directories, upgrades the database (a backup first when migrations are pending,
then the migrations: omnibus/upgrade.py), renders the systemd unit (and nginx's config and unit
when `[nginx] enabled`) from the templates in omnibus/, and restarts what changed, including
Berth itself after an upgrade (a new executable). Where systemd is not running (a chroot, a
container) it says so and skips the restart.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template

import click

from appliance.cli.common import config_option_with, fail
from appliance.cli.common import load_config as load_any_config
from appliance.config import Config, parse_upstreams
from appliance.errors import BerthError
from appliance.omnibus import checks

DEFAULT_CONFIG = Path("/etc/berth/berth.toml")
SYSTEMD_DIR = Path("/etc/systemd/system")
UNIT = "berth.service"
NGINX_UNIT = "berth-nginx.service"
STATE_FILE = ".reconfigure-state.json"


# `berth ctl` reads the file it is given (or none), never ./berth.toml by chance.
load_config = functools.partial(load_any_config, search=False)


def templates_dir() -> Path:
    """omnibus/ in a checkout, or where the single executable unpacked it."""
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "omnibus"
    return Path(__file__).resolve().parents[2] / "omnibus"


def render(name: str, **values: object) -> str:
    text = (templates_dir() / name).read_text()
    return Template(text).substitute({k: str(v) for k, v in values.items()})


def executable() -> str:
    if getattr(sys, "frozen", False):
        return sys.executable
    found = shutil.which("berth")
    return found or f"{sys.executable} -m appliance"


def systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 here (not a chroot or a plain container)."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


NO_SYSTEMD = (
    "systemd is not running here (a chroot or a container): {what} skipped; "
    "run `berth serve --config {config}` as the berth user yourself"
)


def render_unit(config: Config, config_path: Path, exe: str | None = None) -> str:
    return render(
        "berth.service.in",
        user=checks.SERVICE_USER,
        executable=exe or executable(),
        config=config_path,
        data_dir=config.data_dir,
        log_dir=checks.log_dir(config),
        stop_timeout=int(config["server.shutdown_timeout"]) + 10,
    )


def nginx_prefix(config: Config) -> Path:
    return config.data_dir / "nginx"


def upstream_servers(config: Config) -> list[str]:
    """The `server` lines of nginx's upstream: the hosts of `nginx.upstreams` with passive
    health checks, or this host's own Berth."""
    pool = parse_upstreams(config["nginx.upstreams"])
    if not pool:
        host, port = config.listen
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - the wildcard is reached on loopback
            host = "127.0.0.1"
        return [f"server {f'[{host}]' if ':' in host else host}:{port};"]
    lines = []
    for host, port in pool:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines.append(f"server {address} max_fails=2 fail_timeout=10s;")
    return lines


def render_nginx(config: Config, user: str = checks.SERVICE_USER) -> str:
    """nginx.conf for the front: HTTPS on nginx.listen, Berth (or a pool of Berth hosts, each
    checked passively) as the upstream."""
    cert, key = checks.tls_paths(config)
    redirect = ""
    if config["nginx.redirect_listen"]:
        https_port = config["nginx.listen"].rpartition(":")[2]
        redirect = (
            "\n    server {\n"
            f"        listen {config['nginx.redirect_listen']};\n"
            f"        server_name {config['nginx.server_name']};\n"
            f"        return 301 https://$host:{https_port}$request_uri;\n"
            "    }\n"
        )
    pooled = bool(config["nginx.upstreams"].strip())
    return render(
        "nginx.conf.in",
        user=user,
        prefix=nginx_prefix(config),
        log_dir=checks.log_dir(config),
        upstream_servers="\n".join("        " + line for line in upstream_servers(config)),
        redirect_server=redirect,
        listen=config["nginx.listen"],
        server_name=config["nginx.server_name"],
        tls_cert=cert,
        tls_key=key,
        # Only a local filesystem store can be handed to nginx to send (not a pool's).
        accel="1" if config["storage.backend"] == "filesystem" and not pooled else "0",
        storage_root=config.storage_root,
    )


def render_nginx_unit(config: Config) -> str:
    prefix = nginx_prefix(config)
    return render(
        "berth-nginx.service.in",
        nginx=shutil.which("nginx") or "/usr/sbin/nginx",
        prefix=prefix,
        conf=prefix / "nginx.conf",
        log_dir=checks.log_dir(config),
    )


def make_self_signed(cert: Path, key: Path, name: str) -> None:
    """An EC P-256 certificate for `name`, valid a year: for trials, not for production."""
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    private = ec.generate_private_key(ec.SECP256R1())
    host = name if name not in ("_", "") else "localhost"
    alt: list[x509.GeneralName] = [x509.DNSName(host), x509.DNSName("localhost")]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    if path.exists() and path.read_text() == text:
        click.echo(f"unchanged {path}")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    click.echo(f"wrote {path}")
    return True


def _service_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(checks.SERVICE_USER)
    except KeyError:
        return None


def _own(paths: list[Path]) -> None:
    """Give `paths` to the service user (when it exists and we are root)."""
    user = _service_user()
    if user is None or os.geteuid() != 0:
        return
    for path in paths:
        if path.exists():
            os.chown(path, user.pw_uid, user.pw_gid)


def systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        ["systemctl", *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )


def _load(config_path: Path) -> Config:
    config = load_config(config_path if config_path.exists() else None)
    checks.check_config(config)
    return config


_config_option = config_option_with(default=DEFAULT_CONFIG, show_default=True)


@click.group()
def ctl() -> None:
    """Administer an installed Berth (omnibus style): reconfigure, services, doctor."""


@ctl.command()
@_config_option
@click.option(
    "--systemd-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=SYSTEMD_DIR,
    show_default=True,
    help="Where the rendered units go.",
)
@click.option(
    "--no-backup",
    is_flag=True,
    help="Do not back up before applying migrations (backup.before_upgrade = false).",
)
def reconfigure(config_path: Path, systemd_dir: Path, no_backup: bool) -> None:
    """Validate the config, upgrade the database (backup, migrate), render the units and
    nginx, restart what changed."""
    from appliance.metadata.db import redact  # noqa: PLC0415
    from appliance.omnibus import upgrade  # noqa: PLC0415
    from appliance.version import version  # noqa: PLC0415

    try:
        config = _load(config_path)
        click.echo(f"config {config.source}: OK")
        logs = checks.log_dir(config)
        for path in (config.data_dir, logs):
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        _own([config.data_dir, logs])

        done = upgrade.upgrade_database(
            config,
            backup=config["backup.before_upgrade"] and not no_backup,
            echo=click.echo,
            owner=checks.SERVICE_USER if _service_user() is not None else None,
        )
        for line in upgrade.describe(done):
            click.echo(line)
        click.echo(f"database {redact(config.metadata_url)}: schema version {done.after}")
        if config.metadata_url.startswith("sqlite:"):
            db_file = config.data_dir / "berth.db"
            _own([p for p in config.data_dir.glob("berth.db*")] + [db_file])

        changed: dict[str, bool] = {}
        changed[UNIT] = _write_if_changed(systemd_dir / UNIT, render_unit(config, config_path))
        if config["nginx.enabled"]:
            prefix = nginx_prefix(config)
            prefix.mkdir(parents=True, exist_ok=True, mode=0o750)
            cert, key = checks.tls_paths(config)
            if not config["nginx.tls_cert"] and not cert.exists():
                make_self_signed(cert, key, config["nginx.server_name"])
                click.echo(f"made a self-signed certificate {cert} (for trials only)")
                _own([cert.parent])
            conf = _write_if_changed(prefix / "nginx.conf", render_nginx(config))
            unit_file = _write_if_changed(systemd_dir / NGINX_UNIT, render_nginx_unit(config))
            changed[NGINX_UNIT] = conf or unit_file
        elif (systemd_dir / NGINX_UNIT).exists():
            (systemd_dir / NGINX_UNIT).unlink()
            click.echo(f"removed {systemd_dir / NGINX_UNIT} (nginx.enabled is false)")
            if systemd_running():
                systemctl("disable", "--now", NGINX_UNIT)

        # The service must restart when the config itself changed, not only the units, and
        # when this is another Berth than the one that reconfigured last (an upgrade).
        state_path = config.data_dir / STATE_FILE
        digest = hashlib.sha256(config_path.read_bytes() if config_path.exists() else b"")
        old = json.loads(state_path.read_text()) if state_path.exists() else {}
        config_changed = old.get("config") != digest.hexdigest()
        upgraded = old.get("version") != version() or bool(done.applied)
        state_path.write_text(
            json.dumps({"config": digest.hexdigest(), "version": version()}) + "\n"
        )
    except BerthError as e:
        fail(e.message)
        return

    if not systemd_running():
        click.echo(NO_SYSTEMD.format(what="restart", config=config_path))
        return
    if any(changed.values()):
        systemctl("daemon-reload")
    for unit, unit_changed in changed.items():
        systemctl("enable", unit)
        if unit_changed or config_changed or (unit == UNIT and upgraded):
            result = systemctl("restart", unit)
            verb = "restarted"
        else:
            result = systemctl("start", unit)
            verb = "running"
        if result.returncode != 0:
            fail(f"{unit} failed to start: {result.stderr.strip()} (see `berth ctl tail`)")
        click.echo(f"{unit}: {verb}")


def _units(config: Config) -> list[str]:
    return [UNIT, NGINX_UNIT] if config["nginx.enabled"] else [UNIT]


def _service_command(action: str, config_path: Path) -> None:
    try:
        config = _load(config_path)
    except BerthError as e:
        fail(e.message)
        return
    if not systemd_running():
        click.echo(NO_SYSTEMD.format(what=action, config=config_path), err=True)
        sys.exit(1)
    for unit in _units(config):
        result = systemctl(action, unit)
        if result.returncode != 0:
            fail(f"systemctl {action} {unit}: {result.stderr.strip()}")
        click.echo(f"{unit}: {action} done")


@ctl.command()
@_config_option
def start(config_path: Path) -> None:
    """Start Berth (and its nginx front) with systemd."""
    _service_command("start", config_path)


@ctl.command()
@_config_option
def stop(config_path: Path) -> None:
    """Stop Berth (and its nginx front); in-flight requests finish first."""
    _service_command("stop", config_path)


@ctl.command()
@_config_option
def restart(config_path: Path) -> None:
    """Restart Berth (and its nginx front)."""
    _service_command("restart", config_path)


@ctl.command()
@_config_option
def status(config_path: Path) -> None:
    """Say whether each service runs and whether Berth answers on its address."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    try:
        config = _load(config_path)
    except BerthError as e:
        fail(e.message)
        return
    if systemd_running():
        for unit in _units(config):
            state = systemctl("is-active", unit).stdout.strip() or "unknown"
            click.echo(f"{unit}: {state}")
    else:
        click.echo("systemd is not running here (a chroot or a container): no unit states")
    host, port = config.listen
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    url = f"http://{host}:{port}/v2/"
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except OSError as e:
        click.echo(f"berth: not answering at {url} ({e})")
        sys.exit(3)
    click.echo(f"berth: answering at {url} (HTTP {code})")


@ctl.command()
@_config_option
@click.option("-n", "--lines", default=50, show_default=True, help="Lines to show first.")
def tail(config_path: Path, lines: int) -> None:
    """Follow Berth's (and nginx's) log files."""
    try:
        config = load_config(config_path if config_path.exists() else None)
    except BerthError as e:
        fail(e.message)
        return
    files = sorted(str(p) for p in checks.log_dir(config).glob("*.log"))
    if not files:
        fail(f"no log files in {checks.log_dir(config)} yet")
    tail_exe = shutil.which("tail") or "/usr/bin/tail"
    os.execv(tail_exe, [tail_exe, "-n", str(lines), "-F", *files])  # noqa: S606


@ctl.command()
@_config_option
@click.option(
    "--fix",
    is_flag=True,
    help="First close the data directory, storage, database, keys and logs (and everything "
    "below them) to other users; prints each mode it changes.",
)
def doctor(config_path: Path, fix: bool) -> None:
    """Check disk, permissions, privacy, database, storage, clock and certificates, with fix
    hints."""
    try:
        config = load_config(config_path if config_path.exists() else None)
    except BerthError as e:
        fail(e.message)
        return
    if fix:
        from appliance import filemodes  # noqa: PLC0415

        changed, failed = filemodes.tighten(filemodes.private_paths(config), deep=True)
        for change in changed:
            click.echo(f"tightened {change.line()}")
        for problem in failed:
            click.echo(f"cannot tighten {problem}", err=True)
        click.echo(f"doctor --fix: {len(changed)} mode(s) changed, {len(failed)} failed")
    worst = "ok"
    for finding in [
        *(checks.Finding("fail", "config", p) for p in checks.validate_files(config)),
        *checks.doctor(config),
    ]:
        click.echo(finding.line())
        if finding.status == "fail" or (finding.status == "warn" and worst == "ok"):
            worst = finding.status
    click.echo(f"doctor: {worst}")
    sys.exit({"ok": 0, "warn": 0, "fail": 1}[worst])

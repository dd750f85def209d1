"""What `berth config check`, `berth ctl reconfigure` and `berth ctl doctor` verify.

`validate_files` checks what a config refers to (certificates, keys, CA files): each problem is
one line naming the setting, the file and what is wrong. `doctor` runs the health checks of an
install, each with a hint on how to fix what it finds.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.config import Config
from appliance.errors import BerthError, ConfigError

if TYPE_CHECKING:  # imported where certificates are read: `berth serve` needs only log_dir
    from cryptography import x509

SERVICE_USER = "berth"
# Files a config may name: setting → what it must hold.
_PEM_FILES = {
    "nginx.tls_cert": "certificate",
    "nginx.tls_key": "private key",
    "ldap.ca_file": "certificate",
    "storage.s3.ca_file": "certificate",
}


def log_dir(config: Config) -> Path:
    value = config["log.dir"]
    return Path(value).expanduser().absolute() if value else config.data_dir / "log"


def tls_paths(config: Config) -> tuple[Path, Path]:
    """nginx's certificate and key: the configured ones, or the self-signed pair's place."""
    if config["nginx.tls_cert"]:
        return Path(config["nginx.tls_cert"]), Path(config["nginx.tls_key"])
    tls = config.data_dir / "tls"
    return tls / "self-signed.crt", tls / "self-signed.key"


def _read_certificates(path: Path) -> list[x509.Certificate]:
    from cryptography import x509  # noqa: PLC0415

    return x509.load_pem_x509_certificates(path.read_bytes())


def validate_files(config: Config) -> list[str]:
    """One line per problem with the files the config names (empty: all good)."""
    problems: list[str] = []
    if bool(config["nginx.tls_cert"]) != bool(config["nginx.tls_key"]):
        problems.append("nginx.tls_cert and nginx.tls_key must be set together")
    for key, kind in _PEM_FILES.items():
        value = config[key]
        if not value:
            continue
        path = Path(value)
        try:
            data = path.read_bytes()
        except OSError as e:
            problems.append(f"{key}: cannot read {kind} {path}: {e.strerror}")
            continue
        if kind == "certificate":
            from cryptography import x509  # noqa: PLC0415

            try:
                certs = x509.load_pem_x509_certificates(data)
            except ValueError:
                problems.append(f"{key}: {path} holds no PEM certificate")
                continue
            expiry = certs[0].not_valid_after_utc
            if key == "nginx.tls_cert" and expiry < datetime.datetime.now(datetime.UTC):
                problems.append(f"{key}: {path} expired on {expiry:%Y-%m-%d}")
        elif b"PRIVATE KEY-----" not in data:
            problems.append(f"{key}: {path} holds no PEM private key")
    if config.instances("oidc"):  # OpenID Connect providers: files readable, mapping parsed
        from appliance.auth.oidc import providers_from_config  # noqa: PLC0415

        try:
            providers_from_config(config)
        except ConfigError as e:
            problems.append(e.message)
    if config["backup.schedule"]:
        from appliance.runtime.cron import Cron  # noqa: PLC0415

        try:
            Cron(config["backup.schedule"])
        except ConfigError as e:
            problems.append(f"backup.schedule: {e.message}")
    return problems


def check_config(config: Config) -> None:
    """Raise ConfigError with the first problem `validate_files` finds."""
    problems = validate_files(config)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "; ".join(problems))


# -- doctor --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One check's outcome: 'ok', 'warn' or 'fail', what was seen, and how to fix it."""

    status: str
    check: str
    message: str
    hint: str = ""

    def line(self) -> str:
        text = f"[{self.status:>4}] {self.check}: {self.message}"
        return f"{text}\n       fix: {self.hint}" if self.hint and self.status != "ok" else text


MIN_FREE_BYTES = 5 * 2**30
MIN_FREE_FRACTION = 0.10
CERT_WARN_DAYS = 30


def check_disk(config: Config) -> Iterator[Finding]:
    for name, path in (("data", config.data_dir), ("logs", log_dir(config))):
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        usage = shutil.disk_usage(probe)
        free = usage.free / 2**30
        if usage.free < MIN_FREE_BYTES or usage.free < usage.total * MIN_FREE_FRACTION:
            yield Finding(
                "warn",
                "disk",
                f"{name} ({path}): only {free:.1f} GiB free of {usage.total / 2**30:.0f} GiB",
                "free space (`berth gc`, cleanup policies) or grow the file system",
            )
        else:
            yield Finding("ok", "disk", f"{name} ({path}): {free:.1f} GiB free")


def check_permissions(config: Config) -> Iterator[Finding]:
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        user = None
    for path in (config.data_dir, log_dir(config)):
        if not path.is_dir():
            yield Finding(
                "fail", "permissions", f"{path} does not exist", "run `berth ctl reconfigure`"
            )
            continue
        if user is not None and os.geteuid() == 0:
            st = path.stat()
            if st.st_uid != user.pw_uid:
                yield Finding(
                    "fail",
                    "permissions",
                    f"{path} is not owned by the {SERVICE_USER} user",
                    f"chown -R {SERVICE_USER}:{SERVICE_USER} {path}",
                )
                continue
        elif not os.access(path, os.W_OK):
            yield Finding("fail", "permissions", f"{path} is not writable", f"make {path} writable")
            continue
        yield Finding("ok", "permissions", f"{path} is writable by the service")


def check_private(config: Config) -> Iterator[Finding]:
    """Other users must not reach the data: the places that govern access (filemodes.py)."""
    from appliance import filemodes  # noqa: PLC0415

    found = filemodes.loose(filemodes.private_paths(config))
    for change in found:
        yield Finding(
            "warn",
            "privacy",
            f"{change.path} is open to other users ({change.before:04o})",
            "`berth ctl doctor --fix` (as the service user or root), or restart `berth serve`",
        )
    if not found:
        yield Finding("ok", "privacy", "the data, keys and logs are closed to other users")


def check_database(config: Config) -> Iterator[Finding]:
    from appliance.metadata.db import Options, open_database, redact  # noqa: PLC0415

    url = config.metadata_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite://")).exists():
        # Opening it would create it: a doctor looks, it does not make things.
        yield Finding(
            "fail", "database", f"{redact(url)} does not exist yet", "run `berth ctl reconfigure`"
        )
        return
    try:
        db = open_database(url, Options(readers=1, pool_size=1))
        try:
            state = db.schema_status()
        finally:
            db.close()
    except BerthError as e:
        yield Finding(
            "fail", "database", f"{redact(url)}: {e.message}", "check metadata.url and the server"
        )
        return
    if state.too_new:
        yield Finding(
            "fail",
            "database",
            f"schema {state.current} is newer than this Berth ({state.latest})",
            "install the Berth version that wrote it",
        )
    elif state.pending:
        yield Finding(
            "warn",
            "database",
            f"{len(state.pending)} migration(s) pending",
            "run `berth ctl reconfigure` (or `berth migrate`)",
        )
    else:
        yield Finding("ok", "database", f"{redact(url)} reachable, schema {state.current}")


def check_storage(config: Config) -> Iterator[Finding]:
    import trio  # noqa: PLC0415

    from appliance.storage import open_store  # noqa: PLC0415

    if config["storage.backend"] == "filesystem" and not config.data_dir.exists():
        yield Finding(
            "fail", "storage", f"{config.data_dir} does not exist", "run `berth ctl reconfigure`"
        )
        return
    try:
        store = open_store(config)
        trio.run(store.check)
    except BerthError as e:
        yield Finding("fail", "storage", e.message, "check the [storage] settings and access")
        return
    where = {
        "filesystem": str(config.storage_root),
        "s3": f"bucket {config['storage.s3.bucket']}",
        "azure": f"container {config['storage.azure.container']}",
    }.get(config["storage.backend"], "")
    yield Finding("ok", "storage", f"{config['storage.backend']} store at {where} usable")


def check_hosts(config: Config, now: float | None = None) -> Iterator[Finding]:
    """The hosts serving this registry (runtime/hosts.py) must agree with this one: the same server
    secret, schema version and blob store. Another Berth version is a warning (an upgrade
    under way); a host not seen for a minute is listed as gone."""
    from appliance.auth.secrets import ServerSecret  # noqa: PLC0415
    from appliance.metadata.db import Options, open_database  # noqa: PLC0415
    from appliance.metadata.hosts import list_hosts  # noqa: PLC0415
    from appliance.runtime.hosts import storage_of  # noqa: PLC0415

    url = config.metadata_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite://")).exists():
        return  # the database check says so
    db = open_database(url, Options(readers=1, pool_size=1))
    try:
        schema = db.schema_status().current
        hosts = db.run_sync_read(list_hosts)
    finally:
        db.close()
    if not hosts:
        yield Finding("ok", "hosts", "no host has registered yet (none has served)")
        return
    try:
        fingerprint = ServerSecret.load(config.secret_path).fingerprint
    except BerthError as e:
        yield Finding("fail", "hosts", e.message, "every host must read the same secret file")
        return
    moment = now or time.time()
    here = config.host_name
    serving = [h for h in hosts if h.serving(moment)]
    for host in hosts:
        if not host.serving(moment):
            ago = (moment - host.last_seen) / 60
            yield Finding("ok", "hosts", f"{host.name}: gone (last seen {ago:.0f} min ago)")
            continue
        problems = []
        if host.secret_fingerprint != fingerprint:
            problems.append(
                f"another server secret (fingerprint {host.secret_fingerprint}, this host's "
                f"{fingerprint})"
            )
        if host.schema_version != schema:
            problems.append(f"schema version {host.schema_version} (the database's: {schema})")
        if host.storage != storage_of(config):
            problems.append(f"another blob store ({host.storage})")
        if problems:
            yield Finding(
                "fail",
                "hosts",
                f"{host.name} ({host.address}) disagrees with {here}: " + "; ".join(problems),
                "give every host the same server.secret_file, [storage] settings and Berth "
                "version, then restart it",
            )
        elif host.version != __version__:
            yield Finding(
                "warn",
                "hosts",
                f"{host.name} ({host.address}) runs Berth {host.version}, this host {__version__}",
                "finish the upgrade: every host should run the same version",
            )
        else:
            yield Finding("ok", "hosts", f"{host.name} ({host.address}) agrees with {here}")
    if len(serving) > 1 and config["storage.backend"] == "filesystem":
        yield Finding(
            "warn",
            "hosts",
            f"{len(serving)} hosts serve with a filesystem blob store",
            "several hosts need one S3 bucket (or a filesystem every host mounts)",
        )


def check_clock(config: Config) -> Iterator[Finding]:
    from appliance.omnibus.buildinfo import build_info  # noqa: PLC0415

    built = build_info().get("date", "")
    now = datetime.datetime.now(datetime.UTC)
    if built and now.strftime("%Y-%m-%dT%H:%M:%SZ") < built:
        yield Finding(
            "fail",
            "clock",
            f"the clock says {now:%Y-%m-%d %H:%M} UTC, before this Berth was built ({built})",
            "set the time and enable NTP (`timedatectl set-ntp true`)",
        )
        return
    timedatectl = shutil.which("timedatectl")
    if timedatectl and Path("/run/systemd/system").is_dir():
        out = subprocess.run(  # noqa: S603
            [timedatectl, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if out != "yes":
            yield Finding(
                "warn",
                "clock",
                "the clock is not synchronised (NTP); tokens and TLS need the right time",
                "`timedatectl set-ntp true` (systemd-timesyncd or chrony)",
            )
            return
        yield Finding("ok", "clock", f"{now:%Y-%m-%d %H:%M:%S} UTC, synchronised")
        return
    yield Finding("ok", "clock", f"{now:%Y-%m-%d %H:%M:%S} UTC (synchronisation not checked)")


def check_certificates(config: Config, now: float | None = None) -> Iterator[Finding]:
    moment = datetime.datetime.fromtimestamp(now or time.time(), datetime.UTC)
    names = [k for k in ("nginx.tls_cert", "ldap.ca_file", "storage.s3.ca_file") if config[k]]
    paths = [(k, Path(config[k])) for k in names]
    if config["nginx.enabled"] and not config["nginx.tls_cert"]:
        paths.append(("nginx (self-signed)", tls_paths(config)[0]))
    if not paths:
        yield Finding("ok", "certificates", "none configured")
        return
    for key, path in paths:
        try:
            cert = _read_certificates(path)[0]
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) else "no PEM certificate"
            yield Finding("fail", "certificates", f"{key}: {path}: {reason}", f"fix {key}")
            continue
        left = cert.not_valid_after_utc - moment
        if left.total_seconds() < 0:
            yield Finding(
                "fail",
                "certificates",
                f"{key}: {path} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                "renew it, then `berth ctl reconfigure`",
            )
        elif left.days < CERT_WARN_DAYS:
            yield Finding(
                "warn",
                "certificates",
                f"{key}: {path} expires in {left.days} days",
                "renew it, then `berth ctl reconfigure`",
            )
        else:
            yield Finding("ok", "certificates", f"{key}: valid for {left.days} more days")


DOCTOR_CHECKS: tuple[Callable[[Config], Iterator[Finding]], ...] = (
    check_disk,
    check_permissions,
    check_private,
    check_database,
    check_storage,
    check_hosts,
    check_clock,
    check_certificates,
)


def doctor(config: Config) -> Iterator[Finding]:
    for check in DOCTOR_CHECKS:
        try:
            yield from check(config)
        except Exception as e:  # a broken check is a finding, not a crash
            yield Finding("fail", check.__name__.removeprefix("check_"), f"check failed: {e}")

"""A real OpenLDAP `slapd` for tests (pytest plugin, listed in tests/conftest.py).

One server per session: a `slapd.conf` in a temporary directory (core, cosine, inetorgperson
and nis schemas; mdb; the memberof overlay; an EC P-256 certificate for ldaps and StartTLS),
run in the foreground on two free loopback ports and stopped by its PID. Users and groups are
added over LDAP after start (slapadd would skip the memberof overlay). Missing slapd skips
locally and fails under CI=true.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest

from appliance.omnibus.ctl import make_self_signed
from tests.support.servers import free_port, require_binary

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "slapd-root-secret"
SERVICE_DN = f"cn=berth,{SUFFIX}"
SERVICE_PASSWORD = "berth-service-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def _certificate(tmp: Path) -> tuple[Path, Path]:
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    make_self_signed(cert_path, key_path, "127.0.0.1")
    return cert_path, key_path


@dataclass
class Slapd:
    proc: subprocess.Popen[bytes]
    port: int
    tls_port: int
    ca_file: Path

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def admin(self) -> ldap3.Connection:
        server = ldap3.Server(self.url, get_info=ldap3.NONE)
        return ldap3.Connection(server, ROOT_DN, ROOT_PASSWORD, auto_bind=True)

    def add_user(self, uid: str, password: str, mail: str | None = None) -> str:
        dn = f"uid={uid},{PEOPLE}"
        conn = self.admin()
        attrs = {"cn": uid.title(), "sn": uid, "uid": uid, "userPassword": password}
        if mail:
            attrs["mail"] = mail
        assert conn.add(dn, ["inetOrgPerson"], attrs), conn.result
        conn.unbind()
        return dn

    def delete(self, dn: str) -> None:
        conn = self.admin()
        conn.delete(dn)
        conn.unbind()

    def set_group(self, cn: str, member_dns: list[str]) -> None:
        """Create or replace group `cn` with exactly these members."""
        dn = f"cn={cn},{GROUPS}"
        conn = self.admin()
        conn.delete(dn)
        members = member_dns or [ROOT_DN]  # groupOfNames needs one member
        assert conn.add(dn, ["groupOfNames"], {"cn": cn, "member": members}), conn.result
        conn.unbind()

    def settings(self, **overrides: str) -> dict[str, str]:
        """`BERTH_LDAP_*`-style settings (as config keys) pointing Berth at this server."""
        values = {
            "ldap.url": self.url,
            "ldap.bind_dn": SERVICE_DN,
            "ldap.bind_password": SERVICE_PASSWORD,
            "ldap.user_base": PEOPLE,
            "ldap.group_base": GROUPS,
            "ldap.timeout": "3",
        }
        values.update(overrides)
        return values


def start_slapd(tmp: Path) -> Slapd:
    exe = shutil.which("slapd") or ("/usr/sbin/slapd" if Path("/usr/sbin/slapd").exists() else None)
    if exe is None:
        require_binary("slapd", "slapd")
        raise AssertionError("unreachable")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "db").mkdir()
    cert, key = _certificate(tmp)
    port, tls_port = free_port(), free_port()
    conf = tmp / "slapd.conf"
    conf.write_text(
        "\n".join(
            [
                *(
                    f"include /etc/ldap/schema/{s}.schema"
                    for s in ("core", "cosine", "inetorgperson", "nis")
                ),
                f"pidfile {tmp}/slapd.pid",
                "modulepath /usr/lib/ldap",
                "moduleload back_mdb",
                "moduleload memberof",
                f"TLSCertificateFile {cert}",
                f"TLSCertificateKeyFile {key}",
                "database mdb",
                f'suffix "{SUFFIX}"',
                f'rootdn "{ROOT_DN}"',
                f"rootpw {ROOT_PASSWORD}",
                f"directory {tmp}/db",
                "overlay memberof",
                "memberof-group-oc groupOfNames",
                f'access to attrs=userPassword by dn.exact="{ROOT_DN}" write '
                "by anonymous auth by * none",
                "access to * by * read",
                "",
            ]
        )
    )
    subprocess.run(["slaptest", "-u", "-f", str(conf)], check=True, capture_output=True)
    with (tmp / "slapd.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                exe,
                "-f",
                str(conf),
                "-h",
                f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/",
                "-d",
                "0",
            ],
            stdout=log,
            stderr=log,
        )
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp / "slapd.log").read_text())
        time.sleep(0.02)
    server = Slapd(proc, port, tls_port, cert)
    conn = server.admin()
    conn.add(SUFFIX, ["dcObject", "organization"], {"dc": "example", "o": "Example"})
    conn.add(PEOPLE, ["organizationalUnit"], {"ou": "people"})
    conn.add(GROUPS, ["organizationalUnit"], {"ou": "groups"})
    conn.add(
        SERVICE_DN,
        ["inetOrgPerson"],
        {"cn": "berth", "sn": "berth", "userPassword": SERVICE_PASSWORD},
    )
    conn.unbind()
    return server


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A running slapd for the session (users and groups: add them per test)."""
    if shutil.which("slapd") is None and not Path("/usr/sbin/slapd").exists():
        require_binary("slapd", "slapd")
    server = start_slapd(tmp_path_factory.mktemp("slapd"))
    try:
        yield server
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()

"""A real SAML 2.0 identity provider for tests: SimpleSAMLphp under PHP's built-in server.

Everything lives in a temporary directory: `config.php`, `authsources.php` (an
`exampleauth:UserPass` source with the users given), the hosted IdP's metadata with a fresh RSA
key and certificate (responses and assertions signed, rsa-sha256, NameID emailAddress from
`mail`), and the service providers' metadata, read from an XML file that `trust_sp()` writes
(Berth's `/saml/metadata`). No Apache: `php -S 127.0.0.1:<port> -t <simplesamlphp>/www`.
The process is stopped by its PID.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port, require_binary, unavailable, wait_http

SSP_ROOT = Path("/usr/share/simplesamlphp")


@dataclass(frozen=True)
class SamlUser:
    username: str
    password: str
    mail: str
    groups: tuple[str, ...] = ()
    display_name: str = ""


@dataclass
class SimpleSamlPhp:
    proc: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return self.url + "/saml2/idp/metadata.php"

    def trust_sp(self, metadata_xml: str) -> None:
        """Accept the service provider described by this metadata (Berth's /saml/metadata)."""
        (self.root / "sp-metadata.xml").write_text(metadata_xml)

    def trust_sp_from(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as r:
            self.trust_sp(r.read().decode())

    def log(self) -> str:
        path = self.root / "php.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _php_array(value: Any) -> str:
    """A PHP literal for a JSON-like value."""
    if isinstance(value, dict):
        items = ", ".join(f"{_php_array(k)} => {_php_array(v)}" for k, v in value.items())
        return f"[{items}]"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_php_array(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _key_and_certificate(root: Path) -> None:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "berth-test-idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (root / "cert" / "idp.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (root / "cert" / "idp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def start_simplesamlphp(tmp: Path, users: list[SamlUser]) -> SimpleSamlPhp:
    php = require_binary("php", "php-cli")
    if not (SSP_ROOT / "www" / "saml2" / "idp" / "SSOService.php").exists():
        unavailable("SimpleSAMLphp not found: install the Debian package 'simplesamlphp'")
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    for sub in ("cert", "log", "data", "tmp", "metadata", "sessions"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    _key_and_certificate(tmp)
    config = {
        "baseurlpath": base,
        "certdir": str(tmp / "cert") + "/",
        "loggingdir": str(tmp / "log") + "/",
        "datadir": str(tmp / "data") + "/",
        "tempdir": str(tmp / "tmp"),
        "metadatadir": str(tmp / "metadata") + "/",
        "secretsalt": "berth-test-salt",
        "auth.adminpassword": "berth-test-admin",
        "admin.protectindexpage": False,
        "admin.protectmetadata": False,
        "technicalcontact_name": "Berth tests",
        "technicalcontact_email": "tests@example.org",
        "timezone": "UTC",
        "logging.level": 6,
        "logging.handler": "file",
        "logging.logfile": "simplesamlphp.log",
        "enable.saml20-idp": True,
        "module.enable": {"exampleauth": True, "core": True, "saml": True, "admin": True},
        "session.cookie.secure": False,
        "session.phpsession.savepath": str(tmp / "sessions"),
        "store.type": "phpsession",
        "metadata.sources": [
            {"type": "flatfile"},
            {"type": "xml", "file": str(tmp / "sp-metadata.xml")},
        ],
        "language.available": ["en"],
    }
    (tmp / "config.php").write_text("<?php\n$config = " + _php_array(config) + ";\n")
    source: dict[str, Any] = {"0": "exampleauth:UserPass"}
    for user in users:
        source[f"{user.username}:{user.password}"] = {
            "uid": [user.username],
            "mail": [user.mail],
            "cn": [user.display_name or user.username.title()],
            "groups": list(user.groups),
        }
    sources = {"admin": ["core:AdminPassword"], "berth-users": source}
    text = _php_array(sources).replace("'0' => ", "")
    (tmp / "authsources.php").write_text("<?php\n$config = " + text + ";\n")
    idp = {
        "host": "__DEFAULT__",
        "privatekey": "idp.key",
        "certificate": "idp.crt",
        "auth": "berth-users",
        "NameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        "saml20.sign.response": True,
        "saml20.sign.assertion": True,
        "signature.algorithm": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        "attributes.NameFormat": "urn:oasis:names:tc:SAML:2.0:attrname-format:basic",
        "authproc": {
            "10": {
                "class": "saml:AttributeNameID",
                "attribute": "mail",
                "Format": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
            }
        },
    }
    (tmp / "metadata" / "saml20-idp-hosted.php").write_text(
        "<?php\n$metadata['__DYNAMIC:1__'] = " + _php_array(idp) + ";\n"
    )
    (tmp / "sp-metadata.xml").write_text(
        '<?xml version="1.0"?>\n<EntitiesDescriptor '
        'xmlns="urn:oasis:names:tc:SAML:2.0:metadata"/>\n'
    )
    env = {**os.environ, "SIMPLESAMLPHP_CONFIG_DIR": str(tmp)}
    log = (tmp / "php.log").open("wb")
    proc = subprocess.Popen(
        [php, "-S", f"127.0.0.1:{port}", "-t", str(SSP_ROOT / "www")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp,
    )
    log.close()
    idp_server = SimpleSamlPhp(proc, port, tmp)
    try:
        wait_http(idp_server.metadata_url, timeout=20, ok=(200,))
    except RuntimeError as e:
        idp_server.stop()
        raise RuntimeError(f"SimpleSAMLphp did not start: {e}\n{idp_server.log()}") from e
    return idp_server


SAML_USERS = [
    SamlUser("sally", "sally-password", "sally@example.org", ("registry-devs",), "Sally Saml"),
]


@pytest.fixture(scope="session")
def simplesamlphp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleSamlPhp]:
    """A SimpleSAMLphp IdP with the users of `SAML_USERS` (group `registry-devs`)."""
    server = start_simplesamlphp(tmp_path_factory.mktemp("simplesamlphp"), SAML_USERS)
    try:
        yield server
    finally:
        server.stop()


__all__ = ["SAML_USERS", "SamlUser", "SimpleSamlPhp", "start_simplesamlphp"]

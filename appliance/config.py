"""Typed settings: one table of keys, defaults and help, read from TOML and `BERTH_*` variables.

The table (`SETTINGS`) is the only place a setting is declared. The CLI, the documentation test
and the environment-variable mapping all read it. A key's environment variable is `BERTH_` plus
its dotted path with dots turned into underscores, upper-cased (`storage.root` →
`BERTH_STORAGE_ROOT`); variables are resolved against the table, so keys that contain
underscores stay unambiguous.

Precedence, lowest first: embedded defaults, the TOML file, `BERTH_*` variables, command-line
options.

A few settings come once per named instance (one table per OpenID Connect provider): their key
holds the slot `<name>` (`oidc.<name>.issuer`), the TOML file has one table per instance
(`[oidc.corp]`), and the variable names the instance in the slot's place
(`BERTH_OIDC_CORP_ISSUER`). Instance names are lowercase letters and digits, so the variable
stays unambiguous. An instance exists when any of its keys is set; its other keys take their
defaults. `Config.instances("oidc")` lists them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

ENV_PREFIX = "BERTH_"
NAME_SLOT = "<name>"  # the instance slot of a templated key (`oidc.<name>.issuer`)
INSTANCE_NAME = re.compile(r"[a-z0-9]{1,32}")


@dataclass(frozen=True)
class Setting:
    """One configuration key: its dotted path, type, default, a line of help and, for a word
    setting, the words it allows (matched without regard to case; the value is kept lowercase)."""

    key: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def secret(self) -> bool:
        """A value that must never be printed (`berth config show` masks it)."""
        return self.key in SECRET_KEYS

    @property
    def templated(self) -> bool:
        """A key repeated once per named instance (its key holds `<name>`)."""
        return NAME_SLOT in self.key

    def for_instance(self, name: str) -> str:
        """The concrete key of this templated setting for instance `name`."""
        return self.key.replace(NAME_SLOT, name)


SETTINGS: tuple[Setting, ...] = (
    Setting("server.listen", str, "127.0.0.1:5000", "Address and port to listen on (HOST:PORT)."),
    Setting(
        "server.data_dir",
        str,
        "./berth-data",
        "Directory for the embedded database and the filesystem blob store.",
    ),
    Setting(
        "server.shutdown_timeout",
        float,
        30.0,
        "Seconds to let in-flight requests finish after SIGTERM/SIGINT.",
    ),
    Setting(
        "server.idle_timeout",
        float,
        60.0,
        "Seconds a connection may stay open with no request, or take to send a request's "
        "headers, before it is closed.",
    ),
    Setting(
        "server.read_timeout",
        float,
        60.0,
        "Seconds a request may send no byte of its body before it is cut off (408); a slow "
        "upload that keeps sending is never cut.",
    ),
    Setting(
        "server.min_body_rate",
        float,
        256.0,
        "Bytes a second a request body must average over each server.read_timeout window, "
        "or it is cut off (408; 0: no minimum).",
    ),
    Setting(
        "server.max_connections",
        int,
        1000,
        "Open connections each serving process accepts (a host takes server.workers times "
        "as many); beyond that a connection is answered 503 UNAVAILABLE and closed "
        "(0: no limit).",
    ),
    Setting(
        "server.workers",
        str,
        "auto",
        "Serving processes Berth runs and supervises on one listening socket: a number, or "
        "'auto' for one per CPU this process may run on (at most 8).",
    ),
    Setting(
        "server.public_url",
        str,
        "",
        "External URL of the registry when behind a proxy (used in Location headers).",
    ),
    Setting(
        "server.secret_file",
        str,
        "",
        "File holding the server secret (at least 32 random bytes, not readable by other "
        "users) that every host of a registry must share; empty: <data_dir>/secret, made on "
        "first start.",
    ),
    Setting(
        "server.host_name",
        str,
        "",
        "Name this host registers under in the database (doctor, /-/ready, metrics); unique "
        "per host; empty: the machine's host name.",
    ),
    Setting(
        "server.trusted_proxies",
        str,
        "127.0.0.1/32, ::1/128",
        "Addresses (CIDR, comma-separated) of reverse proxies whose X-Forwarded-For names the "
        "client: the audit log, access log and rate limits then see the real client address.",
    ),
    Setting(
        "storage.backend",
        str,
        "filesystem",
        "Blob store backend: 'filesystem', 's3' or 'azure'.",
        choices=("filesystem", "s3", "azure"),
    ),
    Setting(
        "storage.root",
        str,
        "",
        "Root directory of the filesystem blob store (default: <data_dir>/storage).",
    ),
    Setting(
        "storage.s3.endpoint",
        str,
        "",
        "S3 endpoint URL, e.g. http://127.0.0.1:8333 (empty: AWS S3 in storage.s3.region).",
    ),
    Setting("storage.s3.region", str, "us-east-1", "S3 region (signing and bucket creation)."),
    Setting("storage.s3.bucket", str, "", "S3 bucket holding the blobs (required for s3)."),
    Setting("storage.s3.prefix", str, "", "Key prefix inside the bucket (e.g. 'berth/')."),
    Setting(
        "storage.s3.access_key",
        str,
        "",
        "S3 access key id (empty with secret_key empty: the AWS default credential chain).",
    ),
    Setting("storage.s3.access_key_file", str, "", "File holding the S3 access key id instead."),
    Setting("storage.s3.secret_key", str, "", "S3 secret access key."),
    Setting(
        "storage.s3.secret_key_file",
        str,
        "",
        "File holding the S3 secret access key instead (keeps it out of the config).",
    ),
    Setting(
        "storage.s3.addressing",
        str,
        "path",
        "Bucket addressing: 'path' (endpoint/bucket/key), 'virtual' (bucket.endpoint/key) "
        "or 'auto'.",
        choices=("path", "virtual", "auto"),
    ),
    Setting("storage.s3.tls_verify", bool, True, "Verify the S3 endpoint's TLS certificate."),
    Setting(
        "storage.s3.ca_file",
        str,
        "",
        "CA bundle (PEM) to verify the S3 endpoint with (default: the certifi bundle).",
    ),
    Setting(
        "storage.s3.create_bucket",
        bool,
        False,
        "Create the bucket at start-up when it does not exist.",
    ),
    Setting(
        "storage.s3.redirect",
        bool,
        False,
        "Answer blob downloads with a redirect to a presigned S3 URL instead of relaying "
        "the bytes.",
    ),
    Setting(
        "storage.s3.part_size",
        int,
        16 * 1024 * 1024,
        "Bytes per multipart-upload part (5 MiB to 5 GiB); up to 4 parts per upload are "
        "held in memory.",
    ),
    Setting(
        "storage.s3.max_attempts",
        int,
        5,
        "Attempts per S3 request: 5xx, SlowDown and connection errors are retried with "
        "backoff and jitter.",
    ),
    Setting(
        "storage.s3.batch_delete",
        bool,
        True,
        "Delete many objects per request (DeleteObjects); off for services without it, such "
        "as Google Cloud Storage (a NotImplemented answer also turns it off by itself).",
    ),
    Setting(
        "storage.azure.account_name",
        str,
        "",
        "Azure storage account name (required for azure).",
    ),
    Setting("storage.azure.account_key", str, "", "Azure storage account key (shared key)."),
    Setting(
        "storage.azure.account_key_file",
        str,
        "",
        "File holding the Azure account key instead (keeps it out of the config).",
    ),
    Setting(
        "storage.azure.sas_token_file",
        str,
        "",
        "File holding a SAS token (read, add, create, write, delete, list on the container) "
        "to use instead of the account key.",
    ),
    Setting(
        "storage.azure.container",
        str,
        "",
        "Azure container holding the blobs (required for azure).",
    ),
    Setting("storage.azure.prefix", str, "", "Blob name prefix inside the container."),
    Setting(
        "storage.azure.endpoint",
        str,
        "",
        "Blob service URL of the account, e.g. http://127.0.0.1:10000/devstoreaccount1 for "
        "Azurite, or an Azure Stack or sovereign cloud's (empty: "
        "https://<account_name>.blob.core.windows.net).",
    ),
    Setting(
        "storage.azure.create_container",
        bool,
        False,
        "Create the container at start-up when it does not exist.",
    ),
    Setting(
        "storage.azure.redirect",
        bool,
        False,
        "Answer blob downloads with a redirect to a short-lived read-only SAS URL instead of "
        "relaying the bytes (needs the account key).",
    ),
    Setting(
        "storage.azure.block_size",
        int,
        16 * 1024 * 1024,
        "Bytes per staged block (1 MiB to 4000 MiB); up to 4 blocks per upload are held in memory.",
    ),
    Setting(
        "storage.azure.max_attempts",
        int,
        5,
        "Attempts per Azure request: 5xx, ServerBusy and connection errors are retried with "
        "backoff and jitter.",
    ),
    Setting(
        "metadata.url",
        str,
        "",
        "Metadata database URL: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: sqlite:///<data_dir>/berth.db).",
    ),
    Setting(
        "metadata.readers",
        int,
        4,
        "SQLite: number of read connections kept open to the metadata database.",
    ),
    Setting(
        "metadata.auto_migrate",
        str,
        "auto",
        "Apply pending schema migrations when serving: auto (SQLite yes, PostgreSQL no), "
        "yes or no.",
        choices=("auto", "yes", "no", "true", "false", "on", "off", "1", "0"),
    ),
    Setting(
        "metadata.pool_size",
        int,
        8,
        "PostgreSQL: most connections each process keeps in its pool.",
    ),
    Setting(
        "metadata.pool_timeout",
        float,
        10.0,
        "PostgreSQL: seconds to wait for a working connection before answering 503.",
    ),
    Setting(
        "metadata.statement_timeout",
        float,
        30.0,
        "PostgreSQL: seconds any one SQL statement may run.",
    ),
    Setting(
        "jobs.lease",
        float,
        15.0,
        "Seconds a background-job leader that stops answering keeps leading: its lease "
        "(SQLite), or how long PostgreSQL waits before ending a silent leader's session.",
    ),
    Setting(
        "uploads.expiry",
        float,
        86400.0,
        "Seconds an upload session may stay idle before it and its bytes are removed.",
    ),
    Setting(
        "uploads.max_open_per_account",
        int,
        64,
        "Upload sessions one user or robot may hold open at once; more get 429 "
        "TOOMANYREQUESTS until some complete, are cancelled or expire (0: no limit).",
    ),
    Setting(
        "uploads.purge_interval",
        float,
        600.0,
        "Seconds between sweeps for expired upload sessions.",
    ),
    Setting(
        "manifests.max_size",
        int,
        4 * 1024 * 1024,
        "Largest manifest accepted, in bytes.",
    ),
    Setting(
        "gc.delay",
        float,
        86400.0,
        "Seconds a blob or manifest that lost its last reference waits before the collector "
        "may remove it (0 for tests; pushes in flight need it).",
    ),
    Setting("gc.interval", float, 60.0, "Seconds between runs of the garbage collector."),
    Setting("gc.batch", int, 500, "Queue rows the collector takes per transaction."),
    Setting(
        "gc.untagged_age",
        float,
        604800.0,
        "Seconds an untagged manifest (no tag, no index listing it) is kept before the "
        "collector removes it (negative: keep untagged manifests).",
    ),
    Setting(
        "gc.referrers",
        bool,
        True,
        "Remove referrers (signatures, SBOMs, attestations) once their subject is gone.",
    ),
    Setting(
        "lifecycle.policy_interval",
        float,
        86400.0,
        "Seconds between runs of the cleanup policies (0: only when run by hand).",
    ),
    Setting(
        "lifecycle.rules_ttl",
        float,
        5.0,
        "Deprecated and ignored: immutable-tag rules and quotas changed anywhere now apply to "
        "the next push on every process (accepted so older config files still load).",
    ),
    Setting(
        "proxy.upstreams",
        str,
        "",
        "Proxy namespaces (pull-through cache): NAMESPACE=URL items separated by ';' "
        "(e.g. hub=https://registry-1.docker.io).",
    ),
    Setting(
        "proxy.credentials",
        str,
        "",
        "Upstream credentials: NAMESPACE=USER:PASSWORD items separated by ';' or new lines.",
    ),
    Setting(
        "proxy.credentials_file",
        str,
        "",
        "File holding the upstream credentials instead, one NAMESPACE=USER:PASSWORD per line.",
    ),
    Setting(
        "proxy.library",
        str,
        "",
        "Proxy namespaces (separated by ',') whose one-component names are library/NAME "
        "upstream; automatic for Docker Hub.",
    ),
    Setting(
        "proxy.tag_ttl",
        float,
        300.0,
        "Seconds a cached tag is served before it is re-validated upstream (a HEAD).",
    ),
    Setting(
        "proxy.timeout",
        float,
        30.0,
        "Seconds to wait for an upstream registry (connect, each read).",
    ),
    Setting(
        "proxy.ca_file",
        str,
        "",
        "CA bundle (PEM) to verify upstream registries with (default: the certifi bundle).",
    ),
    Setting("log.level", str, "info", "Log level: debug, info, warning, error."),
    Setting(
        "log.dir",
        str,
        "",
        "Directory of the service's log files, read by `berth ctl tail` (default: <data_dir>/log).",
    ),
    Setting(
        "log.format",
        str,
        "auto",
        "Log line format: text, json, or auto (text on a terminal, JSON lines otherwise).",
        choices=("auto", "text", "json"),
    ),
    Setting("log.access", bool, True, "Write one access-log line per HTTP request."),
    Setting(
        "metrics.enabled",
        bool,
        True,
        "Count requests and serve Prometheus metrics at /metrics (text format).",
    ),
    Setting(
        "metrics.token",
        str,
        "",
        "Bearer token a scraper must send for /metrics (empty: /metrics is open).",
    ),
    Setting(
        "audit.retention_days",
        float,
        365.0,
        "Days audit events are kept; older ones are pruned daily (0: keep forever).",
    ),
    Setting(
        "ratelimit.pull_rate",
        float,
        100.0,
        "Pull requests a second allowed per user and per client address (0: unlimited).",
    ),
    Setting("ratelimit.pull_burst", float, 1000.0, "Pull requests allowed in a burst."),
    Setting(
        "ratelimit.push_rate",
        float,
        50.0,
        "Push requests (upload, manifest PUT, delete) a second per user and per address "
        "(0: unlimited).",
    ),
    Setting("ratelimit.push_burst", float, 1000.0, "Push requests allowed in a burst."),
    Setting(
        "ratelimit.signin_rate",
        float,
        10.0,
        "Sign-ins (token endpoint, console) a second per user and per address that need a "
        "password check (0: unlimited); a token request with credentials the process has "
        "checked already is not counted.",
    ),
    Setting("ratelimit.signin_burst", float, 100.0, "Sign-ins allowed in a burst."),
    Setting("ratelimit.exempt_admins", bool, True, "Instance admins are not rate limited."),
    Setting(
        "ratelimit.sync_interval",
        float,
        1.0,
        "Seconds between the messages in which hosts on one PostgreSQL tell each other what "
        "their rate limits and sign-in lockouts counted (0: each host counts alone).",
    ),
    Setting("ratelimit.exempt_robots", bool, False, "Robot accounts are not rate limited."),
    Setting(
        "webhooks.endpoints",
        str,
        "",
        "Instance-wide webhook URLs (separated by spaces or commas) that get every event.",
    ),
    Setting(
        "webhooks.secret",
        str,
        "",
        "Key signing instance-wide webhook deliveries (HMAC-SHA-256 in X-Berth-Signature-256).",
    ),
    Setting(
        "webhooks.actions",
        str,
        "push,pull,delete,vulnerability,backup",
        "Events sent to the instance-wide endpoints: some of push, pull, delete, "
        "vulnerability (a new critical finding), backup (a backup failed).",
    ),
    Setting(
        "webhooks.allow_private_targets",
        bool,
        False,
        "Let namespace webhooks call loopback, private and link-local addresses (instance-wide "
        "endpoints always may).",
    ),
    Setting("webhooks.timeout", float, 5.0, "Seconds to wait for a webhook endpoint's answer."),
    Setting("webhooks.interval", float, 1.0, "Seconds between webhook delivery passes."),
    Setting("webhooks.batch", int, 50, "Most events sent in one envelope."),
    Setting(
        "webhooks.retention_days",
        float,
        7.0,
        "Days undelivered events and the delivery log are kept (an endpoint down for longer "
        "misses the oldest events).",
    ),
    Setting(
        "nginx.enabled",
        bool,
        False,
        "Run nginx in front of Berth (rendered by `berth ctl reconfigure`): TLS, HTTP to HTTPS "
        "redirect, blob downloads sent by nginx.",
    ),
    Setting("nginx.listen", str, "0.0.0.0:443", "Address and port nginx serves HTTPS on."),
    Setting(
        "nginx.redirect_listen",
        str,
        "0.0.0.0:80",
        "Address and port where nginx redirects HTTP to HTTPS (empty: no redirect).",
    ),
    Setting("nginx.server_name", str, "_", "Host name(s) nginx answers to (server_name)."),
    Setting(
        "nginx.upstreams",
        str,
        "",
        "Berth hosts (HOST:PORT, comma-separated) nginx balances over, with passive health "
        "checks; empty: this host's own server.listen.",
    ),
    Setting(
        "nginx.tls_cert",
        str,
        "",
        "TLS certificate chain (PEM) nginx presents (empty: a self-signed one in "
        "<data_dir>/tls, for trials).",
    ),
    Setting("nginx.tls_key", str, "", "Private key (PEM) of nginx.tls_cert."),
    Setting(
        "admin.password",
        str,
        "",
        "Password of the first admin account, used only when a new install creates it "
        "(default: generated, written to <data_dir>/initial-admin-password).",
    ),
    Setting(
        "auth.service",
        str,
        "berth",
        "Service name in bearer challenges and the audience of registry tokens.",
    ),
    Setting("auth.issuer", str, "berth", "Issuer of registry tokens."),
    Setting("auth.token_ttl", float, 300.0, "Seconds a registry bearer token stays valid."),
    Setting(
        "auth.refresh_token_ttl",
        float,
        30 * 86400.0,
        "Seconds a refresh token (docker login's identity token) stays valid.",
    ),
    Setting(
        "auth.lockout_threshold",
        int,
        10,
        "Failed sign-ins for one account within auth.lockout_window that lock it "
        "(five times as many for one address).",
    ),
    Setting("auth.lockout_window", float, 900.0, "Seconds over which failed sign-ins are counted."),
    Setting("auth.lockout_duration", float, 900.0, "Seconds a locked account or address waits."),
    Setting("ldap.url", str, "", "LDAP server (ldap://host:389 or ldaps://host:636); empty: off."),
    Setting("ldap.bind_dn", str, "", "DN of the service account that searches for users."),
    Setting("ldap.bind_password", str, "", "Password of the LDAP service account."),
    Setting("ldap.user_base", str, "", "Base DN under which users are searched."),
    Setting(
        "ldap.user_filter",
        str,
        "(&(objectClass=inetOrgPerson)(uid={username}))",
        "Filter finding a user; {username} is replaced, escaped.",
    ),
    Setting("ldap.uid_attribute", str, "uid", "Attribute holding the user name."),
    Setting("ldap.email_attribute", str, "mail", "Attribute holding the email address."),
    Setting("ldap.name_attribute", str, "cn", "Attribute holding the display name."),
    Setting("ldap.group_base", str, "", "Base DN under which groups are searched; empty: none."),
    Setting(
        "ldap.group_filter",
        str,
        "(&(objectClass=groupOfNames)(member={dn}))",
        "Filter finding a user's groups; {dn} is replaced by the user's DN, escaped.",
    ),
    Setting(
        "ldap.group_roles",
        str,
        "",
        "Group to role mapping: GROUP=NAMESPACE:ROLE items separated by ';' "
        "(GROUP=*:admin for instance admins).",
    ),
    Setting("ldap.start_tls", bool, False, "Upgrade ldap:// connections with StartTLS."),
    Setting(
        "ldap.ca_file", str, "", "CA certificate file to verify the LDAP server's certificate."
    ),
    Setting(
        "ldap.timeout", float, 5.0, "Seconds to wait for the LDAP server (connect, each reply)."
    ),
    Setting(
        "ldap.sync_interval",
        float,
        3600.0,
        "Seconds between re-reads of every LDAP user's groups (0: never).",
    ),
    Setting(
        "backup.target",
        str,
        "",
        "Where backups go: a directory, s3://BUCKET/PREFIX or azure://CONTAINER/PREFIX "
        "(default: <data_dir>/backups).",
    ),
    Setting(
        "backup.schedule",
        str,
        "",
        "When the leader takes a backup: a 5-field cron expression in UTC, e.g. '0 3 * * *' "
        "(empty: no schedule).",
    ),
    Setting(
        "backup.passphrase",
        str,
        "",
        "Passphrase that encrypts the config, server secret and signing keys in each backup.",
    ),
    Setting("backup.passphrase_file", str, "", "File holding the backup passphrase instead."),
    Setting("backup.keep_last", int, 7, "Retention: keep the newest N backups."),
    Setting("backup.keep_daily", int, 7, "Retention: keep the newest backup of each of N days."),
    Setting("backup.keep_weekly", int, 4, "Retention: keep the newest backup of each of N weeks."),
    Setting(
        "backup.prune",
        bool,
        True,
        "Apply the retention after every scheduled backup.",
    ),
    Setting(
        "backup.before_upgrade",
        bool,
        True,
        "Take a backup before `berth ctl reconfigure` applies pending migrations (an upgrade).",
    ),
    Setting(
        "backup.s3.endpoint",
        str,
        "",
        "S3 endpoint of an s3:// backup target (empty: storage.s3.endpoint).",
    ),
    Setting(
        "backup.s3.region",
        str,
        "",
        "S3 region of an s3:// backup target (empty: storage.s3.region).",
    ),
    Setting(
        "backup.s3.access_key",
        str,
        "",
        "S3 access key id for an s3:// backup target (empty: storage.s3's credentials).",
    ),
    Setting("backup.s3.access_key_file", str, "", "File holding that access key id instead."),
    Setting("backup.s3.secret_key", str, "", "S3 secret key for an s3:// backup target."),
    Setting("backup.s3.secret_key_file", str, "", "File holding that S3 secret key instead."),
    Setting(
        "backup.azure.endpoint",
        str,
        "",
        "Blob service URL for an azure:// backup target (empty: storage.azure.endpoint, else "
        "the public cloud's).",
    ),
    Setting(
        "backup.azure.account_name",
        str,
        "",
        "Storage account of an azure:// backup target (empty: storage.azure.account_name).",
    ),
    Setting(
        "backup.azure.account_key",
        str,
        "",
        "Account key for an azure:// backup target (empty: storage.azure's credentials).",
    ),
    Setting("backup.azure.account_key_file", str, "", "File holding that account key instead."),
    Setting(
        "backup.azure.sas_token_file",
        str,
        "",
        "File holding a SAS token for an azure:// backup target instead of an account key.",
    ),
    Setting(
        "console.session_idle",
        float,
        7200.0,
        "Seconds a web console session survives without a request.",
    ),
    Setting(
        "console.session_lifetime",
        float,
        43200.0,
        "Seconds a web console session lasts at most, however busy (sign in again after).",
    ),
    Setting(
        "saml.idp_metadata_url",
        str,
        "",
        "URL of the SAML identity provider's metadata; SAML sign-in is on when this or "
        "saml.idp_metadata_file is set.",
    ),
    Setting("saml.idp_metadata_file", str, "", "File holding the SAML IdP's metadata instead."),
    Setting(
        "saml.sp_entity_id",
        str,
        "",
        "Entity id of Berth as a SAML service provider (default: <base URL>/saml/metadata).",
    ),
    Setting(
        "saml.username_attribute",
        str,
        "uid",
        "Assertion attribute holding the user name (absent: the NameID, before any '@').",
    ),
    Setting("saml.email_attribute", str, "mail", "Assertion attribute holding the email address."),
    Setting("saml.name_attribute", str, "cn", "Assertion attribute holding the display name."),
    Setting("saml.groups_attribute", str, "groups", "Assertion attribute listing the groups."),
    Setting(
        "saml.group_roles",
        str,
        "",
        "Group to role mapping, as ldap.group_roles: GROUP=NAMESPACE:ROLE items separated by ';'.",
    ),
    Setting(
        "oidc.<name>.issuer",
        str,
        "",
        "Issuer URL of this OpenID Connect provider; its discovery document is read from "
        "<issuer>/.well-known/openid-configuration.",
    ),
    Setting(
        "oidc.<name>.discovery_file",
        str,
        "",
        "File holding the provider's discovery document instead of fetching it (offline "
        "sites); its issuer must equal oidc.<name>.issuer when both are set.",
    ),
    Setting("oidc.<name>.client_id", str, "", "Client id of Berth at this provider."),
    Setting(
        "oidc.<name>.client_secret_file",
        str,
        "",
        "File holding the client secret (empty: a public client that proves itself with PKCE "
        "only).",
    ),
    Setting(
        "oidc.<name>.scopes",
        str,
        "openid profile email",
        "Scopes asked for, space-separated (openid is always asked for).",
    ),
    Setting(
        "oidc.<name>.username_claim",
        str,
        "preferred_username",
        "Claim holding the user name (absent: the email address before any '@').",
    ),
    Setting("oidc.<name>.email_claim", str, "email", "Claim holding the email address."),
    Setting("oidc.<name>.name_claim", str, "name", "Claim holding the display name."),
    Setting("oidc.<name>.groups_claim", str, "groups", "Claim listing the user's groups."),
    Setting(
        "oidc.<name>.group_roles",
        str,
        "",
        "Group to role mapping, as ldap.group_roles: GROUP=NAMESPACE:ROLE items separated by ';'.",
    ),
    Setting(
        "oidc.<name>.label",
        str,
        "",
        "Text of the provider's button on the sign-in page (default: the provider's name).",
    ),
    Setting(
        "oidc.<name>.allow_http",
        bool,
        False,
        "Accept an http:// issuer and endpoints on a loopback address (127.0.0.0/8, ::1): for "
        "test setups only; everything else must be https.",
    ),
    Setting(
        "ci_trust.issuers",
        str,
        "https://token.actions.githubusercontent.com, https://gitlab.com",
        "Issuers of CI identity tokens that namespace maintainers may trust in CI trust rules "
        "(comma-separated); instance admins may trust any https issuer.",
    ),
    Setting(
        "ci_trust.allow_http_loopback",
        bool,
        False,
        "Accept CI trust rules whose issuer is http:// on a loopback address (127.0.0.0/8, "
        "::1): for test setups only.",
    ),
    Setting(
        "ci_trust.jwks_ttl",
        float,
        3600.0,
        "Seconds an issuer's fetched signing keys (JWKS) are used before they are fetched again.",
    ),
    Setting(
        "ci_trust.jwks_refresh_interval",
        float,
        60.0,
        "Fewest seconds between two fetches of one issuer's keys when a token names a key id "
        "Berth does not know.",
    ),
    Setting(
        "ci_trust.clock_skew",
        float,
        60.0,
        "Seconds of clock difference tolerated when checking a token's exp, nbf and iat.",
    ),
    Setting(
        "scan.enabled",
        bool,
        True,
        "Extract an SBOM from every pushed image in the background and match it against the "
        "imported advisories.",
    ),
    Setting("scan.interval", float, 10.0, "Seconds between sweeps of the scan queue."),
    Setting(
        "scan.unscanned",
        str,
        "allow",
        "What a namespace's vulnerability policy does with images not scanned yet, unless the "
        "policy says: 'allow' or 'deny'.",
        choices=("allow", "deny"),
    ),
    Setting(
        "scan.policy_refresh",
        float,
        5.0,
        "Deprecated and ignored: policy, advisory and scan changes made anywhere now apply to "
        "the next pull on every process (accepted so older config files still load).",
    ),
    Setting(
        "scan.max_layer_bytes",
        int,
        8 << 30,
        "Bytes one layer may decompress to; the scan stops reading the layer there and the "
        "report says the scan is incomplete.",
    ),
    Setting(
        "scan.max_layer_files",
        int,
        1_000_000,
        "Files (tar entries) read of one layer before the scan stops reading it (an "
        "incomplete scan).",
    ),
    Setting(
        "scan.max_db_bytes",
        int,
        256 << 20,
        "Largest package database file (dpkg status, apk installed, rpmdb.sqlite) the scan "
        "reads; a larger one is skipped and the scan is incomplete.",
    ),
    Setting(
        "scan.max_packages",
        int,
        10_000,
        "Packages one image may list; the scan stops reading at the next one (an incomplete scan).",
    ),
    Setting(
        "scan.max_memory",
        int,
        1 << 30,
        "Address space in bytes of the process that reads an image's layers (0: no limit); "
        "an allocation past it cuts the layer being read.",
    ),
    Setting(
        "scan.timeout",
        float,
        600.0,
        "Seconds the scan of one image may take; the layer being read is cut then (an "
        "incomplete scan), and the process reading it is killed 10 s later.",
    ),
)

# Settings kept so that older config files still load, but no longer used: key -> why.
DEPRECATED = {
    "lifecycle.rules_ttl": "rules and quotas follow the change stamps now",
    "scan.policy_refresh": "pull verdicts follow the change stamps now",
}

SECRET_KEYS = frozenset(
    {
        "backup.passphrase",
        "backup.s3.access_key",
        "backup.s3.secret_key",
        "metrics.token",
        "webhooks.secret",
        "storage.s3.access_key",
        "storage.s3.secret_key",
        "storage.azure.account_key",
        "backup.azure.account_key",
        "admin.password",
        "ldap.bind_password",
        "proxy.credentials",
    }
)
_BY_KEY = {s.key: s for s in SETTINGS if not s.templated}
_BY_ENV = {s.env: s for s in SETTINGS if not s.templated}
_TEMPLATES = {s.key: s for s in SETTINGS if s.templated}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    """Convert `value` to the setting's type, or raise ConfigError naming `source`."""
    kind = setting.type
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif kind is str and isinstance(value, str):
        if not setting.choices:
            return value
        word = value.strip().lower()
        if word in setting.choices:
            return word
        raise ConfigError(
            f"{source}: {setting.key} must be one of {', '.join(setting.choices)}, not {value!r}"
        )
    elif kind is str and setting.key == "server.workers" and isinstance(value, int):
        return str(value)  # `workers = 2` in a file is as good as `workers = "2"`
    raise ConfigError(f"{source}: {setting.key} must be a {kind.__name__}, not {value!r}")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and key not in _BY_KEY:
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _templated_key(key: str, source: str) -> Setting | None:
    """The templated setting `key` (`oidc.corp.issuer`) is an instance of, if any."""
    head, _, rest = key.partition(".")
    name, _, field = rest.partition(".")
    setting = _TEMPLATES.get(f"{head}.{NAME_SLOT}.{field}")
    if setting is not None and not INSTANCE_NAME.fullmatch(name):
        raise ConfigError(
            f"{source}: {head}.{name}: a name is 1 to 32 lowercase letters and digits"
        )
    return setting


def _templated_env(variable: str) -> tuple[Setting, str] | None:
    """(setting, instance name) of a variable such as BERTH_OIDC_CORP_ISSUER, if it is one."""
    for setting in _TEMPLATES.values():
        before, _, after = setting.env.partition("<NAME>")
        middle = variable[len(before) : len(variable) - len(after)]
        if (
            variable.startswith(before)
            and variable.endswith(after)
            and len(variable) > len(before) + len(after)
            and re.fullmatch(r"[A-Z0-9]{1,32}", middle)
        ):
            return setting, middle.lower()
    return None


def _instances(values: Mapping[str, Any], head: str) -> list[str]:
    names = set()
    for key in values:
        if key.startswith(head + "."):
            name, sep, _ = key[len(head) + 1 :].partition(".")
            if sep and _TEMPLATES.get(key.replace(f".{name}.", f".{NAME_SLOT}.", 1)):
                names.add(name)
    return sorted(names)


@dataclass(frozen=True)
class Config:
    """Resolved settings. Read values with `config["section.key"]` or the typed properties."""

    values: Mapping[str, Any]
    source: str = "defaults"

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def instances(self, head: str) -> list[str]:
        """Names of the configured instances of a templated section (`oidc` → ["corp"])."""
        return _instances(self.values, head)

    def rows(self) -> list[tuple[str, Setting]]:
        """Every effective key and its setting, in table order, each instance's keys together
        (what `berth config show` prints)."""
        out: list[tuple[str, Setting]] = []
        done: set[str] = set()
        for setting in SETTINGS:
            if not setting.templated:
                out.append((setting.key, setting))
                continue
            head = setting.key.partition(".")[0]
            if head in done:
                continue
            done.add(head)
            family = [t for t in SETTINGS if t.templated and t.key.startswith(head + ".")]
            for name in self.instances(head):
                out.extend((t.for_instance(name), t) for t in family)
        return out

    @property
    def data_dir(self) -> Path:
        return Path(self.values["server.data_dir"]).expanduser().absolute()

    @property
    def secret_path(self) -> Path:
        """The server secret's file: `server.secret_file`, or `<data_dir>/secret`."""
        value = self.values["server.secret_file"]
        return Path(value).expanduser().absolute() if value else self.data_dir / "secret"

    @property
    def host_name(self) -> str:
        """`server.host_name`, or the machine's host name."""
        return str(self.values["server.host_name"]) or socket.gethostname()

    @property
    def storage_root(self) -> Path:
        root = self.values["storage.root"]
        return Path(root).expanduser().absolute() if root else self.data_dir / "storage"

    @property
    def metadata_url(self) -> str:
        url: str = self.values["metadata.url"]
        return url or f"sqlite:///{self.data_dir / 'berth.db'}"

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.values["server.listen"])

    def deprecations(self) -> list[str]:
        """One line per deprecated setting this config sets to something else than its
        default (it is ignored: say so once at start)."""
        return [
            f"{key} is deprecated and ignored: {why}"
            for key, why in DEPRECATED.items()
            if self.values[key] != _BY_KEY[key].default
        ]

    @property
    def workers(self) -> int:
        """`server.workers` as a number of processes ('auto' resolved on this machine)."""
        return parse_workers(self.values["server.workers"])


MAX_AUTO_WORKERS = 8  # each serving process holds ~100 MiB; more rarely pays on one VM
MAX_WORKERS = 64


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_workers(value: str | int) -> int:
    """`server.workers`: 'auto' (one per available CPU, at most MAX_AUTO_WORKERS) or 1..64."""
    text = str(value).strip().lower()
    if text == "auto":
        return min(available_cpus(), MAX_AUTO_WORKERS)
    if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise ConfigError(
        f"server.workers must be 'auto' or a number from 1 to {MAX_WORKERS}, not {value!r}"
    )


def proxy_networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`server.trusted_proxies`: CIDR blocks (or single addresses) separated by commas."""
    out = []
    for item in text.split(","):
        if item.strip():
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{item.strip()!r} is not an address or CIDR block") from None
    return tuple(out)


def read_secret(config: Config, section: str, key: str, file_key: str) -> str:
    """A secret set inline (`section.key`; "" when the secret has only a file form) or in a file
    (`section.file_key`, read and stripped), never both: the one reader of every "key or
    key_file" pair (object stores, backup targets). Raises ConfigError naming the setting."""
    value: str = config[f"{section}.{key}"] if key else ""
    path: str = config[f"{section}.{file_key}"]
    if value and path:
        raise ConfigError(f"set {section}.{key} or {section}.{file_key}, not both")
    if path:
        try:
            return Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise ConfigError(f"{section}.{file_key}: cannot read {path}: {e.strerror}") from e
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets) into host and port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address must be HOST:PORT, not {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def parse_upstreams(value: str) -> list[tuple[str, int]]:
    """`nginx.upstreams`: HOST:PORT items separated by commas. A host name is written into
    nginx's configuration, so anything but a name or an address is refused."""
    pool = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            host, port = parse_listen(item)
        except ConfigError:
            raise ConfigError(f"nginx.upstreams: {item!r} is not HOST:PORT") from None
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", host) or port == 0:
            raise ConfigError(f"nginx.upstreams: {item!r} is not HOST:PORT")
        pool.append((host, port))
    return pool


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the settings from defaults, an optional TOML file, the environment and overrides.

    Raises ConfigError with one clear line for an unknown key, a wrong type, an unreadable file
    or an unknown `BERTH_*` variable.
    """
    values = {s.key: s.default for s in SETTINGS if not s.templated}
    source = "defaults"
    if path is not None:
        try:
            with path.open("rb") as f:
                table = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e
        for key, value in _flatten(table).items():
            setting = _BY_KEY.get(key) or _templated_key(key, str(path))
            if setting is None:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(setting, value, str(path))
        source = str(path)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        setting = _BY_ENV.get(name)
        if setting is not None:
            values[setting.key] = _coerce(setting, value, name)
            continue
        found = _templated_env(name)
        if found is None:
            raise ConfigError(f"unknown environment variable {name}")
        values[found[0].for_instance(found[1])] = _coerce(found[0], value, name)
    for key, value in (overrides or {}).items():
        if value is not None:
            setting = _BY_KEY.get(key) or _templated_key(key, "command line")
            if setting is None:
                raise ConfigError(f"command line: unknown setting {key!r}")
            values[key] = _coerce(setting, value, "command line")
    for template in _TEMPLATES.values():  # an instance's unset keys take their defaults
        for name in _instances(values, template.key.partition(".")[0]):
            values.setdefault(template.for_instance(name), template.default)
    parse_listen(values["server.listen"])
    parse_workers(values["server.workers"])
    parse_upstreams(values["nginx.upstreams"])
    try:
        proxy_networks(values["server.trusted_proxies"])
    except ValueError as e:
        raise ConfigError(f"server.trusted_proxies: {e}") from None
    if values["nginx.enabled"] and not values["server.public_url"]:
        raise ConfigError(
            "server.public_url must be set when nginx.enabled is true "
            "(the https:// address clients use)"
        )
    if values["storage.backend"] == "s3" and not values["storage.s3.bucket"]:
        raise ConfigError("storage.s3.bucket must be set when storage.backend is 's3'")
    if values["storage.backend"] == "azure":
        for key in ("account_name", "container"):
            if not values[f"storage.azure.{key}"]:
                raise ConfigError(
                    f"storage.azure.{key} must be set when storage.backend is 'azure'"
                )
    return Config(values, source)

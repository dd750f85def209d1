"""A real PostgreSQL for tests: a pytest plugin (listed in tests/conftest.py).

`PostgresServer.start(dir)` runs Debian's PostgreSQL (`initdb`, then `postgres` in the
foreground) in a temporary directory on a free loopback port, as the `postgres` user when run
as root (initdb refuses root). It is stopped with SIGINT (fast shutdown) to its PID.

Fixtures:

- `postgres_server` (session): one server for the whole session.
- `postgres_database` (session): a factory; each call creates a fresh, empty database on that
  server and returns its URL.
- `postgres_metadata` (session): the backend-profile factory (tests/support/backends.py); each
  call makes a fresh database, migrates it as `berth migrate` would, and returns
  `{"BERTH_METADATA_URL": url}`.

Without PostgreSQL installed the tests that need it skip, naming the Debian package; under
`CI=true` they fail instead.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.servers import free_port, unavailable

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_pg_bin() -> Path:
    """The directory of `initdb` and `postgres`; skip (or fail under CI=true) without them."""
    candidates = sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), reverse=True)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            return folder
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    unavailable("PostgreSQL not found: install the Debian package 'postgresql'")


def _as_postgres_user() -> dict[str, object]:
    """Popen arguments that drop to the `postgres` user when running as root."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


@dataclass
class PostgresServer:
    """A PostgreSQL server of our own: data directory, port, PID."""

    root: Path
    port: int
    bin: Path
    proc: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @classmethod
    def create(cls, root: Path | None = None, port: int | None = None) -> PostgresServer:
        """initdb a fresh cluster in `root` (a new temporary directory by default)."""
        pg_bin = find_pg_bin()
        if root is None:
            # Not under pytest's tmp_path: its parents are 0700 root, which `postgres` cannot
            # traverse. Short, too: the socket path must stay under 108 bytes.
            root = Path(tempfile.mkdtemp(prefix="berth-pg-"))
        root.mkdir(parents=True, exist_ok=True)
        server = cls(root, port or free_port(), pg_bin)
        if os.geteuid() == 0:
            root.chmod(0o755)
            shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            [
                str(pg_bin / "initdb"),
                "-D",
                str(server.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=en_US.UTF-8" if _has_locale("en_US.utf8") else "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **_as_postgres_user(),  # type: ignore[arg-type]
        )
        return server

    def start(self, timeout: float = 30) -> PostgresServer:
        """Run `postgres` in the foreground (our child); return once it accepts connections."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-k",
                    str(self.root),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    # A test database need not survive a power cut.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "shared_buffers=64MB",
                ],
                stdout=log,
                stderr=log,
                **_as_postgres_user(),  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        return self

    def ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            check=False,
            capture_output=True,
        )
        return done.returncode == 0

    def stop(self, timeout: float = 30) -> None:
        """SIGINT (fast shutdown: disconnect clients, stop) and wait."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return "" if cur.description is None else repr(cur.fetchall())

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL.

        Its default collation is ICU's en-US (where this PostgreSQL has ICU), which does not
        sort in byte order: so the tests prove that Berth's listings do not depend on the
        database's locale.
        """
        name = f"berth_{os.getpid()}_{next(self._names)}"
        try:
            self.psql(
                f"CREATE DATABASE \"{name}\" LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                "LOCALE 'C.UTF-8' TEMPLATE template0"
            )
        except Exception:  # no ICU in this build
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _has_locale(name: str) -> bool:
    try:
        out = subprocess.run(["locale", "-a"], check=False, capture_output=True, text=True)
    except OSError:
        return False
    return name in out.stdout.lower().split()


def migrated(url: str) -> str:
    """Migrate the database at `url` as `berth migrate` would; return `url`."""
    from tests.support.dialects import open_migrated  # noqa: PLC0415

    open_migrated(url).close()
    return url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL for the whole session."""
    server = PostgresServer.create().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Callable[[], str]:
    """A factory: each call creates a fresh, empty database and returns its URL."""
    return postgres_server.create_database


@pytest.fixture(scope="session")
def postgres_metadata(postgres_server: PostgresServer) -> Callable[[], dict[str, str]]:
    """The `postgres-fs` profile's factory: a fresh, migrated database for Berth's metadata."""

    def make() -> dict[str, str]:
        return {"BERTH_METADATA_URL": migrated(postgres_server.create_database())}

    return make

"""Suite-wide fixtures. Real services (PostgreSQL, S3, ...) are plugins of their own under
tests/support/, listed here so every test directory can use them. `db` (tests/support/dialects.py)
is a migrated metadata database of each dialect: ask for it to run a test on both."""

pytest_plugins: list[str] = [
    "tests.support.postgres",
    "tests.support.dialects",
    "tests.support.slapd",
    "tests.support.seaweedfs",
    "tests.support.azurite",
    "tests.support.browser",
    "tests.support.simplesamlphp",
    "tests.support.oidcprovider",
    "tests.support.ciissuer",
]

"""Suite-wide fixtures. Real services (PostgreSQL, S3, ...) are plugins of their own under
tests/support/, listed here so every test directory can use them."""

pytest_plugins: list[str] = [
    "tests.support.postgres",
    "tests.support.slapd",
    "tests.support.seaweedfs",
    "tests.support.azurite",
    "tests.support.browser",
    "tests.support.simplesamlphp",
    "tests.support.oidcprovider",
    "tests.support.ciissuer",
]

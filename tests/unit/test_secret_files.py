"""Every "key or key_file" pair is read by one function (`config.read_secret`): inline or from a
file (stripped), never both, and an unreadable file is a ConfigError naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config as settings
from appliance.backup.target import _read_pair
from appliance.errors import ConfigError
from appliance.storage.azure import AzureSettings
from appliance.storage.s3 import S3Settings


def _config(**overrides: object) -> settings.Config:
    return settings.load(None, environ={}, overrides=overrides)


def test_inline_or_file_never_both(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    s3 = S3Settings.from_config(
        _config(
            **{
                "storage.s3.bucket": "b",
                "storage.s3.access_key": "id",
                "storage.s3.secret_key_file": str(secret),
            }
        )
    )
    assert s3.secret_key == "from-a-file"
    azure = AzureSettings.from_config(
        _config(
            **{
                "storage.azure.container": "c",
                "storage.azure.account_name": "acct",
                "storage.azure.account_key_file": str(secret),
            }
        )
    )
    assert azure.account_key == "from-a-file"
    pair = _read_pair(
        _config(**{"backup.s3.access_key": "id", "backup.s3.secret_key_file": str(secret)}),
        "backup.s3",
    )
    assert pair == ("id", "from-a-file")
    both = _config(**{"storage.s3.secret_key": "x", "storage.s3.secret_key_file": str(secret)})
    with pytest.raises(ConfigError, match=r"set storage\.s3\.secret_key or .*_file, not both"):
        settings.read_secret(both, "storage.s3", "secret_key", "secret_key_file")
    missing = _config(**{"backup.s3.secret_key_file": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=r"^backup\.s3\.secret_key_file: cannot read "):
        _read_pair(missing, "backup.s3")
    only_file = _config(**{"storage.azure.sas_token_file": str(secret)})
    assert settings.read_secret(only_file, "storage.azure", "", "sas_token_file") == "from-a-file"

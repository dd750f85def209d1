"""The backup targets' own contracts: paths stay inside a directory target, writes become
visible only whole, and an S3 target retries S3's transient failures but not refusals."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from appliance.backup import BackupError
from appliance.backup.target import AzureTarget, DirTarget, S3Target, open_target
from appliance.config import load
from appliance.errors import ConfigError


def test_a_directory_target_writes_whole_files_only(tmp_path: Path) -> None:
    target = DirTarget(tmp_path / "t")
    writer = target.writer("blobs/sha256/ab/abc")
    writer.write(b"half")
    assert target.files("blobs/") == {}  # not visible before commit
    writer.abort()
    assert target.stat("blobs/sha256/ab/abc") is None
    target.write_all("blobs/sha256/ab/abc", b"whole")
    assert target.read_all("blobs/sha256/ab/abc") == b"whole"
    assert (tmp_path / "t" / "blobs" / "sha256" / "ab" / "abc").stat().st_mode & 0o777 == 0o600
    target.delete(["blobs/sha256/ab/abc"])
    assert not (tmp_path / "t" / "blobs").exists()  # empty folders go too
    for bad in ("../escape", "/etc/passwd", "blobs/../../x"):
        with pytest.raises(BackupError, match="unsafe path"):
            target.stat(bad)
    with pytest.raises(BackupError, match="is missing"):
        target.read_all("backups/nothing")


def _stubbed() -> tuple[S3Target, Stubber]:
    client = boto3.client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",  # a stub: no request leaves
        endpoint_url="http://127.0.0.1:9",
    )
    return S3Target(client, "bucket", "prefix", "http://127.0.0.1:9", attempts=3), Stubber(client)


def test_an_s3_target_retries_transient_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.backup.target.time.sleep", lambda _s: None)
    target, stub = _stubbed()
    expected = {"Bucket": "bucket", "Key": "prefix/backups/x/manifest.json", "Body": b"{}"}
    stub.add_client_error("put_object", "SlowDown", http_status_code=503)
    stub.add_client_error("put_object", "InternalError", http_status_code=500)
    stub.add_response("put_object", {}, expected)
    with stub:
        target.write_all("backups/x/manifest.json", b"{}")
    stub.assert_no_pending_responses()


def test_an_s3_target_does_not_retry_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.backup.target.time.sleep", lambda _s: None)
    target, stub = _stubbed()
    stub.add_client_error("put_object", "AccessDenied", "Access Denied", http_status_code=403)
    with stub, pytest.raises(BackupError, match="AccessDenied Access Denied"):
        target.write_all("backups/x/manifest.json", b"{}")
    stub.assert_no_pending_responses()
    assert target.url == "s3://bucket/prefix"


def test_azure_targets_need_a_container_an_account_and_one_credential(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected azure://CONTAINER/PREFIX"):
        open_target("azure://", load(environ={}))
    with pytest.raises(ConfigError, match=r"set backup.azure.account_name"):
        open_target("azure://backups/nightly", load(environ={}))
    account = {"BERTH_BACKUP_AZURE_ACCOUNT_NAME": "acct"}
    with pytest.raises(ConfigError, match=r"set one of backup.azure.account_key"):
        open_target("azure://backups/nightly", load(environ=account))
    (tmp_path / "sas").write_text("?sv=2024&sig=x\n")
    target = open_target(
        "azure://backups/nightly/",
        load(environ=account | {"BERTH_BACKUP_AZURE_SAS_TOKEN_FILE": str(tmp_path / "sas")}),
    )
    assert isinstance(target, AzureTarget)
    assert target.url == "azure://backups/nightly"
    assert target.client.url.startswith("https://acct.blob.core.windows.net/backups")
    # Without credentials of its own, [backup.azure] falls back to [storage.azure]'s.
    target = open_target(
        "azure://other", load(environ=account | {"BERTH_STORAGE_AZURE_ACCOUNT_KEY": "a2V5"})
    )
    assert isinstance(target, AzureTarget)

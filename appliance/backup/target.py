"""Where backups are written: a local directory, an S3 bucket or an Azure Blob Storage container
(under a key prefix).

The methods are blocking (file I/O, boto3, the Azure SDK): call them in a worker thread. Paths
are '/'-separated and relative to the target's root (`layout.py`). A writer makes its file
visible only on `commit` (a rename on disk, the completion of a multipart upload on S3, a block
list on Azure), so a reader never sees half a file and an interrupted backup leaves no file that
looks whole. Errors from the filesystem, botocore and the Azure SDK are translated to
BackupError here and never leak.

    open_target("/var/backups/berth", config)        DirTarget
    open_target("s3://bucket/some/prefix", config)   S3Target ([backup.s3] settings, falling
                                                     back to [storage.s3] for the endpoint,
                                                     region and credentials)
    open_target("azure://container/prefix", config)  AzureTarget ([backup.azure], falling back
                                                     to [storage.azure] likewise)
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from appliance.backup import BackupError
from appliance.config import Config, read_secret
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
CHUNK = 1 << 20
PART = 16 << 20


@dataclass(frozen=True)
class Stat:
    size: int
    mtime: float


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None:
        """Make the file visible, whole, under its path (replacing what was there)."""
        ...

    def abort(self) -> None:
        """Forget what was written. Idempotent."""
        ...


class Target(Protocol):
    """A backup target. Every method blocks and raises BackupError."""

    url: str

    def files(self, prefix: str) -> dict[str, Stat]:
        """Every file under `prefix` (a folder path ending in '/'), by path."""
        ...

    def stat(self, path: str) -> Stat | None: ...

    def read(self, path: str) -> Iterator[bytes]:
        """The file's bytes in chunks of up to 1 MiB. Raises BackupError when it is missing."""
        ...

    def read_all(self, path: str) -> bytes: ...

    def writer(self, path: str) -> Writer: ...

    def write_all(self, path: str, data: bytes) -> None: ...

    def delete(self, paths: list[str]) -> None:
        """Remove files; missing ones are fine."""
        ...


# -- a directory -----------------------------------------------------------------------------


class _FileWriter:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.file = open(self.temp, "xb")  # noqa: SIM115 (closed in commit/abort)
        os.chmod(self.temp, 0o600)

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            self.abort()
            raise BackupError(f"cannot write {self.final}: {e.strerror}") from e

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temp, self.final)
            fd = os.open(self.final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.abort()
            raise BackupError(f"cannot write {self.final}: {e.strerror}") from e

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp.unlink()


class DirTarget:
    """Backups in a local directory (made 0700 when created)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().absolute()
        self.url = str(self.root)

    def _path(self, path: str) -> Path:
        if path.startswith("/") or ".." in path.split("/"):
            raise BackupError(f"unsafe path {path!r} in a backup")
        return self.root / path

    def files(self, prefix: str) -> dict[str, Stat]:
        base = self._path(prefix.rstrip("/"))
        out: dict[str, Stat] = {}
        try:
            for folder, _dirs, names in os.walk(base):
                for name in names:
                    if name.endswith(".part"):
                        continue
                    full = Path(folder) / name
                    with contextlib.suppress(FileNotFoundError):
                        st = full.stat()
                        out[full.relative_to(self.root).as_posix()] = Stat(st.st_size, st.st_mtime)
        except OSError as e:
            raise BackupError(f"cannot list {base}: {e.strerror}") from e
        return out

    def stat(self, path: str) -> Stat | None:
        try:
            st = self._path(path).stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BackupError(f"cannot read {self._path(path)}: {e.strerror}") from e
        return Stat(st.st_size, st.st_mtime)

    def read(self, path: str) -> Iterator[bytes]:
        full = self._path(path)
        try:
            with open(full, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except FileNotFoundError as e:
            raise BackupError(f"{full} is missing") from e
        except OSError as e:
            raise BackupError(f"cannot read {full}: {e.strerror}") from e

    def read_all(self, path: str) -> bytes:
        return b"".join(self.read(path))

    def writer(self, path: str) -> Writer:
        try:
            return _FileWriter(self._path(path))
        except OSError as e:
            raise BackupError(f"cannot write {self._path(path)}: {e.strerror}") from e

    def write_all(self, path: str, data: bytes) -> None:
        w = self.writer(path)
        w.write(data)
        w.commit()

    def delete(self, paths: list[str]) -> None:
        folders: set[Path] = set()
        for path in paths:
            full = self._path(path)
            try:
                full.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise BackupError(f"cannot delete {full}: {e.strerror}") from e
            folders.add(full.parent)
        # Drop folders left empty (a pruned backup's, a blob's fan-out folder).
        for leaf in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            folder = leaf
            while folder != self.root and self.root in folder.parents:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent


# -- object storage ----------------------------------------------------------------------------


def _retrying(
    attempts: int,
    translated: Callable[[], contextlib.AbstractContextManager[None]],
    retryable: Callable[[Exception], bool],
    fn: Callable[[], T],
) -> T:
    """`fn()`, its transient failures (as `retryable` judges the dependency's error) retried
    with jittered exponential backoff up to `attempts` times; `translated()` turns the
    dependency's errors into BackupError."""
    for attempt in range(1, attempts + 1):
        try:
            with translated():
                return fn()
        except BackupError as e:
            cause = e.__cause__
            if attempt == attempts or not isinstance(cause, Exception) or not retryable(cause):
                raise
            jitter = random.uniform(0.5, 1.0)  # noqa: S311 (not a secret)
            time.sleep(jitter * min(8.0, 0.2 * 2**attempt))
    raise AssertionError("unreachable")


# -- S3 --------------------------------------------------------------------------------------


class _S3Writer:
    def __init__(self, target: S3Target, key: str) -> None:
        self.target = target
        self.key = key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def _flush_part(self) -> None:
        client, what = self.target.client, f"writing {self.key}"
        if self.upload_id is None:
            self.upload_id = self.target.call(
                what,
                lambda: client.create_multipart_upload(Bucket=self.target.bucket, Key=self.key),
            )["UploadId"]
        upload_id, number, body = self.upload_id, len(self.parts) + 1, bytes(self.buffer[:PART])
        etag = self.target.call(
            what,
            lambda: client.upload_part(
                Bucket=self.target.bucket,
                Key=self.key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            ),
        )["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})
        del self.buffer[:PART]

    def write(self, data: bytes) -> None:
        self.buffer += data
        try:
            while len(self.buffer) >= PART:
                self._flush_part()
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        client = self.target.client
        try:
            what = f"writing {self.key}"
            if self.upload_id is None:
                body = bytes(self.buffer)
                self.target.call(
                    what,
                    lambda: client.put_object(Bucket=self.target.bucket, Key=self.key, Body=body),
                )
                return
            if self.buffer:
                self._flush_part()
            upload_id = self.upload_id
            self.target.call(
                what,
                lambda: client.complete_multipart_upload(
                    Bucket=self.target.bucket,
                    Key=self.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": self.parts},  # type: ignore[typeddict-item]
                ),
            )
            self.upload_id = None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(Exception):
                self.target.client.abort_multipart_upload(
                    Bucket=self.target.bucket, Key=self.key, UploadId=upload_id
                )


class S3Target:
    """Backups in an S3 bucket, under a key prefix."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str,
        endpoint: str,
        attempts: int = 5,
        *,
        batch_delete: bool = True,
    ) -> None:
        from appliance.storage.s3 import Deleter  # noqa: PLC0415

        self.client = client
        self.attempts = max(1, attempts)
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint = endpoint
        self.deleter = Deleter(client, bucket, self.url, batch_delete)

    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        import botocore.exceptions  # noqa: PLC0415

        try:
            yield
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            raise BackupError(
                f"{self.url}: {what}: {err.get('Code', '?')} {err.get('Message', '')}".rstrip()
            ) from e
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise BackupError(f"{self.url}: {what}: {e}") from e

    def _k(self, path: str) -> str:
        return self.prefix + path

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with S3's transient failures (5xx, SlowDown, dropped connections) retried
        with jittered exponential backoff, up to `attempts` times; errors translated."""
        from appliance.storage.s3 import _retryable  # noqa: PLC0415

        return _retrying(self.attempts, lambda: self.translated(what), _retryable, fn)

    def files(self, prefix: str) -> dict[str, Stat]:
        def listing() -> dict[str, Stat]:
            out: dict[str, Stat] = {}
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._k(prefix)):
                for obj in page.get("Contents", []):
                    path = obj["Key"][len(self.prefix) :]
                    out[path] = Stat(obj["Size"], obj["LastModified"].timestamp())
            return out

        return self.call(f"listing {prefix}", listing)

    def stat(self, path: str) -> Stat | None:
        import botocore.exceptions  # noqa: PLC0415

        try:
            head = self.call(
                f"reading {path}",
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._k(path)),
            )
        except BackupError as e:
            cause = e.__cause__
            if isinstance(cause, botocore.exceptions.ClientError) and cause.response.get(
                "Error", {}
            ).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return Stat(head["ContentLength"], head["LastModified"].timestamp())

    def read(self, path: str) -> Iterator[bytes]:
        with self.translated(f"reading {path}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._k(path))["Body"]
            except self.client.exceptions.NoSuchKey as e:
                raise BackupError(f"{self.url}/{path} is missing") from e
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

    def read_all(self, path: str) -> bytes:
        return b"".join(self.read(path))

    def writer(self, path: str) -> Writer:
        return _S3Writer(self, self._k(path))

    def write_all(self, path: str, data: bytes) -> None:
        self.call(
            f"writing {path}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=self._k(path), Body=data),
        )

    def delete(self, paths: list[str]) -> None:
        for i in range(0, len(paths), 1000):
            keys = [self._k(p) for p in paths[i : i + 1000]]
            self.call("deleting files", lambda keys=keys: self.deleter.delete(keys))  # type: ignore[misc]


# -- Azure Blob Storage ------------------------------------------------------------------------


class _AzureWriter:
    def __init__(self, target: AzureTarget, name: str) -> None:
        self.target = target
        self.name = name
        self.blob = target.client.get_blob_client(name)
        self.buffer = bytearray()
        self.blocks: list[str] = []

    def _flush_block(self) -> None:
        block, body = uuid.uuid4().hex, bytes(self.buffer[:PART])
        self.target.call(
            f"writing {self.name}", lambda: self.blob.stage_block(block, body, length=len(body))
        )
        self.blocks.append(block)
        del self.buffer[:PART]

    def write(self, data: bytes) -> None:
        self.buffer += data
        try:
            while len(self.buffer) >= PART:
                self._flush_block()
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        from azure.storage.blob import BlobBlock  # noqa: PLC0415

        what = f"writing {self.name}"
        try:
            if not self.blocks:
                body = bytes(self.buffer)
                self.target.call(
                    what, lambda: self.blob.upload_blob(body, overwrite=True, length=len(body))
                )
                return
            if self.buffer:
                self._flush_block()
            blocks = [BlobBlock(b) for b in self.blocks]
            self.target.call(what, lambda: self.blob.commit_block_list(blocks))
            self.blocks = []
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        # Staged blocks are invisible and Azure discards them after a week; committing an
        # empty list to drop them now would replace a file of that name that already exists.
        self.buffer = bytearray()
        self.blocks = []


class AzureTarget:
    """Backups in an Azure Blob Storage container, under a name prefix."""

    def __init__(self, client: ContainerClient, container: str, prefix: str, attempts: int = 5):
        self.client = client
        self.attempts = max(1, attempts)
        self.container = container
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"azure://{container}/{self.prefix}".rstrip("/")

    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        from azure.core.exceptions import AzureError, HttpResponseError  # noqa: PLC0415

        try:
            yield
        except HttpResponseError as e:
            code = getattr(e, "error_code", None) or e.status_code or "?"
            message = (str(e.message or "").splitlines() or [""])[0]
            raise BackupError(f"{self.url}: {what}: {code} {message}".rstrip()) from e
        except (AzureError, OSError) as e:
            raise BackupError(f"{self.url}: {what}: {e}") from e

    def _k(self, path: str) -> str:
        return self.prefix + path

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with Azure's transient failures (5xx, ServerBusy, dropped connections)
        retried with jittered exponential backoff, up to `attempts` times; errors translated."""
        from appliance.storage.azure import _retryable  # noqa: PLC0415

        return _retrying(self.attempts, lambda: self.translated(what), _retryable, fn)

    def files(self, prefix: str) -> dict[str, Stat]:
        def listing() -> dict[str, Stat]:
            blobs = self.client.list_blobs(name_starts_with=self._k(prefix))
            return {
                b.name[len(self.prefix) :]: Stat(int(b.size), b.last_modified.timestamp())
                for b in blobs
            }

        return self.call(f"listing {prefix}", listing)

    def stat(self, path: str) -> Stat | None:
        from azure.core.exceptions import ResourceNotFoundError  # noqa: PLC0415

        blob = self.client.get_blob_client(self._k(path))
        try:
            props = self.call(f"reading {path}", blob.get_blob_properties)
        except BackupError as e:
            if isinstance(e.__cause__, ResourceNotFoundError):
                return None
            raise
        return Stat(int(props.size), props.last_modified.timestamp())

    def read(self, path: str) -> Iterator[bytes]:
        from azure.core.exceptions import ResourceNotFoundError  # noqa: PLC0415

        blob = self.client.get_blob_client(self._k(path))
        with self.translated(f"reading {path}"):
            try:
                downloader = blob.download_blob()
            except ResourceNotFoundError as e:
                raise BackupError(f"{self.url}/{path} is missing") from e
            for chunk in downloader.chunks():
                for i in range(0, len(chunk), CHUNK):
                    yield chunk[i : i + CHUNK]

    def read_all(self, path: str) -> bytes:
        return b"".join(self.read(path))

    def writer(self, path: str) -> Writer:
        return _AzureWriter(self, self._k(path))

    def write_all(self, path: str, data: bytes) -> None:
        blob = self.client.get_blob_client(self._k(path))
        self.call(
            f"writing {path}", lambda: blob.upload_blob(data, overwrite=True, length=len(data))
        )

    def delete(self, paths: list[str]) -> None:
        for i in range(0, len(paths), 256):  # the most one blob batch takes
            names = [self._k(p) for p in paths[i : i + 256]]

            def batch(names: list[str] = names) -> None:
                from azure.core.exceptions import HttpResponseError  # noqa: PLC0415

                for r in self.client.delete_blobs(*names, raise_on_any_failure=False):
                    if r.status_code not in (200, 202, 404):
                        raise HttpResponseError(response=r)

            self.call("deleting files", batch)


def azure_target(
    config: Config, container: str, prefix: str, *, section: str = "backup.azure"
) -> AzureTarget:
    """An AzureTarget for `container`/`prefix`: with `[backup.azure]` settings (each empty one
    taken from `[storage.azure]`, the credentials as a pair) or, with section "storage.azure",
    the blob store's own."""
    from appliance.storage.azure import AzureSettings, make_client  # noqa: PLC0415

    def credentials(section: str) -> tuple[str, str]:
        key = read_secret(config, section, "account_key", "account_key_file")
        sas = read_secret(config, section, "", "sas_token_file").lstrip("?")
        return key, sas

    key, sas = credentials(section)
    if not (key or sas) and section != "storage.azure":
        key, sas = credentials("storage.azure")

    def pick(name: str) -> str:
        own: str = config[f"{section}.{name}"]
        return own or str(config[f"storage.azure.{name}"])

    account = pick("account_name")
    where = f"backup target azure://{container}/{prefix}".rstrip("/")
    if not account:
        raise ConfigError(f"{where}: set {section}.account_name (or storage.azure.account_name)")
    if bool(key) == bool(sas):
        raise ConfigError(
            f"{where}: set one of {section}.account_key (or account_key_file) and "
            f"{section}.sas_token_file"
        )
    settings = AzureSettings(
        container=container,
        account_name=account,
        account_key=key,
        sas_token=sas,
        endpoint=pick("endpoint"),
        max_attempts=config["storage.azure.max_attempts"],
    )
    settings.validate()
    return AzureTarget(make_client(settings), container, prefix, settings.max_attempts)


def s3_target(config: Config, bucket: str, prefix: str, *, section: str = "backup.s3") -> S3Target:
    """An S3Target for `bucket`/`prefix`, with `[backup.s3]` settings (each empty one taken
    from `[storage.s3]`) or, with section "storage.s3", the blob store's own."""
    from appliance.storage.s3 import S3Settings, make_client  # noqa: PLC0415

    def pick(key: str) -> Any:
        own = config[f"{section}.{key}"] if f"{section}.{key}" in config.values else ""
        return own or config[f"storage.s3.{key}"]

    base = S3Settings.from_config(_with_bucket(config, bucket))
    if section != "storage.s3":
        access, secret = _read_pair(config, section)
        base = replace(
            base,
            endpoint=pick("endpoint"),
            region=pick("region"),
            access_key=access or base.access_key,
            secret_key=secret or base.secret_key,
        )
    base = replace(base, bucket=bucket, prefix="")
    base.validate()
    return S3Target(
        make_client(base),
        bucket,
        prefix,
        base.endpoint,
        base.max_attempts,
        batch_delete=base.batch_delete,
    )


def _with_bucket(config: Config, bucket: str) -> Config:
    values = dict(config.values)
    values["storage.s3.bucket"] = bucket
    return Config(values, config.source)


def _read_pair(config: Config, section: str) -> tuple[str, str]:
    out = []
    for name in ("access_key", "secret_key"):
        out.append(read_secret(config, section, name, f"{name}_file"))
    if bool(out[0]) != bool(out[1]):
        raise ConfigError(f"{section}.access_key and {section}.secret_key go together")
    return out[0], out[1]


def default_target_url(config: Config) -> str:
    return config["backup.target"] or str(config.data_dir / "backups")


def open_target(url: str, config: Config) -> Target:
    """The target at `url`: a directory, `s3://bucket/prefix` or `azure://container/prefix`.
    Raises ConfigError."""
    if url.startswith("azure://"):
        container, _, prefix = url.removeprefix("azure://").partition("/")
        if not container:
            raise ConfigError(f"backup target {url!r}: expected azure://CONTAINER/PREFIX")
        return azure_target(config, container, prefix)
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"backup target {url!r}: expected s3://BUCKET/PREFIX")
        return s3_target(config, bucket, prefix)
    if "://" in url:
        raise ConfigError(
            f"backup target {url!r}: expected a directory, s3://BUCKET/PREFIX or "
            "azure://CONTAINER/PREFIX"
        )
    return DirTarget(Path(url))

"""`berth import ...`: move the repositories of another registry into Berth.

The commands open what an import writes to (the metadata database, the blob store, the rules
writes must pass) without starting a server, run `Importer`, show a progress line on a
terminal (nothing otherwise), and end with the report. Exit status: 0 when every image was
imported or was there already (or was skipped by design), 1 when something needs a look
(conflicting, refused, broken or failed images), 2 when the import could not run at all.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
import trio

from appliance.cli.common import config_option, data_dir_option, fail, load_config
from appliance.config import Config
from appliance.errors import BerthError, ConfigError, Unavailable

if TYPE_CHECKING:  # the modules that do the work are imported when a command runs
    from appliance.importer.service import Options, Progress, Source


@dataclass(frozen=True)
class _Common:
    """The options both sources take."""

    patterns: tuple[str, ...]
    into: str | None
    dry_run: bool
    force: bool
    parallel: int
    as_json: bool
    config_path: Path | None
    data_dir: Path | None


_COMMON_OPTIONS = [
    click.option(
        "--repository",
        "patterns",
        multiple=True,
        metavar="GLOB",
        help="Only repositories matching GLOB (* within a path component, ** across, "
        "? one character); repeat for several. Default: all.",
    ),
    click.option(
        "--into",
        metavar="NAMESPACE",
        help="Put every repository under NAMESPACE (alpine becomes NAMESPACE/alpine).",
    ),
    click.option("--dry-run", is_flag=True, help="Report what would be imported; change nothing."),
    click.option(
        "--force",
        is_flag=True,
        help="Move tags Berth has at another digest (immutable-tag rules still apply).",
    ),
    click.option(
        "--parallel",
        type=click.IntRange(1, 16),
        default=4,
        show_default=True,
        help="Blobs stored at once.",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
    config_option,
    data_dir_option,
]


def _common(fn: Callable[..., None]) -> Callable[..., None]:
    """Add the common options to a command, which gets them as one `common` argument."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> None:
        fields = {name: kwargs.pop(name) for name in _Common.__dataclass_fields__}
        fn(*args, common=_Common(**fields), **kwargs)

    for option in reversed(_COMMON_OPTIONS):
        command = option(command)
    return command


@click.group("import")
def import_group() -> None:
    """Move the repositories of another registry into Berth."""


@import_group.command("distribution")
@click.argument("source")
@_common
@click.option("--copy", "copy_only", is_flag=True, help="Copy every blob, never hard-link.")
@click.option(
    "--untagged", is_flag=True, help="Also import manifests no tag points at (by digest)."
)
@click.option("--s3-endpoint", default="", help="S3 source: the endpoint URL (default AWS).")
@click.option("--s3-region", default="us-east-1", show_default=True, help="S3 source: region.")
@click.option(
    "--s3-access-key", default="", help="S3 source: access key (default: $AWS_ACCESS_KEY_ID)."
)
@click.option(
    "--s3-secret-key-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="S3 source: a file holding the secret key (default: $AWS_SECRET_ACCESS_KEY).",
)
@click.option(
    "--s3-addressing",
    type=click.Choice(["path", "virtual", "auto"]),
    default="path",
    show_default=True,
    help="S3 source: bucket addressing.",
)
@click.option("--s3-ca-file", default="", help="S3 source: CA bundle for its certificate.")
@click.option("--s3-no-tls-verify", is_flag=True, help="S3 source: do not check its certificate.")
def import_distribution(  # noqa: PLR0917 (one parameter per option)
    source: str,
    common: _Common,
    copy_only: bool,
    untagged: bool,
    s3_endpoint: str,
    s3_region: str,
    s3_access_key: str,
    s3_secret_key_file: Path | None,
    s3_addressing: str,
    s3_ca_file: str,
    s3_no_tls_verify: bool,
) -> None:
    """Import from the storage of a Distribution registry (registry:2, Debian's
    docker-registry, GitLab's registry): SOURCE is its storage root directory (the one holding
    docker/registry/v2), or s3://BUCKET/PREFIX for one in S3. Run it again to finish an
    interrupted import: nothing is copied twice."""
    from appliance.importer.distribution import DistributionStore  # noqa: PLC0415
    from appliance.importer.tree import BucketTree, DirectoryTree, Tree  # noqa: PLC0415

    def s3_tree() -> BucketTree:
        from appliance.storage.s3 import S3Settings, S3Store  # noqa: PLC0415

        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError("give the S3 source as s3://BUCKET[/PREFIX]")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if s3_secret_key_file is not None:
            secret = s3_secret_key_file.read_text().strip()
        settings = S3Settings(
            bucket=bucket,
            endpoint=s3_endpoint,
            region=s3_region,
            prefix=prefix,
            access_key=s3_access_key or os.environ.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=secret,
            addressing=s3_addressing,
            tls_verify=not s3_no_tls_verify,
            ca_file=s3_ca_file,
        )
        try:
            return BucketTree(S3Store(settings), "")
        except ConfigError as e:  # it speaks of storage.s3.*: say which S3 it is about
            raise ConfigError(f"the S3 source: {e.message}") from e

    async def open_source(config: Config) -> Source:
        tree: Tree
        if source.startswith("s3://"):
            bucket_tree = s3_tree()
            try:
                await bucket_tree.store.check()
            except Unavailable as e:
                raise Unavailable(f"the S3 source: {e.message}") from e
            tree = bucket_tree
        else:
            path = await trio.Path(source).expanduser()
            path = await path.resolve()
            if not await path.is_dir():
                raise ConfigError(f"{source} is not a directory")
            tree = DirectoryTree(Path(path))
        return await DistributionStore.open(tree, config["manifests.max_size"])

    _run(open_source, common, link=not copy_only, untagged=untagged)


@import_group.command("remote")
@click.argument("url")
@_common
@click.option(
    "--credentials",
    metavar="USER:PASSWORD",
    help="Sign in to the registry (seen by other users of this machine in the process "
    "list: prefer --credentials-file).",
)
@click.option(
    "--credentials-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A file whose first line is USER:PASSWORD.",
)
@click.option("--ca-file", default="", help="CA bundle for the registry's certificate.")
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the registry.",
)
def import_remote(  # noqa: PLR0917 (one parameter per option)
    url: str,
    common: _Common,
    credentials: str | None,
    credentials_file: Path | None,
    ca_file: str,
    timeout: float,
) -> None:
    """Import every tag from the running registry at URL (http(s)://HOST[:PORT]), through the
    pull-through cache's client: the repositories its catalog lists, or those named with
    --repository. Run it again to finish an interrupted import: nothing is copied twice."""
    from appliance.importer.remote import RemoteRegistry  # noqa: PLC0415

    async def open_source(config: Config) -> Source:
        user, password = _credentials(credentials, credentials_file)
        return RemoteRegistry(
            url,
            user,
            password,
            max_manifest_size=config["manifests.max_size"],
            timeout=timeout,
            ca_file=ca_file,
        )

    _run(open_source, common)


def _options(common: _Common, *, link: bool, untagged: bool) -> Options:
    """The options of an import; InvalidName for a bad pattern or namespace."""
    from appliance.importer.patterns import RepositoryFilter  # noqa: PLC0415
    from appliance.importer.service import Options  # noqa: PLC0415
    from appliance.oci.names import validate_component  # noqa: PLC0415

    wanted = RepositoryFilter.of(common.patterns)
    if common.into is not None:
        validate_component(common.into)
    return Options(
        wanted=wanted,
        into=common.into,
        dry_run=common.dry_run,
        force=common.force,
        link=link,
        untagged=untagged,
        parallel=common.parallel,
    )


def _credentials(inline: str | None, path: Path | None) -> tuple[str | None, str | None]:
    if inline is not None and path is not None:
        raise ConfigError("give --credentials or --credentials-file, not both")
    text = inline
    if path is not None:
        try:
            text = next((line for line in path.read_text().splitlines() if line.strip()), "")
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    if text is None:
        return None, None
    user, sep, password = text.strip().partition(":")
    if not sep or not user:
        raise ConfigError("credentials must be USER:PASSWORD")  # never echo them
    return user, password


class ProgressLine:
    """One line on a terminal, rewritten at most a few times a second; nothing otherwise."""

    INTERVAL = 0.25

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.shown = 0.0
        self.dirty = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.tty or now - self.shown < self.INTERVAL:
            return
        self.shown = now
        rate = p.bytes / max(now - p.started, 1e-3) / 1e6
        text = (
            f"[{p.repositories_done}/{p.repositories}] {p.repository}: {p.images} image(s), "
            f"{p.blobs} blob(s), {p.bytes / 1e6:.1f} MB at {rate:.1f} MB/s"
        )
        self.stream.write("\r" + text[:160] + "\x1b[K")
        self.stream.flush()
        self.dirty = True

    def clear(self) -> None:
        if self.dirty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _run(
    open_source: Callable[[Config], Awaitable[Source]],
    common: _Common,
    *,
    link: bool = True,
    untagged: bool = False,
) -> None:
    from appliance.importer.service import Importer  # noqa: PLC0415
    from appliance.importer.target import open_target  # noqa: PLC0415
    from appliance.proxy import settings as proxy_settings  # noqa: PLC0415

    try:
        options = _options(common, link=link, untagged=untagged)
    except BerthError as e:
        fail(e.message)
    line = ProgressLine(sys.stderr)

    async def run() -> Any:
        config = load_config(common.config_path, data_dir=common.data_dir)
        proxies = proxy_settings.parse(config)
        source = await open_source(config)  # a bad source is refused before Berth is opened
        try:
            target = await open_target(config)
            try:
                importer = Importer(
                    target.registry, source, options, proxies=proxies, on_progress=line
                )
                return await importer.run()
            finally:
                target.close()
        finally:
            await source.aclose()

    try:
        report = trio.run(run)
    except BerthError as e:
        line.clear()
        fail(e.message)
    except KeyboardInterrupt:
        line.clear()
        click.echo("berth: interrupted; run the same import again to finish it", err=True)
        sys.exit(130)
    line.clear()
    if common.as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        for text in report.lines():
            click.echo(text)
    sys.exit(0 if report.ok else 1)

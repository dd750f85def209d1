"""Build OCI images offline and push small ones with plain HTTP, for the benchmarks.

Nothing here needs a container runtime or a network: layers are tar.gz archives of random
bytes written with `tarfile`/`gzip`, laid out as an OCI image layout (`oci-layout`,
`index.json`, `blobs/sha256/...`) that skopeo reads as `oci:<dir>:<tag>`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# What `docker pull` / containerd list, OCI first.
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """An image held in memory: its blobs by digest and its manifest bytes."""

    manifest: bytes
    config_digest: str
    layer_digests: list[str]
    blobs: dict[str, bytes] = field(repr=False)

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest) + sum(len(b) for b in self.blobs.values())


def random_layer(index: int, payload_bytes: int) -> tuple[bytes, str]:
    """A gzip-compressed tar holding one file of random bytes; returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"bench/layer-{index:03d}.bin")
        info.size = payload_bytes
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(os.urandom(payload_bytes)))
    tar_bytes = raw.getvalue()
    # Random bytes do not compress: level 1 keeps building the image fast.
    blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return blob, sha256_digest(tar_bytes)


def build_image(layers: int, layer_payload_bytes: int) -> Image:
    """An OCI image with `layers` distinct random layers (fresh random bytes on every call)."""
    return build_image_sized([layer_payload_bytes] * layers)


def build_image_sized(layer_payload_bytes: list[int]) -> Image:
    """An OCI image with one random layer per size given (fresh random bytes on every call)."""
    layers = len(layer_payload_bytes)
    blobs: dict[str, bytes] = {}
    layer_descs = []
    diff_ids = []
    for i, size in enumerate(layer_payload_bytes):
        blob, diff_id = random_layer(i, size)
        digest = sha256_digest(blob)
        blobs[digest] = blob
        diff_ids.append(diff_id)
        layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(blob)})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "berth bench"} for _ in range(layers)],
        },
        separators=(",", ":"),
    ).encode()
    config_digest = sha256_digest(config)
    blobs[config_digest] = config
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layer_descs,
        },
        indent=2,
    ).encode()
    return Image(manifest, config_digest, [d["digest"] for d in layer_descs], blobs)


def write_layout(image: Image, directory: Path, tag: str) -> Path:
    """Write `image` as an OCI image layout in `directory` (read it as `oci:<dir>:<tag>`)."""
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in [*image.blobs.items(), (image.manifest_digest, image.manifest)]:
        (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": len(image.manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


class RegistryClient:
    """Just enough of the distribution API to push an image: POST + single PUT per blob.

    Speaks the Docker token flow when the registry asks for it: `/v2/` answers 401 with
    `WWW-Authenticate: Bearer realm=...,service=...`; a token for a repository's scope is then
    fetched from the realm with HTTP Basic `credentials`. A registry that answers `/v2/` with 200
    is used anonymously; one that challenges with `Basic` gets the credentials directly.
    """

    def __init__(
        self, base_url: str, credentials: tuple[str, str] | None = None, timeout: float = 60
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.credentials = credentials
        self._challenge: dict[str, str] | None = None

    @property
    def auth_kind(self) -> str:
        """anonymous, basic or bearer: how this registry wants requests authenticated."""
        self._probe()
        assert self._challenge is not None
        return {"none": "anonymous"}.get(self._challenge["scheme"], self._challenge["scheme"])

    def _probe(self) -> None:
        if self._challenge is not None:
            return
        status, headers, _ = self._request("GET", "/v2/", auth=False)
        challenge = headers.get("www-authenticate", "")
        if status == 200 or not challenge:
            self._challenge = {"scheme": "none"}
        else:
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            self._challenge = {"scheme": challenge.split(" ", 1)[0].lower(), **params}

    def _basic(self) -> str:
        if self.credentials is None:
            raise RuntimeError(f"{self.base_url} asks for credentials and none were given")
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def basic_headers(self) -> dict[str, str]:
        """HTTP Basic credentials on every request (nothing for an anonymous registry)."""
        self._probe()
        assert self._challenge is not None
        return {} if self._challenge["scheme"] == "none" else {"Authorization": self._basic()}

    def auth_headers(self, repo: str, actions: str = "pull,push") -> dict[str, str]:
        """Headers that let a request act on `repo`: nothing, Basic, or a fresh bearer token
        fetched the way `docker` does (`account`, `scope`, `service` and Basic credentials)."""
        self._probe()
        assert self._challenge is not None
        scheme = self._challenge["scheme"]
        if scheme == "none":
            return {}
        if scheme == "basic":
            return {"Authorization": self._basic()}
        query = urllib.parse.urlencode(
            {
                "account": self.credentials[0] if self.credentials else "",
                "scope": f"repository:{repo}:{actions}",
                "service": self._challenge.get("service", ""),
            }
        )
        status, _, body = self._request(
            "GET",
            f"{self._challenge['realm']}?{query}",
            headers={"Authorization": self._basic()},
            auth=False,
        )
        if status != 200:
            raise RuntimeError(f"token for {repo}: {status} {body[:200]!r}")
        doc = json.loads(body)
        return {"Authorization": f"Bearer {doc.get('token') or doc['access_token']}"}

    def _request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        auth: bool = True,
        repo: str = "",
    ) -> tuple[int, dict[str, str], bytes]:
        if auth:
            headers = {**self.auth_headers(repo), **(headers or {})}
        parsed = urllib.parse.urlsplit(urllib.parse.urljoin(self.base_url + "/", url))
        conn = http.client.HTTPConnection(parsed.netloc, timeout=self.timeout)
        try:
            target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        status, headers, body = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo=repo)
        if status != 202 or "location" not in headers:
            raise RuntimeError(f"POST upload for {repo}: {status} {body[:200]!r}")
        location = headers["location"]
        sep = "&" if "?" in location else "?"
        status, _, body = self._request(
            "PUT",
            f"{location}{sep}digest={digest}",
            body=data,
            headers={"Content-Type": "application/octet-stream"},
            repo=repo,
        )
        if status != 201:
            raise RuntimeError(f"PUT blob {digest} to {repo}: {status} {body[:200]!r}")
        return digest

    def push_image(self, repo: str, tag: str, image: Image) -> str:
        for data in image.blobs.values():
            self.push_blob(repo, data)
        status, _, body = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{tag}",
            body=image.manifest,
            headers={"Content-Type": OCI_MANIFEST},
            repo=repo,
        )
        if status != 201:
            raise RuntimeError(f"PUT manifest {repo}:{tag}: {status} {body[:200]!r}")
        return image.manifest_digest

    def manifest_status(self, repo: str, reference: str, method: str = "GET") -> int:
        status, _, _ = self._request(
            method,
            f"/v2/{repo}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
            repo=repo,
        )
        return status

    def blob_status(self, repo: str, digest: str) -> int:
        status, _, _ = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo=repo)
        return status

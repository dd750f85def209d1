"""The storage key tree, drawn once:

    <root>/blobs/<algorithm>/<ab>/<hex>/<storage-id>   a committed blob; the blobs row records
                                                       this key. A fresh storage-id per commit,
                                                       so a blob re-uploaded while an older copy
                                                       is being collected never loses its bytes.
    <root>/uploads/<upload-id>/data                    an upload in progress (filesystem: the
                                                       file; S3: where its multipart upload
                                                       completes before the copy to blobs/)
    <root>/uploads/<upload-id>/state                   S3 only: the upload's parts and tail
    <root>/uploads/<upload-id>/tail/<segment>          S3 only: bytes not yet in a part

Keys are '/'-separated and relative to the store's root (S3: to the bucket's key prefix). On S3
a monolithic upload may run its multipart upload at its final blobs/ key directly.
"""

from __future__ import annotations

import re
import uuid

from appliance.oci.digest import Digest

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


def new_upload_id() -> str:
    return uuid.uuid4().hex


def is_upload_id(value: str) -> bool:
    return bool(_UPLOAD_ID.match(value))


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}/data"


def blob_key(digest: Digest) -> str:
    """A new, unique key for committing `digest`."""
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/{uuid.uuid4().hex}"

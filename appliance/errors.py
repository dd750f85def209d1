"""Domain exceptions. They know nothing of HTTP; `api/codes.py` maps them to wire errors.

BerthError
├── ConfigError                 a setting is missing, unknown or of the wrong type
├── InvalidName                 a repository name or tag breaks the grammar
│   └── InvalidPattern          a user's tag pattern is too long or not for the bounded engine
├── InvalidDigest               a digest is malformed, of an unknown algorithm, or wrong
├── SizeInvalid                 a length does not match what was declared
├── RangeInvalid                a chunk does not start where the upload ends
├── NotFound
│   ├── RepositoryNotFound
│   ├── BlobNotFound
│   ├── ManifestNotFound
│   └── UploadNotFound
├── ManifestInvalid             malformed JSON, schema or media type
├── ManifestBlobUnknown         a manifest names a blob or child the repository lacks
├── ManifestTooLarge
├── InvalidInput                a management request's value is malformed, mistyped or too big
│   ├── BodyTooLarge            a management request body is over its limit
│   └── UnsupportedMediaType    a management request body is not sent as JSON
├── Conflict                    the change would break something that depends on it
│   └── BlobInUse               a manifest of the repository still needs the blob
├── Denied                      a rule refuses the change (immutable tag, quota)
├── Unsupported                 a valid request this registry does not do
├── TooMany                     a per-account limit on open resources is reached (uploads)
├── TooSlow                     a client sent its request body too slowly
├── StorageFull                 the blob store has no space left
└── Unavailable                 a backend cannot be reached right now
"""

from __future__ import annotations


class BerthError(Exception):
    """Base of every error Berth raises on purpose. `detail` is safe to show to a client."""

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ConfigError(BerthError):
    pass


class InvalidName(BerthError):
    pass


class InvalidPattern(InvalidName):
    """A user-supplied pattern (immutable tag rule, cleanup-policy regex) is empty, too long,
    or uses syntax the linear-time engine does not have; the message says which."""


class InvalidDigest(BerthError):
    pass


class SizeInvalid(BerthError):
    pass


class RangeInvalid(BerthError):
    """A chunk does not continue the upload; `size` is how many bytes the upload holds."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class NotFound(BerthError):
    pass


class RepositoryNotFound(NotFound):
    pass


class BlobNotFound(NotFound):
    pass


class ManifestNotFound(NotFound):
    pass


class UploadNotFound(NotFound):
    pass


class ManifestInvalid(BerthError):
    pass


class ManifestBlobUnknown(BerthError):
    pass


class ManifestTooLarge(BerthError):
    pass


class InvalidInput(BerthError):
    """A value of a management request (a JSON body, a field of it, a query parameter) is
    malformed, of the wrong type or out of range; the message names it."""


class BodyTooLarge(InvalidInput):
    pass


class UnsupportedMediaType(InvalidInput):
    pass


class Conflict(BerthError):
    pass


class BlobInUse(Conflict):
    """A blob cannot leave a repository while one of its manifests needs it; `detail` names
    one such manifest (`{"manifest": digest}`)."""


class Denied(BerthError):
    """A configured rule refuses the change; the message names the rule (or the limit)."""


class Unsupported(BerthError):
    pass


class TooMany(BerthError):
    """A per-account limit on things held open at once (upload sessions) is reached; it frees
    itself as they complete or expire."""


class TooSlow(BerthError):
    """The client sent its request body more slowly than the server accepts."""


class StorageFull(BerthError):
    pass


class Unavailable(BerthError):
    pass

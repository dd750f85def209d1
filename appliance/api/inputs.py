"""Untrusted values of management requests: JSON bodies, their fields, and numeric ids.

Every `/api/v1` body goes through `decode_object` (read by `api.manage.reply.json_body`): it
must be sent as `application/json` (else UnsupportedMediaType, a 415), be at most MAX_BODY
bytes (BodyTooLarge, a 413), nest at most MAX_DEPTH deep, hold no NaN, Infinity or number too
large for a float, and be an object (InvalidInput, a 400). Its fields are then taken with the typed
getters below, which name the field and the type wanted: a value of the wrong type is a 400,
never a Python exception (`float([1])`) turned into a 500 or into its own text.

`path_id` bounds numeric ids in paths and forms to what the database holds (64 bits): any other
text names nothing; `parse_time` reads a time filter. Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from appliance.errors import BodyTooLarge, InvalidInput, UnsupportedMediaType
from appliance.oci.mediatypes import base

MAX_BODY = 1 << 20  # bytes; the largest management body (a user, a policy) is well under 1 KiB
MAX_DEPTH = 32  # arrays and objects inside one another
MAX_ID = 2**63 - 1  # the largest id a BIGINT (and SQLite's INTEGER) holds
JSON = "application/json"


def check_content_type(content_type: str | None, has_body: bool) -> None:
    """A management request that carries a body, or says what its body is, must say JSON:
    browsers send cross-site forms and `text/plain` without asking first, JSON they do not."""
    if (has_body or content_type) and base(content_type) != JSON:
        shown = base(content_type)[:60] or "none"
        raise UnsupportedMediaType(
            f"the body must be sent as {JSON} (Content-Type: {shown})", {"expected": JSON}
        )


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:30]} is too large")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidInput(f"{name} is not a JSON number")


def depth(value: Any) -> int:
    """How deep arrays and objects nest in `value` (without recursion)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


def decode_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw` (see the module docstring); raises InvalidInput."""
    if len(raw) > MAX_BODY:
        raise BodyTooLarge(f"the body is larger than {MAX_BODY} bytes", {"limit": MAX_BODY})
    if not raw.strip():
        raise InvalidInput("the body must be a JSON object; it is empty")
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidInput(f"the body nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
    except ValueError:  # an integer of more digits than Python converts
        raise InvalidInput("the body holds a number too long to read") from None
    if depth(value) > MAX_DEPTH:
        raise InvalidInput(f"the body nests deeper than {MAX_DEPTH} levels")
    if not isinstance(value, dict):
        raise InvalidInput("the body must be a JSON object")
    return value


# -- fields -------------------------------------------------------------------------------------


def text(data: dict[str, Any], name: str, default: str | None = None) -> str | None:
    """A string field; `default` when absent or null."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string", {"field": name})
    return value


def required_text(data: dict[str, Any], name: str) -> str:
    value = text(data, name)
    if not value:
        raise InvalidInput(f"{name} is required (a string)", {"field": name})
    return value


def flag(data: dict[str, Any], name: str, default: bool = False) -> bool:
    """A boolean field: `true` or `false` (not "false", not 0)."""
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", {"field": name})
    return value


def number(data: dict[str, Any], name: str) -> float | None:
    """A number field (integer or not), None when absent or null."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number or null", {"field": name})
    if isinstance(value, int) and abs(value) > MAX_ID:
        raise InvalidInput(f"{name} is too large", {"field": name})
    return float(value)


def whole(data: dict[str, Any], name: str, minimum: int = 0) -> int | None:
    """A whole-number field from `minimum` to MAX_ID, None when absent or null."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_ID:
        raise InvalidInput(
            f"{name} must be a whole number from {minimum} to {MAX_ID}", {"field": name}
        )
    return value


def strings(data: dict[str, Any], name: str) -> list[str]:
    """A field holding a list of strings; empty when absent or null."""
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{name} must be a list of strings", {"field": name})
    return value


def string_map(data: dict[str, Any], name: str) -> dict[str, str]:
    """A field holding an object whose values are strings; empty when absent or null."""
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidInput(f"{name} must be an object of strings", {"field": name})
    return value


def mapping(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A field holding an object (checked further by its user), None when absent or null."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be an object", {"field": name})
    return value


# -- ids ----------------------------------------------------------------------------------------


def path_id(text: str) -> int | None:
    """A numeric id from a path or a form: 1 to MAX_ID in ASCII digits, else None (it names
    nothing). `str.isdigit` alone also takes `²` and other digits `int()` refuses."""
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None


def parse_time(text: str | None) -> float | None:
    """A time filter: seconds since the epoch, or an ISO 8601 date or time (UTC if no zone)."""
    if text is None or text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise InvalidInput(f"not a time: {text[:50]!r}")
        return seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"not a time: {text[:50]!r} (use seconds since the epoch or ISO 8601)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


__all__ = [
    "MAX_BODY",
    "MAX_DEPTH",
    "check_content_type",
    "decode_object",
    "depth",
    "flag",
    "mapping",
    "number",
    "parse_time",
    "path_id",
    "required_text",
    "string_map",
    "strings",
    "text",
    "whole",
]

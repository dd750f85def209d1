"""Answers and request bodies of the management API (`/api/v1`): its JSON responses, its
error shape (`{"error": message}`) and the one reader of JSON bodies.

Every route group builds its answers with these; the status of a domain error comes from
`api/codes.py` (`routing.py` applies it), not from here.
"""

from __future__ import annotations

import json
from typing import Any

from quart import Response, request

from appliance.api import inputs
from appliance.errors import BodyTooLarge


def json_response(value: Any, status: int = 200) -> Response:
    """`value` as a JSON answer."""
    return Response(response=json.dumps(value), status=status, content_type="application/json")


def error(status: int, message: str) -> Response:
    """The management API's error shape: `{"error": message}`."""
    return json_response({"error": message}, status)


def forbidden(message: str = "you may not do this") -> Response:
    return error(403, message)


def has_body() -> bool:
    """Whether the request carries a body (a length, or chunks)."""
    length = request.content_length
    return bool(length) or "chunked" in request.headers.get("transfer-encoding", "").lower()


async def json_body(required: bool = True) -> dict[str, Any]:
    """The request's JSON object, read through `inputs.decode_object` (sent as JSON, at most
    `inputs.MAX_BODY` bytes, bounded depth); without a body, {} unless `required`."""
    length = request.content_length
    if length is not None and length > inputs.MAX_BODY:
        raise BodyTooLarge(f"the body is larger than {inputs.MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.body:
        raw += chunk
        if len(raw) > inputs.MAX_BODY:
            raise BodyTooLarge(f"the body is larger than {inputs.MAX_BODY} bytes")
    if not raw and not required:
        return {}
    return inputs.decode_object(bytes(raw))

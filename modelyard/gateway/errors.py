from __future__ import annotations

import orjson
from starlette.responses import Response

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                                   "param": param, "code": code}})


def openai_shaped(status: int, body: bytes) -> bytes:
    """An engine's error answer in the API's shape (`{"error": {...}}`), for the SDKs: as it is when it has that
    shape, else its `detail` (FastAPI's, aiohttp's), `message`, `error` string or text as the message."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return body
    found = next((data[k] for k in ("detail", "message", "error") if k in data), None) if isinstance(data, dict) \
        else None
    if found is None:
        message = body[:1000].decode("utf-8", "replace").strip() or f"the engine answered {status}"
    else:
        message = found if isinstance(found, str) else orjson.dumps(found).decode()
    return error_body(status, message, "upstream_" + str(status))


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> Response:
    """An error in the shape the OpenAI API uses, which its SDK turns into the matching exception."""
    return Response(error_body(status, message, code, param), status_code=status, media_type="application/json",
                    headers=headers)


def sse_error(message: str, code: str = "upstream_error") -> bytes:
    return b"data: " + error_body(502, message, code) + b"\n\n"

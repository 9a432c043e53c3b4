"""One error shape for the whole API: OpenAI's {"error": {message, type, param, code}}.

Every failure becomes an APIError (or is mapped to one here), so clients always get the same
body and a meaningful status: 4xx for what the caller can fix, 503 + Retry-After for what will
pass on its own.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("leanserve.errors")


@dataclass
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist. GET /v1/models lists the models served here.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def unavailable(message: str, retry_after_s: int) -> APIError:
    return APIError(
        503,
        message,
        "service_unavailable",
        None,
        "engine_unavailable",
        {"Retry-After": str(retry_after_s)},
    )


def sse_error_event(error: APIError) -> bytes:
    """The one chunk a stream sends when it fails after it started, before its [DONE]."""
    return b"data: " + json.dumps(error.body()).encode() + b"\n\n"


# Pydantic adds the member of a union that failed (`str`, `list[str]`) to the location.
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|[\w-]+\[.*\])$")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """(message, param, code) for the first problem found."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None, "invalid_value"
    first = errors[0]
    # Names come from the caller: cut them short before they are echoed.
    loc = [
        str(p)[:64] for p in first.get("loc", ()) if p != "body" and not _UNION_TAG.match(str(p))
    ]
    if first.get("type") == "json_invalid":
        return f"Malformed JSON body: {first.get('msg', 'could not parse')}.", None, "invalid_value"
    if first.get("type") == "missing" and not loc:
        return "The request body is missing: send a JSON object.", None, "invalid_value"
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        from server.inference.protocol import FIELD_HINTS

        hint = FIELD_HINTS.get(loc[-1], "this endpoint does not take it") if loc else ""
        return f"Unknown field '{param}': {hint}.", param, "unknown_field"
    message = first.get("msg", "invalid value")
    text = f"Invalid value for '{param}': {message}." if param else f"{message}."
    return text, param, "invalid_value"


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, param, code = _validation_message(exc)
    return JSONResponse(error_body(message, "invalid_request_error", param, code), 400)


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(
        error_body(str(exc.detail), kind, None, None),
        exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("Internal server error.", "server_error", None, None), 500)


def install(app) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)

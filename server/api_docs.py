"""The error responses every route documents in the OpenAPI schema."""

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        404: "Unknown model",
        429: "Rate limited",
        503: "Engine not ready; see Retry-After",
    }.items()
}

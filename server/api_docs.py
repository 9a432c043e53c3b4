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
        403: "The key may not do this",
        404: "Unknown model, variant or experiment",
        409: "Conflicts with the current state",
        413: "Request body too large",
        429: "Rate limited or overloaded; see Retry-After",
        502: "The engine failed",
        503: "No engine ready; see Retry-After",
        504: "The engine did not answer in time",
    }.items()
}

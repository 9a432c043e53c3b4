"""API keys: optional Bearer keys for /v1, and a separate admin key for writes to /v1/variants
and /v1/experiments. Keys come from settings or files and are compared in constant time."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from server.errors import APIError
from server.settings import AuthSettings
from server.state import AppState, get_state


def _read_keys(path: Path | None) -> list[str]:
    if path is None:
        return []
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def api_keys(auth: AuthSettings) -> list[str]:
    return [*auth.api_keys, *_read_keys(auth.api_keys_file)]


def admin_key(auth: AuthSettings) -> str | None:
    keys = _read_keys(auth.admin_key_file)
    return auth.admin_key or (keys[0] if keys else None)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: list[str]) -> bool:
    # Compare against every key, so the time taken does not tell which one nearly matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def require_api_key(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    keys = state.keys.api
    if not keys:
        return
    token = _bearer(request)
    if token is None or not (
        _matches(token, keys) or (state.keys.admin and _matches(token, [state.keys.admin]))
    ):
        raise APIError(
            401,
            "Missing or invalid API key: send Authorization: Bearer <key>.",
            "authentication_error",
            None,
            "invalid_api_key",
            {"WWW-Authenticate": "Bearer"},
        )


def require_admin(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    token = _bearer(request)
    if state.keys.admin is None:
        raise APIError(
            403,
            "Admin endpoints are disabled: no admin key is configured.",
            "permission_error",
            None,
            "admin_disabled",
        )
    if token is None:
        raise APIError(
            401,
            "This endpoint needs the admin key: Authorization: Bearer <admin key>.",
            "authentication_error",
            None,
            "invalid_api_key",
            {"WWW-Authenticate": "Bearer"},
        )
    if not _matches(token, [state.keys.admin]):
        raise APIError(
            403,
            "This key may not change variants or experiments.",
            "permission_error",
            None,
            "not_admin",
        )


ApiKey = Depends(require_api_key)
Admin = Depends(require_admin)

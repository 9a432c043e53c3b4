"""API keys: optional Bearer keys for /v1, and a separate admin key for writes to /v1/variants
and /v1/experiments. Keys come from settings or files and are compared in constant time.

Who a request is, for the rate limit, is settled here: the key that matched (however the
header spelled it), or the client address when keys are off. Failed authentications are
limited per client address, apart from the callers' own buckets.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, NoReturn

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


def metrics_key(auth: AuthSettings) -> str | None:
    keys = _read_keys(auth.metrics_key_file)
    return auth.metrics_key or (keys[0] if keys else None)


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


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refuse(request: Request, state: AppState, error: APIError) -> NoReturn:
    """Count a failed authentication against the client's address (429 past the limit)."""
    state.auth_failures.check(f"addr:{client_address(request)}")
    raise error


def require_api_key(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    keys = state.keys.api
    if not keys:
        request.state.caller = f"addr:{client_address(request)}"
        return
    token = _bearer(request)
    if token is None or not (
        _matches(token, keys) or (state.keys.admin and _matches(token, [state.keys.admin]))
    ):
        _refuse(
            request,
            state,
            APIError(
                401,
                "Missing or invalid API key: send Authorization: Bearer <key>.",
                "authentication_error",
                None,
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            ),
        )
    request.state.caller = f"key:{token}"  # the key itself: one bucket however it was sent


def require_admin(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    token = _bearer(request)
    if state.keys.admin is None:
        _refuse(
            request,
            state,
            APIError(
                403,
                "Admin endpoints are disabled: no admin key is configured.",
                "permission_error",
                None,
                "admin_disabled",
            ),
        )
    if token is None:
        _refuse(
            request,
            state,
            APIError(
                401,
                "This endpoint needs the admin key: Authorization: Bearer <admin key>.",
                "authentication_error",
                None,
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            ),
        )
    if not _matches(token, [state.keys.admin]):
        _refuse(
            request,
            state,
            APIError(
                403,
                "This key may not change variants or experiments.",
                "permission_error",
                None,
                "not_admin",
            ),
        )
    request.state.caller = f"key:{token}"


def is_admin(request: Request, state: AppState) -> bool:
    """Whether the request carries the admin key (for admin-only detail in read endpoints)."""
    token = _bearer(request)
    return bool(state.keys.admin and token and _matches(token, [state.keys.admin]))


def sees_detail(request: Request, state: AppState) -> bool:
    """Whether a read endpoint may show host paths and raw errors: to the admin key, or to
    anyone on a gateway with no keys at all (it has no one to hide them from)."""
    if not state.keys.api and not state.keys.admin:
        return True
    return is_admin(request, state)


def has_api_key(request: Request, state: AppState) -> bool:
    """Whether the request carries an API key or the admin key."""
    token = _bearer(request)
    keys = [*state.keys.api, *([state.keys.admin] if state.keys.admin else [])]
    return bool(token and keys and _matches(token, keys))


def require_metrics_access(
    request: Request, state: Annotated[AppState, Depends(get_state)]
) -> None:
    """/metrics is open only while no metrics key and no API keys are set; then it takes the
    metrics key, or (with API keys set) an API key or the admin key."""
    keys = [*([state.keys.metrics] if state.keys.metrics else [])]
    if state.keys.api:
        keys += [*state.keys.api, *([state.keys.admin] if state.keys.admin else [])]
    if not keys:
        return
    token = _bearer(request)
    if token is None or not _matches(token, keys):
        _refuse(
            request,
            state,
            APIError(
                401,
                "/metrics needs the metrics key or an API key: Authorization: Bearer <key>.",
                "authentication_error",
                None,
                "invalid_api_key",
                {"WWW-Authenticate": "Bearer"},
            ),
        )


def rate_limit(request: Request, state: Annotated[AppState, Depends(get_state)]) -> None:
    """Count the request against its caller's bucket; runs after an auth dependency."""
    caller = getattr(request.state, "caller", None) or f"addr:{client_address(request)}"
    state.limiter.check(caller)


ApiKey = Depends(require_api_key)
Admin = Depends(require_admin)
RateLimited = Depends(rate_limit)
MetricsAccess = Depends(require_metrics_access)

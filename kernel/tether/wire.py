"""How errors and typed values cross the HTTP APIs between Tether processes.

A server turns a :class:`~tether.errors.TetherError` into a JSON body and a status code; the
client turns the body back into the same exception class, so a user of ``tetherctl`` on another
machine sees the same one-line message as one on the auth host.

Clients import this module for :func:`error_from_json`; starlette, which only servers use,
loads in the server's functions.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tether import errors

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

__all__ = [
    "error_from_json",
    "error_status",
    "error_to_json",
    "exception_handlers",
    "number_field",
    "optional_string_field",
    "query_seconds",
    "read_json_object",
    "string_field",
]

log = logging.getLogger(__name__)

_STATUS: dict[type[errors.TetherError], int] = {
    errors.AccessDenied: 403,
    errors.TrustError: 401,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.CompareFailed: 409,
    errors.ResourceError: 400,
    errors.ConfigError: 400,
    errors.RateLimited: 429,
    errors.TargetOffline: 503,
    errors.AuditUnavailable: 503,
}


def error_status(exc: errors.TetherError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


def error_to_json(exc: errors.TetherError) -> dict[str, Any]:
    """``exc`` as ``{"error": {"type": CODE, "message": ..., "hint": ...}}``, its code from
    :data:`tether.errors.ERROR_CODES`."""
    return {"error": {"type": errors.error_code(exc), "message": exc.message, "hint": exc.hint}}


def error_from_json(body: Any, status: int) -> errors.TetherError:
    """The error an :func:`error_to_json` body describes, as its class (a code the kernel does
    not know is a :class:`~tether.errors.TetherError`)."""
    try:
        err = body["error"]
        hint = err.get("hint")
        return errors.error_class(err.get("type"))(
            str(err["message"]), hint=hint if isinstance(hint, str) else None
        )
    except (KeyError, TypeError, AttributeError):
        return errors.TetherError(f"unexpected response from server (HTTP {status})")


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or a TetherError saying what is wrong with it."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.TetherError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise errors.TetherError("request body must be a JSON object")
    return data


def string_field(data: dict[str, Any], key: str) -> str:
    """``data[key]`` when it is a non-empty string, else a TetherError naming the field."""
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise errors.TetherError(f"request field {key!r} must be a non-empty string")
    return value


def optional_string_field(data: dict[str, Any], key: str) -> str | None:
    """``data[key]`` when it is a non-empty string, None when absent or null."""
    if data.get(key) is None:
        return None
    return string_field(data, key)


def number_field(data: dict[str, Any], key: str) -> float | None:
    """``data[key]`` as a finite number, None when absent or null, else a TetherError.

    ``true`` is not a number here, and neither are ``NaN`` and ``1e999`` (which Python's JSON
    parser accepts and which would overflow any duration built from them).
    """
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise errors.TetherError(f"request field {key!r} must be a finite number")
    return float(value)


def query_seconds(value: str | None, name: str) -> float:
    """A query parameter that counts seconds (absent: 0), else a TetherError."""
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise errors.TetherError(
            f"query parameter {name!r} must be a number of seconds, got {value!r}"
        )
    return seconds


async def _on_tether_error(request: Request, exc: Exception) -> JSONResponse:
    from starlette.responses import JSONResponse

    assert isinstance(exc, errors.TetherError)
    return JSONResponse(error_to_json(exc), status_code=error_status(exc))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own 404 and 405 answers are plain text; clients expect the JSON error body.
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    assert isinstance(exc, HTTPException)
    error: errors.TetherError
    if exc.status_code == 404:
        error = errors.NotFound(f"no such endpoint: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        allowed = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
        error = errors.TetherError(
            f"method {request.method} is not allowed on {request.url.path}",
            hint=f"use {allowed}" if allowed else None,
        )
    else:
        error = errors.TetherError(f"{exc.detail} ({request.method} {request.url.path})")
    return JSONResponse(error_to_json(error), status_code=exc.status_code, headers=exc.headers)


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    # The peer went away before sending its whole request: nobody is left to answer, and it
    # is not a server bug, so it gets one log line instead of a traceback.
    from starlette.responses import Response

    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    log.debug("%s went away during %s %s", client, request.method, request.url.path)
    return Response(status_code=400)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug must not take the daemon down or leak a traceback to the client: log it in full
    # and answer with one line that says where to look.
    from starlette.responses import JSONResponse

    log.error("internal error serving %s %s", request.method, request.url.path, exc_info=exc)
    body = error_to_json(
        errors.TetherError(
            f"internal error ({type(exc).__name__}) in the server",
            hint="see the daemon's log for the traceback",
        )
    )
    return JSONResponse(body, status_code=500)


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette exception handlers shared by every Tether HTTP API."""
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    return {
        errors.TetherError: _on_tether_error,
        HTTPException: _on_http_error,
        ClientDisconnect: _on_client_disconnect,
        Exception: _on_unexpected,
    }

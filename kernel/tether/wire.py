"""How errors and typed values cross the HTTP APIs between Tether processes.

A server turns a :class:`~tether.errors.TetherError` into a JSON body and a status code; the
client turns the body back into the same exception class, so a user of ``tetherctl`` on another
machine sees the same one-line message as one on the auth host.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from tether import errors

__all__ = [
    "error_from_json",
    "error_status",
    "error_to_json",
    "exception_handlers",
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
}

_CLASSES: dict[str, type[errors.TetherError]] = {
    cls.__name__: cls
    for cls in (
        errors.TetherError,
        errors.AccessDenied,
        errors.TrustError,
        errors.NotFound,
        errors.AlreadyExists,
        errors.CompareFailed,
        errors.ResourceError,
        errors.ConfigError,
    )
}


def error_status(exc: errors.TetherError) -> int:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400


def error_to_json(exc: errors.TetherError) -> dict[str, Any]:
    # Subclasses defined elsewhere (pki's CertificateExpired, ...) travel as their nearest
    # kernel base so the client can rebuild them.
    name = next((c.__name__ for c in type(exc).__mro__ if c.__name__ in _CLASSES), "TetherError")
    return {"error": {"type": name, "message": exc.message, "hint": exc.hint}}


def error_from_json(body: Any, status: int) -> errors.TetherError:
    try:
        err = body["error"]
        cls = _CLASSES.get(str(err.get("type")), errors.TetherError)
        return cls(str(err["message"]), hint=err.get("hint"))
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


async def _on_tether_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.TetherError)
    return JSONResponse(error_to_json(exc), status_code=error_status(exc))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # A bug must not take the daemon down or leak a traceback to the client: log it in full
    # and answer with one line that says where to look.
    log.error("internal error serving %s %s", request.method, request.url.path, exc_info=exc)
    body = error_to_json(
        errors.TetherError(
            f"internal error ({type(exc).__name__}) in the server",
            hint="see the daemon's log for the traceback",
        )
    )
    return JSONResponse(body, status_code=500)


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[JSONResponse]]]:
    """Starlette exception handlers shared by every Tether HTTP API."""
    return {errors.TetherError: _on_tether_error, Exception: _on_unexpected}

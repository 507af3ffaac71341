"""Kubernetes ``Status`` objects: how an API server says no, so kubectl prints Tether's
refusals as it prints the server's own (``Error from server (Forbidden): ...``)."""

from __future__ import annotations

import json

__all__ = ["REASONS", "status_body"]

#: The ``reason`` Kubernetes gives with each code.
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "RequestEntityTooLarge",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(code: int, message: str) -> bytes:
    """The JSON of a failed ``Status`` with ``code`` and ``message``."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": REASONS.get(code, "Unknown"),
            "code": code,
        }
    ).encode()

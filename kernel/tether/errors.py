"""The error types a user of Tether can meet.

Every error a person sees is one line: what is wrong, then what to do about it. The CLIs print
``str(error)`` and exit non-zero; ``--debug`` adds the traceback. Code raises the most specific
subclass so that callers (and tests) can tell failures apart without parsing messages.

Errors cross process boundaries (HTTP API bodies, the front door's answer, a tunnel stream's
refusal) as a code from :data:`ERROR_CODES` with the message and the hint, and the receiver
rebuilds the same class, so a user sees the same line and the same hint wherever the error
happened.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "ERROR_CODES",
    "AccessDenied",
    "AlreadyExists",
    "AmbiguousTarget",
    "AuditUnavailable",
    "CompareFailed",
    "ConfigError",
    "ConnectionLost",
    "NotFound",
    "PluginError",
    "RateLimited",
    "ResourceError",
    "TargetOffline",
    "TetherError",
    "TrustError",
    "Unreachable",
    "error_class",
    "error_code",
]


class TetherError(Exception):
    """Base of every error Tether raises on purpose.

    :param message: what is wrong, one line, no trailing period needed.
    :param hint: what the user can do about it; appended after the message.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ConfigError(TetherError):
    """The configuration file is unreadable or says something impossible."""


class ResourceError(TetherError):
    """A resource document is malformed: unknown kind, missing field, wrong type."""


class PluginError(TetherError):
    """A plugin failed to load or broke the hook contract."""


class NotFound(TetherError):
    """The named thing does not exist (or is hidden from the caller)."""


class AlreadyExists(TetherError):
    """Creating something that exists already, without ``--force``."""


class CompareFailed(TetherError):
    """A compare-and-swap found a different revision than the caller expected."""


class AccessDenied(TetherError):
    """The caller's identity is not allowed to do this; the message says which check failed."""


class RateLimited(TetherError):
    """The client made more requests than the server lets one address make; try again later."""


class TrustError(TetherError):
    """A certificate or peer could not be verified against the trusted authorities."""


class Unreachable(TetherError):
    """No connection could be made to a server: refused, timed out, or no such host.

    :param reason: why, in the operating system's words (``Connection refused``), for a
        caller that names several addresses in one message.
    """

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


class ConnectionLost(TetherError):
    """A connection to a server failed once made (reset, closed, timed out reading): unlike
    :class:`Unreachable`, the request may have reached the server, and been acted on."""


class AmbiguousTarget(TetherError):
    """More than one target answers to what the user typed."""


class TargetOffline(TetherError):
    """The target (or its cluster) is known but cannot be reached right now."""


class AuditUnavailable(TetherError):
    """An action that must be audited was refused: an audit sink could not record its event
    (``auth_service.audit.on_failure: refuse``). Try again once the audit log is back."""


#: The code each error class travels under between Tether processes. The codes are part of
#: the wire formats (``docs/tunnel-protocol.md``) and never change; a receiver looks a code
#: up here and nowhere else, and an unknown one is a plain :class:`TetherError`.
ERROR_CODES: Final[Mapping[str, type[TetherError]]] = MappingProxyType(
    {
        "TetherError": TetherError,
        "AccessDenied": AccessDenied,
        "TrustError": TrustError,
        "NotFound": NotFound,
        "AlreadyExists": AlreadyExists,
        "CompareFailed": CompareFailed,
        "ResourceError": ResourceError,
        "ConfigError": ConfigError,
        "RateLimited": RateLimited,
        "AmbiguousTarget": AmbiguousTarget,
        "TargetOffline": TargetOffline,
        "AuditUnavailable": AuditUnavailable,
    }
)
_CODE_OF = {cls: code for code, cls in ERROR_CODES.items()}


def error_code(exc: TetherError) -> str:
    """The code ``exc`` travels under: its class's, or its nearest base's that has one (a
    subclass defined elsewhere, as pki's ``CertificateExpired``, travels as ``TrustError``)."""
    return next(_CODE_OF[cls] for cls in type(exc).__mro__ if cls in _CODE_OF)


def error_class(code: object) -> type[TetherError]:
    """The class a received ``code`` names; :class:`TetherError` for any other value."""
    return ERROR_CODES.get(code, TetherError) if isinstance(code, str) else TetherError

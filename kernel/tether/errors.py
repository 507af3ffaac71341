"""The error types a user of Tether can meet.

Every error a person sees is one line: what is wrong, then what to do about it. The CLIs print
``str(error)`` and exit non-zero; ``--debug`` adds the traceback. Code raises the most specific
subclass so that callers (and tests) can tell failures apart without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AlreadyExists",
    "CompareFailed",
    "ConfigError",
    "NotFound",
    "PluginError",
    "RateLimited",
    "ResourceError",
    "TetherError",
    "TrustError",
    "Unreachable",
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

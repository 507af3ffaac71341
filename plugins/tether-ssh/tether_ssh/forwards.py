"""Port forwarding as ``ssh`` is told about it: ``-L``, ``-R`` and ``-D`` arguments.

Plain values, parsed as ``ssh`` parses them; :mod:`tether_ssh.client` does the forwarding.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import attrs

__all__ = [
    "DynamicForward",
    "LocalForward",
    "RemoteForward",
    "bracketed",
    "parse_dynamic_forward",
    "parse_local_forward",
    "parse_remote_forward",
]


def _check_port(name: str, value: int, lowest: int = 1) -> None:
    if not lowest <= value < 65536:
        raise ValueError(f"{name} must be between {lowest} and 65535, not {value}")


@attrs.frozen(kw_only=True)
class _PortForward:
    """``[bind_address:]port:host:hostport``, the shape of ``-L`` and ``-R``."""

    #: The lowest listening port the forward takes (``-R`` takes 0: the node chooses).
    lowest_port: ClassVar[int] = 1

    bind_address: str | None = None
    port: int
    host: str
    host_port: int

    def __attrs_post_init__(self) -> None:
        _check_port("port", self.port, self.lowest_port)
        _check_port("host_port", self.host_port)
        if not self.host:
            raise ValueError("host must not be empty")

    def __str__(self) -> str:
        bind = f"{bracketed(self.bind_address)}:" if self.bind_address else ""
        return f"{bind}{self.port}:{bracketed(self.host)}:{self.host_port}"


@attrs.frozen(kw_only=True)
class LocalForward(_PortForward):
    """One ``-L [bind_address:]port:host:hostport``: listen here, connect from the node there.

    :param bind_address: the local address to listen on; None for the loopback addresses (as
        ``ssh`` without ``GatewayPorts``), ``"*"`` for all of them.
    :param port: the local port to listen on.
    :param host: the host the node connects to, resolved on the node's side.
    :param host_port: the port the node connects to.
    """


@attrs.frozen(kw_only=True)
class RemoteForward(_PortForward):
    """One ``-R [bind_address:]port:host:hostport``: the node listens, this side connects.

    :param bind_address: the address asked for on the node; the node listens on its loopback
        addresses whatever it is (as ``sshd`` without ``GatewayPorts``).
    :param port: the node's port to listen on; 0 lets the node choose one (reported).
    :param host: the host this client connects to, resolved on this side.
    :param host_port: the port this client connects to.
    """

    lowest_port: ClassVar[int] = 0


@attrs.frozen(kw_only=True)
class DynamicForward:
    """One ``-D [bind_address:]port``: a local SOCKS server whose connections leave from the
    node (SOCKS5, SOCKS4 and SOCKS4a CONNECT, as ``ssh -D``).

    :param bind_address: as for :class:`LocalForward`.
    :param port: the local port to listen on.
    """

    bind_address: str | None = None
    port: int

    def __attrs_post_init__(self) -> None:
        _check_port("port", self.port)

    def __str__(self) -> str:
        bind = f"{bracketed(self.bind_address)}:" if self.bind_address else ""
        return f"{bind}{self.port}"


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_colons(spec: str) -> list[str]:
    """Split at colons outside ``[...]``, which may hold an IPv6 address."""
    parts, current, depth = [], "", 0
    for char in spec:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += char
    parts.append(current)
    return [part[1:-1] if part.startswith("[") and part.endswith("]") else part for part in parts]


_Forward = TypeVar("_Forward", LocalForward, RemoteForward)


def _parse_forward(spec: str, what: str, make: type[_Forward]) -> _Forward:
    parts = _split_colons(spec)
    if len(parts) == 3:
        bind: str | None = None
    elif len(parts) == 4:
        bind = parts.pop(0) or "*"
    else:
        raise ValueError(f"bad {what} forward {spec!r}: expected [bind_address:]port:host:hostport")
    port, host, host_port = parts
    try:
        return make(bind_address=bind, port=int(port), host=host, host_port=int(host_port))
    except ValueError as exc:
        raise ValueError(f"bad {what} forward {spec!r}: {exc}") from None


def parse_local_forward(spec: str) -> LocalForward:
    """Parse a ``-L`` argument, ``[bind_address:]port:host:hostport``, as ``ssh`` does.

    IPv6 addresses go in brackets; an empty or ``*`` bind address listens on every address.
    Raises :class:`ValueError` saying what is wrong.
    """
    return _parse_forward(spec, "local", LocalForward)


def parse_remote_forward(spec: str) -> RemoteForward:
    """Parse a ``-R`` argument, ``[bind_address:]port:host:hostport``, as ``ssh`` does (port 0
    lets the node choose). Raises :class:`ValueError` saying what is wrong."""
    return _parse_forward(spec, "remote", RemoteForward)


def parse_dynamic_forward(spec: str) -> DynamicForward:
    """Parse a ``-D`` argument, ``[bind_address:]port``, as ``ssh`` does.

    Raises :class:`ValueError` saying what is wrong.
    """
    parts = _split_colons(spec)
    if len(parts) == 1:
        bind: str | None = None
    elif len(parts) == 2:
        bind = parts.pop(0) or "*"
    else:
        raise ValueError(f"bad dynamic forward {spec!r}: expected [bind_address:]port")
    try:
        return DynamicForward(bind_address=bind, port=int(parts[0]))
    except ValueError as exc:
        raise ValueError(f"bad dynamic forward {spec!r}: {exc}") from None

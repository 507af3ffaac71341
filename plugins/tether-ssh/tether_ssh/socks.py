"""The server side of a SOCKS handshake, sans I/O: what ``ssh -D`` answers a local program.

``tether ssh -D 1080`` listens locally; a program (``curl --socks5-hostname``, a browser)
connects and names where it wants to go, and the client opens a ``direct-tcpip`` channel to
that host and port from the node. This module reads the program's request and writes the
replies; the caller moves the bytes. As OpenSSH's ``-D``, it speaks SOCKS5 (RFC 1928) with no
authentication, SOCKS4 and SOCKS4a, and only CONNECT (no BIND, no UDP).

Use: feed bytes to :meth:`SocksHandshake.receive` until it returns the destination, sending
:meth:`SocksHandshake.data_to_send` after each call; then send :meth:`SocksHandshake.reply`
with the outcome of the connection. :class:`SocksError` means the request cannot be served;
send its ``reply`` (it may be empty) and close.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs

__all__ = ["Outcome", "SocksError", "SocksHandshake", "SocksRequest"]

_SOCKS4, _SOCKS5 = 4, 5
_CONNECT = 1
_NO_AUTHENTICATION, _NO_ACCEPTABLE_METHOD = 0x00, 0xFF
_IPV4, _HOSTNAME, _IPV6 = 0x01, 0x03, 0x04
#: A SOCKS4 user id or SOCKS4a host name longer than this is not a request but garbage.
_MAX_FIELD = 255


class Outcome(enum.Enum):
    """How the connection to the destination went, as a SOCKS reply says it."""

    CONNECTED = (0x00, 0x5A)
    FAILED = (0x01, 0x5B)
    NOT_ALLOWED = (0x02, 0x5B)
    HOST_UNREACHABLE = (0x04, 0x5B)
    REFUSED = (0x05, 0x5B)
    COMMAND_NOT_SUPPORTED = (0x07, 0x5B)
    ADDRESS_TYPE_NOT_SUPPORTED = (0x08, 0x5B)

    def code(self, version: int) -> int:
        socks5, socks4 = self.value
        return socks5 if version == _SOCKS5 else socks4


@attrs.frozen
class SocksRequest:
    """Where the program asked to connect, and with which protocol version (4 or 5)."""

    version: int
    host: str
    port: int


class SocksError(Exception):
    """The request cannot be served: *reply* is the last thing to send before closing."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


def _reply(version: int, outcome: Outcome) -> bytes:
    if version == _SOCKS5:  # bound address 0.0.0.0:0: nobody uses it for CONNECT
        return bytes((_SOCKS5, outcome.code(version), 0, _IPV4, 0, 0, 0, 0, 0, 0))
    return bytes((0, outcome.code(version), 0, 0, 0, 0, 0, 0))


class SocksHandshake:
    """One client's handshake, from its first byte to the reply to its CONNECT."""

    def __init__(self) -> None:
        self._buffer = b""
        self._out = b""
        self._greeted = False  # SOCKS5: the method negotiation is done
        self.request: SocksRequest | None = None

    def data_to_send(self) -> bytes:
        """Bytes the program must receive now (SOCKS5's method choice)."""
        out, self._out = self._out, b""
        return out

    def leftover(self) -> bytes:
        """Bytes the program sent after its request: the start of the forwarded data."""
        data, self._buffer = self._buffer, b""
        return data

    def reply(self, outcome: Outcome) -> bytes:
        """The answer to the request: send it, then forward (CONNECTED) or close."""
        assert self.request is not None, "no request to answer yet"
        return _reply(self.request.version, outcome)

    def receive(self, data: bytes) -> SocksRequest | None:
        """Take bytes from the program; the request once it is complete, else None.

        :raises SocksError: not SOCKS, or a request this server does not serve.
        """
        if self.request is not None:
            raise SocksError("the request is already complete")
        self._buffer += data
        if not self._buffer:
            return None
        version = self._buffer[0]
        if version == _SOCKS5:
            self.request = self._socks5()
        elif version == _SOCKS4:
            self.request = self._socks4()
        else:
            raise SocksError(f"not a SOCKS request (version byte {version:#04x})")
        return self.request

    def _take(self, count: int) -> bytes | None:
        if len(self._buffer) < count:
            return None
        taken, self._buffer = self._buffer[:count], self._buffer[count:]
        return taken

    def _socks5(self) -> SocksRequest | None:
        if not self._greeted:
            if len(self._buffer) < 2 or len(self._buffer) < 2 + self._buffer[1]:
                return None
            greeting = self._take(2 + self._buffer[1])
            assert greeting is not None
            if _NO_AUTHENTICATION not in greeting[2:]:
                raise SocksError(
                    "the SOCKS5 client offers no method without authentication",
                    bytes((_SOCKS5, _NO_ACCEPTABLE_METHOD)),
                )
            self._greeted = True
            self._out += bytes((_SOCKS5, _NO_AUTHENTICATION))
        if len(self._buffer) < 5:
            return None
        version, command, _, kind, first = self._buffer[:5]
        if version != _SOCKS5:
            raise SocksError(f"SOCKS5 request with version byte {version:#04x}")
        if command != _CONNECT:
            raise SocksError(
                f"SOCKS5 command {command} is not supported (only CONNECT)",
                _reply(_SOCKS5, Outcome.COMMAND_NOT_SUPPORTED),
            )
        sizes = {_IPV4: 4, _IPV6: 16, _HOSTNAME: 1 + first}
        if kind not in sizes:
            raise SocksError(
                f"SOCKS5 address type {kind} is not supported",
                _reply(_SOCKS5, Outcome.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        request = self._take(4 + sizes[kind] + 2)
        if request is None:
            return None
        address, port = request[4:-2], int.from_bytes(request[-2:], "big")
        if kind == _HOSTNAME:
            host = address[1:].decode("utf-8", errors="replace")
        else:
            host = str(ipaddress.ip_address(address))
        return SocksRequest(version=_SOCKS5, host=host, port=port)

    def _socks4(self) -> SocksRequest | None:
        if len(self._buffer) < 8:
            return None
        command = self._buffer[1]
        if command != _CONNECT:
            raise SocksError(
                f"SOCKS4 command {command} is not supported (only CONNECT)",
                _reply(_SOCKS4, Outcome.COMMAND_NOT_SUPPORTED),
            )
        port = int.from_bytes(self._buffer[2:4], "big")
        address = self._buffer[4:8]
        fields = self._buffer[8:].split(b"\0")
        socks4a = address[:3] == b"\0\0\0" and address[3] != 0  # 0.0.0.x: a name follows
        wanted = 2 if socks4a else 1
        if len(fields) <= wanted:  # the last field is not terminated yet
            if any(len(field) > _MAX_FIELD for field in fields):
                too_long = "SOCKS4 user id or host name too long"
                raise SocksError(too_long, _reply(_SOCKS4, Outcome.FAILED))
            return None
        consumed = 8 + sum(len(field) + 1 for field in fields[:wanted])
        self._buffer = self._buffer[consumed:]
        if socks4a:
            host = fields[1].decode("utf-8", errors="replace")
        else:
            host = str(ipaddress.IPv4Address(address))
        return SocksRequest(version=_SOCKS4, host=host, port=port)

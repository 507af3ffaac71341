"""PostgreSQL's wire protocol, as much of it as a relaying engine needs: sans-IO and pure.

Nothing here touches a socket: parsers take bytes with ``feed`` and hand back events with
``next_event``; builders return bytes. The trio driver (:mod:`tether_db.postgres.engine`)
does the I/O. Every length a peer sends is bounded before anything waits for or allocates
that many bytes, so a hostile or garbled length is refused at once with a
:class:`ProtocolError` instead of holding memory or a connection open.

Frontend (client) traffic starts with one startup packet that has no type byte (``int32``
length, ``int32`` code, body): ``SSLRequest``, ``GSSENCRequest``, ``CancelRequest`` or the
``StartupMessage``. Every later message, in both directions, is a type byte and an ``int32``
length that counts itself but not the type byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "AUTH_OK",
    "MAX_BACKEND_MESSAGE",
    "MAX_FRONTEND_MESSAGE",
    "MAX_STARTUP_PACKET",
    "MAX_STATEMENT",
    "AuthenticationRequest",
    "BackendKeyData",
    "BackendMessage",
    "BackendParser",
    "CancelRequest",
    "FrontendMessage",
    "FrontendParser",
    "GSSENCRequest",
    "Passthrough",
    "ProtocolError",
    "SSLRequest",
    "StartupMessage",
    "StartupParser",
    "backend_key_data",
    "cancel_request",
    "error_response",
    "error_response_fields",
    "parse_authentication",
    "parse_backend_key_data",
    "ssl_request",
    "statement_text",
]

#: PostgreSQL's own limit on a startup packet (``MAX_STARTUP_PACKET_LENGTH``).
MAX_STARTUP_PACKET = 10_000
#: The largest ``Query`` or ``Parse`` the engine buffers to audit before forwarding it.
MAX_STATEMENT = 64 * 1024 * 1024
#: The largest other frontend message relayed; these are streamed through, never buffered
#: whole, so the bound only rejects lengths no real client sends (PostgreSQL's own limit).
MAX_FRONTEND_MESSAGE = 0x3FFF_FFFF
#: The largest backend message the engine reads whole, during the database's startup only
#: (authentication, parameters, key data): those are small.
MAX_BACKEND_MESSAGE = 1024 * 1024

_SSL_REQUEST_CODE = 80877103
_GSSENC_REQUEST_CODE = 80877104
_CANCEL_REQUEST_CODE = 80877102
_PROTOCOL_3 = 3
#: Cancel keys are 4 bytes in protocol 3.0 and at most 256 bytes from 3.2 on.
_MAX_CANCEL_KEY = 256

#: ``AuthenticationOk``'s code in an ``R`` message.
AUTH_OK = 0

#: Messages whose statement text is audited before they are forwarded.
_AUDITED = frozenset({b"Q", b"P"})


class ProtocolError(Exception):
    """A peer sent something that is not PostgreSQL's protocol, or more than the engine
    accepts; the connection cannot go on.

    :param message: what was wrong, one line.
    :param hint: what the user can do about it, if anything.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# ---------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True, kw_only=True)
class SSLRequest:
    """The client asks for TLS; the engine answers ``N`` (the client leg is inside
    Tether's own TLS already)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; answered ``N`` like :class:`SSLRequest`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest:
    """A new connection asking to cancel the query of the backend ``pid`` holding ``key``."""

    pid: int
    key: bytes

    def __post_init__(self) -> None:
        if not 4 <= len(self.key) <= _MAX_CANCEL_KEY:
            raise ValueError(f"a cancel key is 4 to {_MAX_CANCEL_KEY} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class StartupMessage:
    """The client's startup: protocol version and parameters; ``raw`` is the packet as
    received, forwarded to the database unchanged."""

    version: tuple[int, int]
    parameters: dict[str, str]
    raw: bytes

    @property
    def user(self) -> str:
        """The database user asked for (PostgreSQL requires it)."""
        return self.parameters["user"]

    @property
    def database(self) -> str:
        """The database name asked for; PostgreSQL's default is the user's name."""
        return self.parameters.get("database") or self.user


StartupEvent = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontendMessage:
    """A whole frontend message the engine needs to see (``Query``, ``Parse``): its type
    byte, its body, and ``raw``, the bytes to forward."""

    type: bytes
    body: bytes
    raw: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Passthrough:
    """Bytes of messages the engine only relays (``Bind``, ``CopyData``, ...)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendMessage:
    """One whole backend message (read during the database's startup only)."""

    type: bytes
    body: bytes

    @property
    def raw(self) -> bytes:
        """The message as it travels."""
        return self.type + struct.pack("!I", len(self.body) + 4) + self.body


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationRequest:
    """An ``R`` message: ``code`` 0 is ``AuthenticationOk``; anything else asks the client
    for a password, SASL or another method."""

    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendKeyData:
    """The backend's process id and the secret a ``CancelRequest`` must present."""

    pid: int
    key: bytes


# ---------------------------------------------------------------------------------------
# Parsers


def _cstring(data: bytes, start: int, what: str) -> tuple[str, int]:
    """The NUL-terminated string at ``start`` (decoded leniently: audit text never fails
    on an encoding) and the offset after its NUL."""
    end = data.find(b"\0", start)
    if end < 0:
        raise ProtocolError(f"{what} is not NUL-terminated")
    return data[start:end].decode("utf-8", errors="replace"), end + 1


def _parse_startup_parameters(body: bytes) -> dict[str, str]:
    parameters: dict[str, str] = {}
    offset = 0
    while True:
        if offset >= len(body):
            raise ProtocolError("the startup message's parameter list is not terminated")
        if body[offset] == 0:
            break
        name, offset = _cstring(body, offset, "a startup parameter name")
        value, offset = _cstring(body, offset, f"the startup parameter {name!r}")
        parameters[name] = value
    if offset + 1 != len(body):
        raise ProtocolError("the startup message has bytes after its parameter list")
    if not parameters.get("user"):
        raise ProtocolError(
            "the startup message names no database user",
            hint="give one, e.g. psql -U NAME or user=NAME in the connection string",
        )
    return parameters


@dataclass(slots=True)
class StartupParser:
    """Reads startup packets (no type byte) from the client until the ``StartupMessage`` or
    ``CancelRequest``; ``SSLRequest``/``GSSENCRequest`` may come first. Bytes past the
    startup packet stay in :attr:`buffer` for the :class:`FrontendParser`."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes | bytearray) -> None:
        """Add bytes received from the client."""
        self.buffer += data

    def next_event(self) -> StartupEvent | None:
        """The next startup packet, or None until enough bytes have arrived."""
        if len(self.buffer) < 8:
            # An HTTP request or a TLS hello is not a startup packet: say so at once
            # rather than wait for 8 bytes a confused client may never send.
            if len(self.buffer) >= 4:
                self._check_length(int.from_bytes(self.buffer[:4], "big"))
            return None
        (length, code) = struct.unpack_from("!II", self.buffer)
        self._check_length(length)
        if len(self.buffer) < length:
            return None
        packet = bytes(self.buffer[:length])
        del self.buffer[:length]
        body = packet[8:]
        if code == _SSL_REQUEST_CODE:
            if body:
                raise ProtocolError("SSLRequest has a body")
            return SSLRequest()
        if code == _GSSENC_REQUEST_CODE:
            if body:
                raise ProtocolError("GSSENCRequest has a body")
            return GSSENCRequest()
        if code == _CANCEL_REQUEST_CODE:
            if len(body) < 8:
                raise ProtocolError("CancelRequest is too short")
            try:
                return CancelRequest(pid=int.from_bytes(body[:4], "big"), key=body[4:])
            except ValueError as error:
                raise ProtocolError(f"CancelRequest: {error}") from None
        major, minor = code >> 16, code & 0xFFFF
        if major != _PROTOCOL_3:
            raise ProtocolError(
                f"the client speaks PostgreSQL protocol {major}.{minor}; only 3.x is supported",
                hint="use a client from PostgreSQL 7.4 or later",
            )
        return StartupMessage(
            version=(major, minor), parameters=_parse_startup_parameters(body), raw=packet
        )

    @staticmethod
    def _check_length(length: int) -> None:
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(
                f"the client's first packet is not a PostgreSQL startup packet "
                f"(length {length}, expected 8 to {MAX_STARTUP_PACKET})",
                hint="connect with a PostgreSQL client such as psql",
            )


@dataclass(slots=True)
class FrontendParser:
    """Splits the client's stream after startup into messages: ``Query`` and ``Parse`` are
    returned whole (so their statement is audited before a byte of them is forwarded);
    everything else passes through as it arrives, however large."""

    buffer: bytearray = field(default_factory=bytearray)
    #: bytes of the current relayed message still to pass through
    _remaining: int = 0

    def feed(self, data: bytes | bytearray) -> None:
        """Add bytes received from the client."""
        self.buffer += data

    @property
    def at_boundary(self) -> bool:
        """True when the client is between messages: nothing of a message has arrived
        without the rest of it."""
        return self._remaining == 0 and not self.buffer

    def next_event(self) -> FrontendMessage | Passthrough | None:
        """The next whole audited message or run of relayed bytes; None until more bytes
        arrive."""
        if self._remaining:
            if not self.buffer:
                return None
            take = min(self._remaining, len(self.buffer))
            data = bytes(self.buffer[:take])
            del self.buffer[:take]
            self._remaining -= take
            return Passthrough(data=data)
        if len(self.buffer) < 5:
            return None
        kind = bytes(self.buffer[:1])
        length = int.from_bytes(self.buffer[1:5], "big")
        if length < 4:
            raise ProtocolError(f"the client sent a {kind!r} message of length {length}")
        if kind in _AUDITED:
            if length > MAX_STATEMENT:
                raise ProtocolError(
                    f"the client sent a statement of {length} bytes; "
                    f"the most this service relays is {MAX_STATEMENT}",
                    hint="send large data with COPY or as parameters",
                )
            if len(self.buffer) < 1 + length:
                return None
            raw = bytes(self.buffer[: 1 + length])
            del self.buffer[: 1 + length]
            return FrontendMessage(type=kind, body=raw[5:], raw=raw)
        if length > MAX_FRONTEND_MESSAGE:
            raise ProtocolError(f"the client sent a {kind!r} message of {length} bytes")
        self._remaining = 1 + length
        return self.next_event()


@dataclass(slots=True)
class BackendParser:
    """Reads whole backend messages; used only while the database authenticates the
    session, after which its bytes are relayed untouched."""

    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes | bytearray) -> None:
        """Add bytes received from the database."""
        self.buffer += data

    def next_event(self) -> BackendMessage | None:
        """The next whole message, or None until more bytes arrive."""
        if len(self.buffer) < 5:
            return None
        kind = bytes(self.buffer[:1])
        length = int.from_bytes(self.buffer[1:5], "big")
        if length < 4 or length > MAX_BACKEND_MESSAGE:
            raise ProtocolError(
                f"the database sent a {kind!r} message of length {length} during startup"
            )
        if len(self.buffer) < 1 + length:
            return None
        body = bytes(self.buffer[5 : 1 + length])
        del self.buffer[: 1 + length]
        return BackendMessage(type=kind, body=body)


def parse_authentication(message: BackendMessage) -> AuthenticationRequest:
    """The request in an ``R`` message."""
    if message.type != b"R" or len(message.body) < 4:
        raise ProtocolError("the database sent a malformed authentication request")
    return AuthenticationRequest(code=int.from_bytes(message.body[:4], "big"))


def parse_backend_key_data(message: BackendMessage) -> BackendKeyData:
    """The process id and secret in a ``K`` message."""
    if message.type != b"K" or not 8 <= len(message.body) <= 4 + _MAX_CANCEL_KEY:
        raise ProtocolError("the database sent malformed BackendKeyData")
    return BackendKeyData(pid=int.from_bytes(message.body[:4], "big"), key=message.body[4:])


def statement_text(message: FrontendMessage) -> str:
    """The SQL of a ``Query`` (``Q``) or ``Parse`` (``P``) message, for audit."""
    if message.type == b"Q":
        text, _ = _cstring(message.body, 0, "the query")
        return text
    if message.type == b"P":
        _, offset = _cstring(message.body, 0, "the prepared statement's name")
        text, _ = _cstring(message.body, offset, "the prepared statement's query")
        return text
    raise ValueError(f"{message.type!r} carries no statement")


def error_response_fields(message: BackendMessage) -> dict[str, str]:
    """The fields of an ``ErrorResponse`` or ``NoticeResponse`` by their code letter
    (``S`` severity, ``C`` SQLSTATE, ``M`` message, ``H`` hint, ...)."""
    fields: dict[str, str] = {}
    offset = 0
    body = message.body
    while offset < len(body) and body[offset] != 0:
        code = chr(body[offset])
        value, offset = _cstring(body, offset + 1, "an error field")
        fields[code] = value
    return fields


# ---------------------------------------------------------------------------------------
# Builders


def _field(code: bytes, value: str) -> bytes:
    return code + value.replace("\0", " ").encode("utf-8") + b"\0"


def error_response(severity: str, sqlstate: str, message: str, *, hint: str | None = None) -> bytes:
    """An ``ErrorResponse`` the client prints as ``SEVERITY:  message`` (and ``HINT:``)."""
    if len(sqlstate) != 5:
        raise ValueError("a SQLSTATE is five characters")
    body = (
        _field(b"S", severity)
        + _field(b"V", severity)
        + _field(b"C", sqlstate)
        + _field(b"M", message)
    )
    if hint:
        body += _field(b"H", hint)
    body += b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


def backend_key_data(pid: int, key: bytes) -> bytes:
    """A ``BackendKeyData`` message."""
    return b"K" + struct.pack("!II", 8 + len(key), pid) + key


def ssl_request() -> bytes:
    """An ``SSLRequest`` packet."""
    return struct.pack("!II", 8, _SSL_REQUEST_CODE)


def cancel_request(pid: int, key: bytes) -> bytes:
    """A ``CancelRequest`` packet."""
    return struct.pack("!III", 12 + len(key), _CANCEL_REQUEST_CODE, pid) + key

"""MySQL's client/server protocol as the database service needs it: sans-IO and pure.

Nothing here touches a socket. :class:`FrameReader` turns bytes into frames, the ``build_*``
functions turn values into payloads, the ``parse_*`` functions do the reverse, and
:class:`ResponseTracker` follows the server's answers to the client's commands so that the
engine knows which server packet is a ``LOCAL INFILE`` request (a row may start with the same
byte) and which client packet starts a command. Every length read from a peer is checked
against what is left and against a bound, and a malformed packet raises
:class:`ProtocolError`, never anything else.

The service offers the client a fixed set of capabilities (:data:`OFFERED_CAPABILITIES`)
before it knows the database, and asks the database for exactly what the client took, so
both legs agree on the packet formats and the relay can copy the command phase as it comes.
``CLIENT_DEPRECATE_EOF``, compression, query attributes and MariaDB's extended capabilities
are not offered: they change the command phase's packets and the tracker would have to
follow them for no gain to the user.
"""

from __future__ import annotations

import collections
import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "CAPABILITY_NAMES",
    "HANDSHAKE_ONLY",
    "MAX_FRAME",
    "MAX_HANDSHAKE_PAYLOAD",
    "OFFERED_CAPABILITIES",
    "REPLIES",
    "Cap",
    "Command",
    "ErrPacket",
    "Event",
    "Frame",
    "FrameReader",
    "Greeting",
    "HandshakeResponse",
    "ProtocolError",
    "Reply",
    "ResponseTracker",
    "SSLRequest",
    "ServerErr",
    "build_err",
    "build_greeting",
    "build_handshake_response",
    "build_ok",
    "build_ssl_request",
    "frame",
    "frames",
    "parse_command",
    "parse_err",
    "parse_greeting",
    "parse_handshake_response",
]

#: The largest payload one frame carries; a payload this long continues in the next frame.
MAX_FRAME = 0xFFFFFF
#: A greeting or handshake response longer than this is not one (they are a few hundred bytes).
MAX_HANDSHAKE_PAYLOAD = 64 * 1024
#: Connect attributes longer than this are refused (MariaDB keeps 64 KiB of them at most).
MAX_CONNECT_ATTRS = 64 * 1024


class ProtocolError(Exception):
    """A peer sent bytes that are not MySQL's protocol, or more than the bounds allow."""


class Cap(enum.IntFlag):
    """Capability flags (the ``CLIENT_*`` constants)."""

    LONG_PASSWORD = 1
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24


CAPABILITY_NAMES = {flag: f"CLIENT_{flag.name}" for flag in Cap if flag.name}

#: What the service's greeting offers (``LOCAL_FILES`` is added when the roles allow it).
OFFERED_CAPABILITIES = (
    Cap.LONG_PASSWORD
    | Cap.FOUND_ROWS
    | Cap.LONG_FLAG
    | Cap.CONNECT_WITH_DB
    | Cap.NO_SCHEMA
    | Cap.ODBC
    | Cap.IGNORE_SPACE
    | Cap.PROTOCOL_41
    | Cap.INTERACTIVE
    | Cap.IGNORE_SIGPIPE
    | Cap.TRANSACTIONS
    | Cap.SECURE_CONNECTION
    | Cap.MULTI_STATEMENTS
    | Cap.MULTI_RESULTS
    | Cap.PS_MULTI_RESULTS
    | Cap.PLUGIN_AUTH
    | Cap.CONNECT_ATTRS
    | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Cap.SESSION_TRACK
)

#: Capabilities that only shape the handshake; the two legs may differ in them.
HANDSHAKE_ONLY = (
    Cap.CONNECT_WITH_DB
    | Cap.SSL
    | Cap.PLUGIN_AUTH
    | Cap.CONNECT_ATTRS
    | Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Cap.SECURE_CONNECTION
    | Cap.CAN_HANDLE_EXPIRED_PASSWORDS
    | Cap.INTERACTIVE
    | Cap.IGNORE_SIGPIPE
    | Cap.LONG_PASSWORD
    | Cap.RESERVED
)

# server status flags
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040

# commands
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_REFRESH = 0x07
COM_STATISTICS = 0x09
COM_PROCESS_INFO = 0x0A
COM_PROCESS_KILL = 0x0C
COM_DEBUG = 0x0D
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_SET_OPTION = 0x1B
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F

COMMAND_NAMES = {
    COM_QUIT: "COM_QUIT",
    COM_INIT_DB: "COM_INIT_DB",
    COM_QUERY: "COM_QUERY",
    COM_FIELD_LIST: "COM_FIELD_LIST",
    COM_REFRESH: "COM_REFRESH",
    COM_STATISTICS: "COM_STATISTICS",
    COM_PROCESS_INFO: "COM_PROCESS_INFO",
    COM_PROCESS_KILL: "COM_PROCESS_KILL",
    COM_DEBUG: "COM_DEBUG",
    COM_PING: "COM_PING",
    COM_CHANGE_USER: "COM_CHANGE_USER",
    COM_STMT_PREPARE: "COM_STMT_PREPARE",
    COM_STMT_EXECUTE: "COM_STMT_EXECUTE",
    COM_STMT_SEND_LONG_DATA: "COM_STMT_SEND_LONG_DATA",
    COM_STMT_CLOSE: "COM_STMT_CLOSE",
    COM_STMT_RESET: "COM_STMT_RESET",
    COM_SET_OPTION: "COM_SET_OPTION",
    COM_STMT_FETCH: "COM_STMT_FETCH",
    COM_RESET_CONNECTION: "COM_RESET_CONNECTION",
}


# --------------------------------------------------------------------------------------------
# framing


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame on the wire: a payload of at most :data:`MAX_FRAME` bytes and its sequence id.

    ``continuation`` is true when the previous frame was full, so this one carries the rest
    of the same logical packet and its first byte means nothing by itself.
    """

    seq: int
    payload: bytes
    continuation: bool

    @property
    def raw(self) -> bytes:
        """The frame as it travels."""
        return frame(self.seq, self.payload)

    @property
    def continues(self) -> bool:
        """Whether the next frame carries more of this logical packet."""
        return len(self.payload) == MAX_FRAME


def frame(seq: int, payload: bytes) -> bytes:
    """One frame; ``payload`` must fit (use :func:`frames` for any length)."""
    if len(payload) > MAX_FRAME:
        raise ValueError("payload longer than one frame")
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def frames(seq: int, payload: bytes) -> bytes:
    """A logical packet of any length, split into frames (a full last frame is followed by
    an empty one, which is how the reader learns the packet ended)."""
    out = bytearray()
    pos = 0
    while True:
        chunk = payload[pos : pos + MAX_FRAME]
        out += frame(seq, chunk)
        seq += 1
        pos += len(chunk)
        if len(chunk) < MAX_FRAME:
            return bytes(out)


class FrameReader:
    """Bytes in, frames out. Holds at most one frame's worth of bytes beyond what it returned.

    :param max_payload: frames announcing a longer payload raise :class:`ProtocolError` as
        soon as the header arrives (during the handshake nothing is long).
    :param keep_raw: keep the bytes of returned frames until :meth:`take_raw` or
        :meth:`discard` (a relay passes them on as they came).
    """

    def __init__(self, *, max_payload: int = MAX_FRAME, keep_raw: bool = False) -> None:
        self._keep_raw = keep_raw
        self._buffer = bytearray()
        self._pos = 0  # where the next frame starts
        self._last = 0  # where the frame last returned starts
        self._mark = 0  # frames before it were handed on (see take_raw) or discarded
        self._max_payload = max_payload
        self._continuing = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Add bytes read from the peer."""
        if self._mark:
            # dropped in one go rather than frame by frame: a read holds many small rows
            del self._buffer[: self._mark]
            self._pos -= self._mark
            self._last = max(0, self._last - self._mark)
            self._mark = 0
        self._buffer += data

    def set_max_payload(self, max_payload: int) -> None:
        """Change the bound (the handshake is over)."""
        self._max_payload = max_payload

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buffer) - self._pos

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        buf, pos = self._buffer, self._pos
        if len(buf) - pos < 4:
            return None
        length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
        if length > self._max_payload:
            raise ProtocolError(
                f"packet of {length} bytes announced, "
                f"more than the {self._max_payload} allowed here"
            )
        if len(buf) - pos < 4 + length:
            return None
        result = Frame(
            seq=buf[pos + 3],
            payload=bytes(buf[pos + 4 : pos + 4 + length]),
            continuation=self._continuing,
        )
        self._last, self._pos = pos, pos + 4 + length
        if not self._keep_raw:
            self._mark = self._pos
        self._continuing = length == MAX_FRAME
        return result

    def skip_rows(self) -> int:
        """Pass over complete rows of a result without making a frame of each: stops at a
        frame that may end the rows (EOF, ERR), a full frame (it continues) or an incomplete
        one. Only for a caller that knows rows come next (:attr:`ResponseTracker.in_rows`);
        skipped frames are taken by :meth:`take_raw` like the others. Returns how many."""
        if self._continuing:
            return 0
        buf, pos, end = self._buffer, self._pos, len(self._buffer)
        count = 0
        while end - pos >= 5:
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            if length == 0 or length >= MAX_FRAME or end - pos < 4 + length:
                break
            head = buf[pos + 4]
            if head == 0xFF or (head == 0xFE and length < 9):
                break
            pos += 4 + length
            count += 1
        if count:
            self._pos = pos
            self._last = pos  # the last frame returned, if any, was before these
            if not self._keep_raw:
                self._mark = pos
        return count

    def take_raw(self, *, but_last: bool = False) -> bytes:
        """The bytes of the frames returned since the last call, exactly as they came, so a
        relay can pass them on without building them again; ``but_last`` leaves out the
        frame last returned (call :meth:`discard` after it to drop it)."""
        end = self._last if but_last else self._pos
        raw = bytes(self._buffer[self._mark : end])
        self._mark = end
        return raw

    def discard(self) -> None:
        """Forget the frames returned and not taken (a relay answers them itself)."""
        self._mark = self._pos


# --------------------------------------------------------------------------------------------
# primitive fields


class _Cursor:
    """Reads fields from a payload, every read bounded by what is left."""

    def __init__(self, payload: bytes, what: str) -> None:
        self.data = payload
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining():
            raise ProtocolError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def nul_str(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"{self.what} has an unterminated string")
        out = self.data[self.pos : end]
        self.pos = end + 1
        return out

    def lenenc_int(self) -> int:
        first = self.uint(1)
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.uint(2)
        if first == 0xFD:
            return self.uint(3)
        if first == 0xFE:
            return self.uint(8)
        raise ProtocolError(f"{self.what} has an invalid length-encoded integer")

    def lenenc_str(self) -> bytes:
        return self.take(self.lenenc_int())


def _lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes([value])
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def _lenenc_str(value: bytes) -> bytes:
    return _lenenc_int(len(value)) + value


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# handshake


@dataclass(frozen=True, slots=True, kw_only=True)
class Greeting:
    """A server's HandshakeV10."""

    server_version: str
    connection_id: int
    capabilities: int
    charset: int
    status: int
    scramble: bytes
    auth_plugin: str


def build_greeting(
    *,
    server_version: str,
    connection_id: int,
    scramble: bytes,
    capabilities: int,
    charset: int = 45,
    status: int = SERVER_STATUS_AUTOCOMMIT,
    auth_plugin: str = "mysql_native_password",
) -> bytes:
    """The payload of a HandshakeV10 (``scramble`` is 20 bytes for ``mysql_native_password``)."""
    if len(scramble) < 8:
        raise ValueError("a scramble has at least 8 bytes")
    capabilities |= Cap.PLUGIN_AUTH | Cap.SECURE_CONNECTION | Cap.PROTOCOL_41
    return b"".join(
        [
            b"\x0a",
            server_version.encode() + b"\0",
            connection_id.to_bytes(4, "little"),
            scramble[:8],
            b"\0",
            (capabilities & 0xFFFF).to_bytes(2, "little"),
            bytes([charset]),
            status.to_bytes(2, "little"),
            ((capabilities >> 16) & 0xFFFF).to_bytes(2, "little"),
            bytes([len(scramble) + 1]),
            b"\0" * 10,
            scramble[8:] + b"\0",
            auth_plugin.encode() + b"\0",
        ]
    )


def parse_greeting(payload: bytes) -> Greeting:
    """Read a server's HandshakeV10; an ERR instead raises :class:`ServerErr`."""
    if payload[:1] == b"\xff":
        raise ServerErr(parse_err(payload))
    c = _Cursor(payload, "the database's greeting")
    version = c.uint(1)
    if version != 10:
        raise ProtocolError(f"the database's greeting has protocol version {version}, not 10")
    server_version = _text(c.nul_str())
    connection_id = c.uint(4)
    scramble = c.take(8)
    c.take(1)
    capabilities = c.uint(2)
    charset = status = 0
    auth_plugin = ""
    if c.remaining():
        charset = c.uint(1)
        status = c.uint(2)
        capabilities |= c.uint(2) << 16
        data_len = c.uint(1)
        c.take(10)
        if capabilities & Cap.SECURE_CONNECTION:
            scramble += c.take(max(13, data_len - 8))
            scramble = scramble.rstrip(b"\0")
        if capabilities & Cap.PLUGIN_AUTH and c.remaining():
            rest = c.data[c.pos :]
            auth_plugin = _text(rest.split(b"\0", 1)[0])
    return Greeting(
        server_version=server_version,
        connection_id=connection_id,
        capabilities=capabilities,
        charset=charset,
        status=status,
        scramble=scramble,
        auth_plugin=auth_plugin,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SSLRequest:
    """The short packet a client sends to switch to TLS before its handshake response."""

    capabilities: int
    max_packet: int
    charset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeResponse:
    """A client's HandshakeResponse41."""

    capabilities: int
    max_packet: int
    charset: int
    user: str
    auth_response: bytes
    database: str
    auth_plugin: str
    connect_attrs: dict[str, str] = field(default_factory=dict)


def parse_handshake_response(payload: bytes) -> HandshakeResponse | SSLRequest:
    """Read what a client answers to the greeting."""
    c = _Cursor(payload, "the client's handshake response")
    if len(payload) < 4:
        raise ProtocolError("the client's handshake response is truncated")
    capabilities = c.uint(4)
    if not capabilities & Cap.PROTOCOL_41:
        raise ProtocolError("the client speaks the pre-4.1 protocol, which is not supported")
    max_packet = c.uint(4)
    charset = c.uint(1)
    c.take(23)
    if not c.remaining():
        return SSLRequest(capabilities=capabilities, max_packet=max_packet, charset=charset)
    user = _text(c.nul_str())
    if capabilities & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth_response = c.lenenc_str()
    elif capabilities & Cap.SECURE_CONNECTION:
        auth_response = c.take(c.uint(1))
    else:
        auth_response = c.nul_str()
    database = ""
    if capabilities & Cap.CONNECT_WITH_DB and c.remaining():
        database = _text(c.nul_str())
    auth_plugin = ""
    if capabilities & Cap.PLUGIN_AUTH and c.remaining():
        auth_plugin = _text(c.nul_str())
    attrs: dict[str, str] = {}
    if capabilities & Cap.CONNECT_ATTRS and c.remaining():
        total = c.lenenc_int()
        if total > MAX_CONNECT_ATTRS:
            raise ProtocolError(f"the client's connect attributes exceed {MAX_CONNECT_ATTRS} bytes")
        a = _Cursor(c.take(total), "the client's connect attributes")
        while a.remaining():
            key = _text(a.lenenc_str())
            attrs[key] = _text(a.lenenc_str())
    return HandshakeResponse(
        capabilities=capabilities,
        max_packet=max_packet,
        charset=charset,
        user=user,
        auth_response=auth_response,
        database=database,
        auth_plugin=auth_plugin,
        connect_attrs=attrs,
    )


def _response_head(capabilities: int, max_packet: int, charset: int) -> bytes:
    return (
        capabilities.to_bytes(4, "little")
        + max_packet.to_bytes(4, "little")
        + bytes([charset])
        + b"\0" * 23
    )


def build_ssl_request(*, capabilities: int, max_packet: int, charset: int) -> bytes:
    """The SSL request payload (``CLIENT_SSL`` is set here)."""
    return _response_head(capabilities | Cap.SSL, max_packet, charset)


def build_handshake_response(
    *,
    capabilities: int,
    max_packet: int,
    charset: int,
    user: str,
    auth_response: bytes,
    database: str,
    auth_plugin: str,
    connect_attrs: dict[str, str] | None = None,
) -> bytes:
    """A HandshakeResponse41 payload; the capabilities decide which fields follow."""
    out = bytearray(_response_head(capabilities, max_packet, charset))
    out += user.encode() + b"\0"
    if capabilities & Cap.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        out += _lenenc_str(auth_response)
    elif capabilities & Cap.SECURE_CONNECTION:
        out += bytes([len(auth_response)]) + auth_response
    else:
        out += auth_response + b"\0"
    if capabilities & Cap.CONNECT_WITH_DB:
        out += database.encode() + b"\0"
    if capabilities & Cap.PLUGIN_AUTH:
        out += auth_plugin.encode() + b"\0"
    if capabilities & Cap.CONNECT_ATTRS:
        body = b"".join(
            _lenenc_str(k.encode()) + _lenenc_str(v.encode())
            for k, v in (connect_attrs or {}).items()
        )
        out += _lenenc_str(body)
    return bytes(out)


# --------------------------------------------------------------------------------------------
# OK and ERR


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrPacket:
    """An ERR packet's content."""

    code: int
    sqlstate: str
    message: str


class ServerErr(Exception):
    """The database answered with an ERR packet where something else was expected."""

    def __init__(self, err: ErrPacket) -> None:
        super().__init__(f"{err.code} ({err.sqlstate}): {err.message}")
        self.err = err


def build_err(code: int, sqlstate: str, message: str) -> bytes:
    """An ERR payload (protocol 4.1: with the SQLSTATE marker)."""
    state = sqlstate.encode()[:5].ljust(5, b"0")
    return b"\xff" + code.to_bytes(2, "little") + b"#" + state + message.encode()


def parse_err(payload: bytes) -> ErrPacket:
    """Read an ERR payload."""
    c = _Cursor(payload, "an error packet")
    if c.uint(1) != 0xFF:
        raise ProtocolError("not an error packet")
    code = c.uint(2)
    sqlstate = "HY000"
    if c.data[c.pos : c.pos + 1] == b"#":
        c.take(1)
        sqlstate = _text(c.take(5))
    return ErrPacket(code=code, sqlstate=sqlstate, message=_text(c.data[c.pos :]))


def build_ok(*, affected_rows: int = 0, last_insert_id: int = 0, status: int = 2) -> bytes:
    """An OK payload with no info and no session state."""
    return (
        b"\x00"
        + _lenenc_int(affected_rows)
        + _lenenc_int(last_insert_id)
        + status.to_bytes(2, "little")
        + b"\0\0"
    )


def _ok_status(payload: bytes) -> int:
    c = _Cursor(payload, "an OK packet")
    c.take(1)
    c.lenenc_int()
    c.lenenc_int()
    return c.uint(2)


def _eof_status(payload: bytes) -> int:
    if len(payload) >= 5:
        return int.from_bytes(payload[3:5], "little")
    return 0


# --------------------------------------------------------------------------------------------
# commands


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """A client's command: its byte, its name, and the statement when it carries one."""

    code: int
    name: str
    statement: str | None = None
    argument: str | None = None


def parse_command(payload: bytes) -> Command:
    """Read the first packet of a command (its whole logical payload for statements)."""
    if not payload:
        raise ProtocolError("the client sent an empty command")
    code = payload[0]
    name = COMMAND_NAMES.get(code, f"command 0x{code:02x}")
    if code in (COM_QUERY, COM_STMT_PREPARE):
        return Command(code=code, name=name, statement=_text(payload[1:]))
    if code == COM_INIT_DB:
        return Command(code=code, name=name, argument=_text(payload[1:]))
    return Command(code=code, name=name)


# --------------------------------------------------------------------------------------------
# following responses


class Reply(enum.Enum):
    """How the server answers a command, as far as the tracker must know."""

    NONE = "none"  # no answer at all
    SINGLE = "single"  # exactly one packet
    QUERY = "query"  # text results, LOCAL INFILE, multi-results
    FIELD_LIST = "field_list"  # column definitions up to an EOF
    PREPARE = "prepare"
    EXECUTE = "execute"  # binary results, multi-results, cursors
    FETCH = "fetch"  # binary rows up to an EOF


#: The commands the relay lets through and how each is answered; any other is refused by the
#: engine (binary log streaming, replication and MariaDB's bulk and COM_MULTI commands have no
#: place in a user's session and would need their own tracking).
REPLIES = {
    COM_QUIT: Reply.NONE,
    COM_INIT_DB: Reply.SINGLE,
    COM_QUERY: Reply.QUERY,
    COM_FIELD_LIST: Reply.FIELD_LIST,
    COM_REFRESH: Reply.SINGLE,
    COM_STATISTICS: Reply.SINGLE,
    COM_PROCESS_INFO: Reply.QUERY,
    COM_PROCESS_KILL: Reply.SINGLE,
    COM_DEBUG: Reply.SINGLE,
    COM_PING: Reply.SINGLE,
    COM_STMT_PREPARE: Reply.PREPARE,
    COM_STMT_EXECUTE: Reply.EXECUTE,
    COM_STMT_SEND_LONG_DATA: Reply.NONE,
    COM_STMT_CLOSE: Reply.NONE,
    COM_STMT_RESET: Reply.SINGLE,
    COM_SET_OPTION: Reply.SINGLE,
    COM_STMT_FETCH: Reply.FETCH,
    COM_RESET_CONNECTION: Reply.SINGLE,
}


class Event(enum.Enum):
    """What :meth:`ResponseTracker.server_frame` says about one server frame."""

    PART = "part"  # part of a reply: forward it
    DONE = "done"  # the last frame of a reply: forward it
    LOCAL_INFILE = "local_infile"  # the server asks the client for a file
    UNSOLICITED = "unsolicited"  # nothing was asked (a kill notice, a shutdown): forward it
    QUERY_ERR = "query_err"  # an ERR as the first answer to a statement: forward it


class _State(enum.Enum):
    FIRST = "first"  # the first packet of a (next) result
    COLUMNS = "columns"
    COLUMNS_EOF = "columns_eof"
    ROWS = "rows"
    PREPARE_PARAMS = "prepare_params"
    PREPARE_COLUMNS = "prepare_columns"
    UPLOAD_ANSWER = "upload_answer"  # the client sent a file; the server answers OK or ERR


class ResponseTracker:
    """Follows the server's answers to the client's commands, pipelined or not.

    The client side calls :meth:`client_command` for every command it forwards and
    :meth:`client_upload_frame` while the client sends a file; the server side calls
    :meth:`server_frame` for every frame. :attr:`idle` is true when no answer is pending.
    """

    def __init__(self) -> None:
        self._pending: collections.deque[Reply] = collections.deque()
        self._state = _State.FIRST
        self._binary = False
        self._count = 0  # column or parameter definitions still to come
        self._columns_after = 0  # for PREPARE: column definitions after the parameters
        self.uploading = False  # the client is sending a LOCAL INFILE's content

    @property
    def in_rows(self) -> bool:
        """The next server packet is a row or what ends the rows (see
        :meth:`FrameReader.skip_rows`)."""
        if not self._pending:
            return False
        reply = self._pending[0]
        return reply is Reply.FETCH or (
            reply in (Reply.QUERY, Reply.EXECUTE) and self._state is _State.ROWS
        )

    @property
    def idle(self) -> bool:
        """No answer is pending and no file is being sent."""
        return not self._pending and not self.uploading

    def client_command(self, code: int) -> None:
        """The client sent command ``code`` (it must be in :data:`REPLIES`)."""
        reply = REPLIES[code]
        if reply is not Reply.NONE:
            self._pending.append(reply)

    def client_upload_frame(self, payload: bytes) -> None:
        """The client sent a frame of a file; an empty one ends the file."""
        if not payload:
            self.uploading = False
            self._state = _State.UPLOAD_ANSWER

    def server_frame(self, f: Frame) -> Event:
        """Classify one frame from the server and advance."""
        if f.continuation:
            return Event.PART
        if not self._pending:
            return Event.UNSOLICITED
        reply = self._pending[0]
        p = f.payload
        head = p[:1]
        if reply is Reply.SINGLE:
            return self._done()
        if reply is Reply.FIELD_LIST:
            if head == b"\xff" or (head == b"\xfe" and len(p) < 9):
                return self._done()
            return Event.PART
        if reply is Reply.FETCH:
            if head == b"\xff" or (head == b"\xfe" and len(p) < 9):
                return self._done()
            return Event.PART
        if reply is Reply.PREPARE:
            return self._prepare(p)
        return self._results(p, binary=reply is Reply.EXECUTE)

    def _done(self) -> Event:
        self._pending.popleft()
        self._state = _State.FIRST
        return Event.DONE

    def _after_result(self, status: int) -> Event:
        if status & SERVER_MORE_RESULTS_EXISTS:
            self._state = _State.FIRST
            return Event.PART
        return self._done()

    def _results(self, p: bytes, *, binary: bool) -> Event:
        head = p[:1]
        state = self._state
        if state in (_State.FIRST, _State.UPLOAD_ANSWER):
            if head == b"\xff":
                first = state is _State.FIRST
                self._done()
                return Event.QUERY_ERR if first else Event.DONE
            if head == b"\x00":
                return self._after_result(_ok_status(p))
            if head == b"\xfb" and not binary and state is _State.FIRST:
                self.uploading = True
                return Event.LOCAL_INFILE
            if state is _State.UPLOAD_ANSWER:
                raise ProtocolError("the database answered a file upload with neither OK nor ERR")
            count = _Cursor(p, "a column count").lenenc_int()
            if count == 0:
                raise ProtocolError("the database announced a result with no columns")
            self._count = count
            self._state = _State.COLUMNS
            return Event.PART
        if state is _State.COLUMNS:
            self._count -= 1
            if self._count == 0:
                self._state = _State.COLUMNS_EOF
            return Event.PART
        if state is _State.COLUMNS_EOF:
            if head != b"\xfe":
                raise ProtocolError("the database sent no EOF after the column definitions")
            status = _eof_status(p)
            if binary and status & SERVER_STATUS_CURSOR_EXISTS:
                return self._done()
            self._state = _State.ROWS
            return Event.PART
        # rows
        if head == b"\xff":
            return self._done()
        if head == b"\xfe" and len(p) < 9:
            return self._after_result(_eof_status(p))
        return Event.PART

    def _prepare(self, p: bytes) -> Event:
        head = p[:1]
        if self._state is _State.FIRST:
            if head == b"\xff":
                self._done()
                return Event.QUERY_ERR
            c = _Cursor(p, "the answer to a prepare")
            if c.uint(1) != 0:
                raise ProtocolError("the database answered a prepare with neither OK nor ERR")
            c.take(4)
            columns = c.uint(2)
            params = c.uint(2)
            return self._prepare_next(params, columns)
        # a definition, or the EOF that closes a block of them
        if self._count:
            self._count -= 1
            return Event.PART
        if head != b"\xfe":
            raise ProtocolError("the database sent no EOF after the prepared definitions")
        return self._prepare_next(0, self._columns_after)

    def _prepare_next(self, params: int, columns: int) -> Event:
        if params:
            self._state, self._count, self._columns_after = _State.PREPARE_PARAMS, params, columns
            return Event.PART
        if columns:
            self._state, self._count, self._columns_after = _State.PREPARE_COLUMNS, columns, 0
            return Event.PART
        return self._done()

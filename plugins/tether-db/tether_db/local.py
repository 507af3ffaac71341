"""Telling a local client why Tether refused its connection, in the client's own protocol.

``tether proxy db`` and ``tether db connect`` listen on 127.0.0.1; when the proxy refuses a
connection's stream (the database is not found, the roles do not reach it, its service is
offline), closing the socket would make ``psql`` say only "server closed the connection
unexpectedly". Instead the listener answers as a database server would: PostgreSQL's client
speaks first (an ``SSLRequest``, answered ``N``: the local leg is plaintext, then its
``StartupMessage``) and gets an ``ErrorResponse``; MySQL's client waits for the server, which
may send an ``ERR`` packet instead of its greeting, as a server refusing a host does.
"""

from __future__ import annotations

import trio

from tether_db.mysql import wire as mysql_wire
from tether_db.postgres import wire as pg_wire

__all__ = ["refuse_locally"]

#: How long a local client may take to send its startup before it is just closed.
STARTUP_TIMEOUT = 10.0
#: MySQL's "Host is not allowed to connect" family: a refusal before any greeting.
_ER_ACCESS_DENIED = 1045


async def refuse_locally(protocol: str, stream: trio.abc.Stream, message: str) -> None:
    """Answer a local client of ``protocol`` with ``message`` as its server's error."""
    if protocol == "mysql":
        payload = mysql_wire.build_err(_ER_ACCESS_DENIED, "28000", message)
        await stream.send_all(mysql_wire.frame(0, payload))
        return
    with trio.move_on_after(STARTUP_TIMEOUT):
        parser = pg_wire.StartupParser()
        while True:
            try:
                event = parser.next_event()
            except pg_wire.ProtocolError:
                return  # not a PostgreSQL client: nothing it could read
            if event is None:
                data = await stream.receive_some()
                if not data:
                    return
                parser.feed(data)
            elif isinstance(event, pg_wire.SSLRequest | pg_wire.GSSENCRequest):
                await stream.send_all(b"N")
            elif isinstance(event, pg_wire.CancelRequest):
                return  # a cancel gets no answer, from PostgreSQL either
            else:
                await stream.send_all(pg_wire.error_response("FATAL", "28000", message))
                return

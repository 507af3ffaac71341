"""A small HTTP/1.1 client for the ``kube_access`` legs: one TLS connection, one request at a
time, as kubectl sends them through Tether (h11 over Python's ssl, no pooling, no retries).

:class:`Connection` times each request from its first byte sent to its response's last byte
received; :class:`Watch` keeps a watch's response open and hands over its events with the
moment each one's last byte arrived; :func:`create_and_wait` creates an object on one
connection and waits, in one thread (``select`` on both sockets), for its event on a watch, so
that neither arrival waits for the other to be read.
"""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import time
from collections.abc import Iterator
from typing import Any, Protocol

import h11

USER_AGENT = b"tether-kube-access-benchmark"
RECV = 256 * 1024
#: How long a request or an awaited event may take before the sample fails.
TIMEOUT = 30.0


class Endpoint(Protocol):
    host: str
    port: int
    server_name: str

    def ssl_context(self) -> Any: ...


class RequestFailed(Exception):
    """A request got no complete response, or a status it should not have."""


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    #: first byte sent to last byte received, in seconds
    seconds: float


class Connection:
    """One HTTP/1.1 connection over TLS to ``endpoint``, with its server name as SNI."""

    def __init__(self, endpoint: Endpoint, timeout: float = TIMEOUT) -> None:
        self.endpoint = endpoint
        started = time.perf_counter()
        raw = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's clients do
        try:
            self.sock = endpoint.ssl_context().wrap_socket(
                raw, server_hostname=endpoint.server_name
            )
        except BaseException:
            raw.close()
            raise
        #: TCP connect and TLS handshake, in seconds
        self.handshake_seconds = time.perf_counter() - started
        self.h11 = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _head(self, method: str, target: str, body: bytes, extra: list[tuple[str, str]]) -> bytes:
        headers = [
            ("Host", self.endpoint.server_name),
            ("User-Agent", USER_AGENT.decode()),
            ("Accept", "application/json"),
            *extra,
        ]
        if body or method in ("POST", "PUT", "PATCH"):
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        data = self.h11.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            data += self.h11.send(h11.Data(data=body)) or b""
        return data + (self.h11.send(h11.EndOfMessage()) or b"")

    def send(self, method: str, target: str, body: bytes = b"") -> float:
        """Send a request; returns when its first byte went (``perf_counter``)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        data = self._head(method, target, body, [])
        started = time.perf_counter()
        self.sock.sendall(data)
        return started

    def _events(self) -> Iterator[Any]:
        """h11's events, reading from the socket when it needs data."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.ProtocolError as exc:
                raise RequestFailed(f"the server broke HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                chunk = self.sock.recv(RECV)
                self.h11.receive_data(chunk)  # b"" is the end of the stream
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise RequestFailed("the server closed the connection")
            yield event

    def receive(self) -> tuple[int, bytes]:
        """Read one whole response: status and body."""
        status, body = 0, bytearray()
        for event in self._events():
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, bytes(body)
        raise AssertionError("unreachable")

    def request(self, method: str, target: str, body: bytes = b"", expect: int = 200) -> Response:
        """One request, timed from its first byte sent to its response's last byte; a status
        other than ``expect`` (unless 0: any) fails it."""
        started = self.send(method, target, body)
        status, answer = self.receive()
        seconds = time.perf_counter() - started
        if expect and status != expect:
            raise RequestFailed(f"{method} {target}: {status} {answer[:300]!r}")
        return Response(status, answer, seconds)

    def readable(self) -> bool:
        """Whether bytes are waiting, decrypted or not (``select`` sees only the socket's)."""
        return bool(self.sock.pending() > 0)


class Watch:
    """``GET ...?watch=1`` on a connection of its own; events read as they arrive."""

    def __init__(self, endpoint: Endpoint, path: str, resource_version: str) -> None:
        self.connection = Connection(endpoint)
        target = f"{path}?watch=1&resourceVersion={resource_version}"
        self.connection.send("GET", target)
        self._pending = bytearray()
        self.events: list[tuple[float, dict[str, Any]]] = []
        for event in self.connection._events():
            if isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise RequestFailed(f"watch {path}: {event.status_code}")
                break

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_available(self) -> None:
        """Read what the socket has (it is readable): each whole event line, with the time
        the read that completed it returned."""
        conn = self.connection
        conn.h11.receive_data(conn.sock.recv(RECV))
        arrived = time.perf_counter()
        while True:
            try:
                event = conn.h11.next_event()
            except h11.ProtocolError as exc:
                raise RequestFailed(f"the server broke HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Data):
                self._pending += event.data
                while b"\n" in self._pending:
                    line, _, rest = bytes(self._pending).partition(b"\n")
                    self._pending = bytearray(rest)
                    if line.strip():
                        self.events.append((arrived, json.loads(line)))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                raise RequestFailed("the watch ended")


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One create and its watch event: seconds from the create's response (or from its
    request's first byte) to the event's arrival; negative when the event came first."""

    after_response: float
    after_request: float
    create_seconds: float


def create_and_wait(
    creator: Connection, path: str, body: dict[str, Any], watch: Watch, name: str
) -> Delivery:
    """POST ``body`` to ``path`` on ``creator``, then wait for the event naming ``name`` on
    ``watch``, reading both sockets as bytes come (one thread, ``select``)."""
    watch.events.clear()
    sent = creator.send("POST", path, json.dumps(body).encode())
    responded: float | None = None
    seen: float | None = None
    deadline = time.monotonic() + TIMEOUT
    while responded is None or seen is None:
        awaited = [
            c for c, done in ((creator, responded), (watch.connection, seen)) if done is None
        ]
        ready = [c for c in awaited if c.readable()]
        if not ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestFailed(f"no answer or event for {name} in {TIMEOUT:.0f} s")
            socks = select.select([c.sock for c in awaited], [], [], left)[0]
            ready = [c for c in awaited if c.sock in socks]
        for conn in ready:
            if conn is creator:
                # the response is small: read it whole now that its first bytes are here
                status, answer = creator.receive()
                responded = time.perf_counter()
                if status != 201:
                    raise RequestFailed(f"POST {path}: {status} {answer[:300]!r}")
            else:
                watch.read_available()
                seen = next((at for at, event in watch.events if _name(event) == name), None)
    assert responded is not None and seen is not None
    return Delivery(seen - responded, seen - sent, responded - sent)


def _name(event: dict[str, Any]) -> str | None:
    return ((event.get("object") or {}).get("metadata") or {}).get("name")


def configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}

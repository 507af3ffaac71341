"""A TCP load balancer on 127.0.0.1, for tests of several proxies behind one address.

A highly available cluster puts its proxies behind a load balancer: users' profiles and
leaves' ``tunnel_addr`` name the balancer, and a proxy that goes down is skipped. This one
forwards bytes only (TLS stays end to end, as with a layer-4 balancer), picks the backends
round robin, and skips one that refuses the connection. It runs in threads because the tests
that use it drive real processes synchronously.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from collections.abc import Sequence
from types import TracebackType

__all__ = ["TCPBalancer"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


class TCPBalancer:
    """Listen on 127.0.0.1 and forward each connection to the next live backend.

    Use as ``with TCPBalancer(["127.0.0.1:3080", "127.0.0.1:3081"]) as lb: lb.addr``.
    """

    def __init__(self, backends: Sequence[str]) -> None:
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._down = False
        #: backend address -> connections forwarded to it
        self.forwarded: dict[str, int] = dict.fromkeys(self.backends, 0)

    def __enter__(self) -> TCPBalancer:
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and cut every forwarded connection."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def cut(self) -> None:
        """Take every backend down as the clients see it: cut the forwarded connections and
        end each new one at once, until :meth:`restore`. (A store behind it becomes
        unreachable for the daemon using it, while the store itself keeps running.)"""
        with self._lock:
            self._down = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        """Forward new connections again after :meth:`cut`."""
        with self._lock:
            self._down = False

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._spawn(self._forward, client)

    def _connect(self) -> socket.socket | None:
        with self._lock:
            start = next(self._next)
        for i in range(len(self.backends)):
            addr = self.backends[(start + i) % len(self.backends)]
            try:
                upstream = socket.create_connection(_split(addr), timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                log.info("balancer: backend %s is down (%s), trying the next", addr, exc)
                continue
            upstream.settimeout(None)
            with self._lock:
                self.forwarded[addr] += 1
            return upstream
        return None

    def _forward(self, client: socket.socket) -> None:
        with self._lock:
            down = self._down
        upstream = None if down else self._connect()
        if upstream is None:
            client.close()  # every backend is down: the client sees the connection end
            return
        with self._lock:
            self._sockets.update((client, upstream))
        pump = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        pump.start()
        self._pump(client, upstream)
        pump.join()
        with self._lock:
            self._sockets.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        """Copy until ``source`` ends, then end ``sink``'s writing half."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

"""Small HTTP servers for tests: the stand-ins and identity providers tests run themselves.

They run in a thread, because the tests that use them drive real processes synchronously, and
listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["free_port", "loopback_address", "serve_http", "serve_in_thread"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server that must keep its port across a
    restart; otherwise let the server bind port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_address() -> str:
    """An address of 127/8 for one test alone (not 127.0.0.1), where a server may listen on a
    fixed port (443, 3080, a default of Tether's) without meeting another test's."""
    return f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler], port: int = 0) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1:``port`` (0: any) until the block ends; yields the
    base URL, ``http://127.0.0.1:PORT``."""
    with serve_in_thread(ThreadingHTTPServer(("127.0.0.1", port), handler)) as addr:
        yield f"http://{addr}"


@contextlib.contextmanager
def serve_in_thread(server: socketserver.BaseServer) -> Iterator[str]:
    """Run ``server`` (bound to 127.0.0.1) in a thread until the block ends, then shut it down
    and close it; yields its address, ``127.0.0.1:PORT``."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"  # type: ignore[index]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""In-memory transports that say what a TLS stream says, for tests of code that checks it.

The tunnel server refuses a transport that cannot tell its TLS version (checks fail closed),
so an in-memory test network hands it streams that report one, as
:class:`~tether.tlsstream.TLSStream` does after its handshake.
"""

from __future__ import annotations

import trio
import trio.testing

__all__ = ["MemoryTLSStream", "memory_tls_stream_pair"]


class MemoryTLSStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory stream pair that reports a negotiated TLS ``version``."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, version: str | None) -> None:
        self._stream = stream
        self._version = version

    def version(self) -> str | None:
        """The TLS version this end says it negotiated (as ``ssl.SSLSocket.version``)."""
        return self._version

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


def memory_tls_stream_pair(
    version: str | None = "TLSv1.3",
) -> tuple[MemoryTLSStream, MemoryTLSStream]:
    """A connected pair of in-memory streams whose ends report ``version``."""
    a, b = trio.testing.memory_stream_pair()
    return MemoryTLSStream(a, version), MemoryTLSStream(b, version)

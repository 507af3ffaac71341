"""Bulk-transfer load generator and sink, each in its own process.

The forwarders under test (Tether's tunnel, ``ssh``/``sshd``) are measured by pushing bytes
through them, so the pushing and the counting must not share a GIL with each other or with a
Python forwarder: the sink and every sender run as separate ``python`` processes started from
this file (``python loadgen.py sink`` / ``python loadgen.py send ...``). Inside those processes
plain blocking sockets and threads are fine: they are not what is measured.

Both processes read one system-wide clock (``CLOCK_MONOTONIC``), so a throughput is
``bytes received at the sink / (last byte received at the sink - first connect by the sender)``.

Every connection starts with a 16-byte header carrying a tag, so the sink's reports can be
matched to the round that sent them; connections without a header (port probes, stray
connects a forwarder makes) are reported with a null tag and ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

HERE = os.path.abspath(__file__)
LOOPBACK = "127.0.0.1"
MAGIC = b"TTHR"
HEADER = struct.Struct("!4sQ4x")  # magic, tag, padding: 16 bytes
CHUNK = 1 << 20  # 1 MiB writes and reads: syscall overhead stays out of the figures
MB = 1_000_000  # MB/s in the tables means 10**6 bytes per second


def now_ns() -> int:
    """The clock both processes share (system-wide on Linux, unlike per-process clocks)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# --- the sink process -------------------------------------------------------------------------


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _sink_connection(
    conn: socket.socket, accepted: int, out: IO[str], lock: threading.Lock
) -> None:
    tag: int | None = None
    total = 0
    first = last = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        header = _recv_exact(conn, HEADER.size)
        if len(header) == HEADER.size:
            magic, value = HEADER.unpack(header)
            if magic == MAGIC:
                tag = value
        if tag is not None:
            while True:
                n = conn.recv_into(view)
                if not n:
                    break
                stamp = now_ns()
                if not total:
                    first = stamp
                last = stamp
                total += n
    except OSError as exc:
        print(f"sink: connection error: {exc}", file=sys.stderr)
    finally:
        conn.close()
    record = {"tag": tag, "bytes": total, "accepted": accepted, "first": first, "last": last}
    with lock:
        out.write(json.dumps(record) + "\n")
        out.flush()


def _exit_when_parent_goes() -> None:
    """The sink lives exactly as long as its owner: stdin EOF (owner gone or done) ends it."""
    sys.stdin.read()
    os._exit(0)


def run_sink(host: str) -> int:
    """Accept connections forever, discard what arrives, report one JSON line per connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1024)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    lock = threading.Lock()
    while True:
        conn, _ = listener.accept()
        accepted = now_ns()
        threading.Thread(
            target=_sink_connection, args=(conn, accepted, sys.stdout, lock), daemon=True
        ).start()


# --- the sender process -----------------------------------------------------------------------


def _send_stream(
    sock: socket.socket, tag: int, nbytes: int, payload: bytes, errors: list[BaseException]
) -> None:
    try:
        sock.sendall(HEADER.pack(MAGIC, tag))
        view = memoryview(payload)
        left = nbytes
        while left:
            n = min(left, len(view))
            sock.sendall(view[:n])
            left -= n
        sock.shutdown(socket.SHUT_WR)
        # wait for the far side to close: a close with unread data would reset the stream
        while sock.recv(65536):
            pass
    except OSError as exc:
        errors.append(exc)
    finally:
        sock.close()


def run_sender(host: str, port: int, streams: int, nbytes: int, tag: int, timeout: float) -> int:
    """Open ``streams`` connections, write ``nbytes`` on each, report the start time as JSON."""
    payload = os.urandom(CHUNK)  # incompressible, in case a forwarder compresses
    start = now_ns()
    socks = [socket.create_connection((host, port), timeout=timeout) for _ in range(streams)]
    connected = now_ns()
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_send_stream, args=(s, tag, nbytes, payload, errors)) for s in socks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = now_ns()
    report = {
        "start": start,
        "connected": connected,
        "end": end,
        "errors": [str(e) for e in errors],
    }
    print(json.dumps(report), flush=True)
    return 1 if errors else 0


# --- the parent's side ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One round: ``streams`` connections of ``bytes_per_stream`` each, through one entry."""

    streams: int
    bytes_per_stream: int
    total_bytes: int
    seconds: float
    per_stream_seconds: list[float]

    @property
    def mb_s(self) -> float:
        return self.total_bytes / self.seconds / MB


class Sink:
    """The sink process, owned: ``with Sink() as sink:`` then ``sink.address``."""

    def __init__(self, host: str = LOOPBACK) -> None:
        self._host = host
        self._proc: subprocess.Popen[str] | None = None
        self._records: dict[int, list[dict[str, Any]]] = {}
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self.address: tuple[str, int] = (host, 0)

    def __enter__(self) -> Sink:
        self._proc = subprocess.Popen(
            [sys.executable, "-u", HERE, "sink", "--host", self._host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError("the sink process exited before listening")
        self.address = (self._host, int(json.loads(line)["port"]))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        if proc.stdin is not None:
            proc.stdin.close()  # the sink exits on stdin EOF
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            record = json.loads(line)
            if record["tag"] is None:
                continue
            with self._cond:
                self._records.setdefault(record["tag"], []).append(record)
                self._cond.notify_all()

    def collect(self, tag: int, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait for ``count`` finished connections carrying ``tag`` and return their reports."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self._records.get(tag, ())) >= count, timeout)
            got = self._records.pop(tag, [])
        if not ok:
            raise TimeoutError(f"the sink saw {len(got)} of {count} connections in {timeout:.0f}s")
        return got


def _new_tag() -> int:
    return secrets.randbits(63)


def wait_ready(entry: tuple[str, int], sink: Sink, timeout: float = 20.0) -> None:
    """Wait until a tagged connection to ``entry`` arrives at the sink, end to end.

    A listening entry port proves little for a reverse tunnel: the far side may not be ready to
    dial the sink yet. A probe that the sink reports proves the whole path.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        tag = _new_tag()
        try:
            with socket.create_connection(entry, timeout=2.0) as s:
                s.sendall(HEADER.pack(MAGIC, tag) + b"probe")
                s.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    s.recv(1)
            sink.collect(tag, 1, timeout=2.0)
            return
        except (OSError, TimeoutError) as exc:
            last_error = exc
            time.sleep(0.1)
    raise TimeoutError(f"no probe through {entry[0]}:{entry[1]} reached the sink: {last_error}")


def measure(
    entry: tuple[str, int],
    sink: Sink,
    streams: int,
    bytes_per_stream: int,
    timeout: float | None = None,
) -> Measurement:
    """Run one sender process against ``entry`` and time the bytes the sink received."""
    if timeout is None:
        # generous: 5 MB/s would be a broken forwarder, not a slow one
        timeout = 30.0 + streams * bytes_per_stream / (5 * MB)
    tag = _new_tag()
    argv = [
        sys.executable,
        "-u",
        HERE,
        "send",
        "--host",
        entry[0],
        "--port",
        str(entry[1]),
        "--streams",
        str(streams),
        "--bytes",
        str(bytes_per_stream),
        "--tag",
        str(tag),
        "--timeout",
        str(timeout),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"the sender failed (status {proc.returncode}): {out.strip()} {err.strip()}"
        )
    sent = json.loads(out)
    records = sink.collect(tag, streams, timeout=timeout)
    short = [r["bytes"] for r in records if r["bytes"] != bytes_per_stream]
    if short:
        raise RuntimeError(
            f"the sink received {short} bytes on some streams, not {bytes_per_stream}"
        )
    last = max(r["last"] for r in records)
    seconds = (last - sent["start"]) / 1e9
    return Measurement(
        streams=streams,
        bytes_per_stream=bytes_per_stream,
        total_bytes=sum(r["bytes"] for r in records),
        seconds=seconds,
        per_stream_seconds=[(r["last"] - r["accepted"]) / 1e9 for r in records],
    )


@contextlib.contextmanager
def raw_tcp(sink: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """The raw loopback leg: the entry is the sink itself, nothing in between."""
    yield sink


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    sink = sub.add_parser("sink")
    sink.add_argument("--host", default=LOOPBACK)
    send = sub.add_parser("send")
    send.add_argument("--host", default=LOOPBACK)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--streams", type=int, required=True)
    send.add_argument("--bytes", type=int, required=True)
    send.add_argument("--tag", type=int, required=True)
    send.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.role == "sink":
        return run_sink(args.host)
    return run_sender(args.host, args.port, args.streams, args.bytes, args.tag, args.timeout)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

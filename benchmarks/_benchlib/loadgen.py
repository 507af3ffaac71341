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

For a path that ends at an echo service (``tether echo`` through real clusters), the sender
reads back what it wrote instead (``python loadgen.py echo-send ...``): each connection's
first line is the service's greeting, then the clock runs from the moment every connection
has been greeted until the last byte has come back. ``python loadgen.py echo-server`` is the
same service for a baseline: a greeting line, then every byte back.
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


def _listen(host: str) -> socket.socket:
    """A listener on a free port of ``host``, told to the owner on stdout; the process ends
    when its owner does."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1024)
    print(json.dumps({"port": listener.getsockname()[1]}), flush=True)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    return listener


def run_sink(host: str) -> int:
    """Accept connections forever, discard what arrives, report one JSON line per connection."""
    listener = _listen(host)
    lock = threading.Lock()
    while True:
        conn, _ = listener.accept()
        accepted = now_ns()
        threading.Thread(
            target=_sink_connection, args=(conn, accepted, sys.stdout, lock), daemon=True
        ).start()


# --- the sender process -----------------------------------------------------------------------


def _send_bytes(sock: socket.socket, nbytes: int, payload: bytes) -> None:
    """Write ``nbytes`` of ``payload``, repeated as often as needed."""
    view = memoryview(payload)
    left = nbytes
    while left:
        n = min(left, len(view))
        sock.sendall(view[:n])
        left -= n


def _send_stream(
    sock: socket.socket, tag: int, nbytes: int, payload: bytes, errors: list[BaseException]
) -> None:
    try:
        sock.sendall(HEADER.pack(MAGIC, tag))
        _send_bytes(sock, nbytes, payload)
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


# --- the echo sender and server --------------------------------------------------------------


def _read_line(sock: socket.socket) -> bytes:
    """The greeting line, byte by byte (nothing after it may be consumed)."""
    line = b""
    while not line.endswith(b"\n"):
        got = sock.recv(1)
        if not got:
            raise ConnectionError(f"the connection closed before its greeting ended: {line!r}")
        line += got
    return line


def _echo_stream(
    sock: socket.socket,
    nbytes: int,
    payload: bytes,
    greeted: threading.Barrier,
    times: list[tuple[int, int]],
    errors: list[BaseException],
) -> None:
    try:
        _read_line(sock)
        greeted.wait()
        start = now_ns()

        def write() -> None:
            try:
                _send_bytes(sock, nbytes, payload)
            except OSError as exc:
                errors.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        buf = memoryview(bytearray(CHUNK))
        got = 0
        while got < nbytes:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError(f"the echo closed after {got} of {nbytes} bytes")
            got += n
        times.append((start, now_ns()))
        writer.join()
    except (OSError, threading.BrokenBarrierError) as exc:
        errors.append(exc)
        greeted.abort()
    finally:
        sock.close()


def run_echo_sender(host: str, port: int, streams: int, nbytes: int, timeout: float) -> int:
    """Open ``streams`` connections to an echo, read each greeting, then write ``nbytes`` on
    each while reading them back; report the first start and the last echoed byte as JSON."""
    payload = os.urandom(CHUNK)
    socks = [socket.create_connection((host, port), timeout=timeout) for _ in range(streams)]
    greeted = threading.Barrier(streams)
    times: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_echo_stream, args=(s, nbytes, payload, greeted, times, errors))
        for s in socks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report: dict[str, Any] = {"errors": [str(e) for e in errors]}
    if not errors:
        report.update(start=min(t[0] for t in times), end=max(t[1] for t in times))
    print(json.dumps(report), flush=True)
    return 1 if errors else 0


GREETING = b"echo: every byte comes back\n"


def _echo_connection(conn: socket.socket) -> None:
    buf = memoryview(bytearray(CHUNK))
    try:
        conn.sendall(GREETING)
        while n := conn.recv_into(buf):
            conn.sendall(buf[:n])
    except OSError:
        pass  # the sender went away: nothing to report, the sender says what it got
    finally:
        conn.close()


def run_echo_server(host: str) -> int:
    """Greet every connection with a line, then send back every byte; forever."""
    listener = _listen(host)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo_connection, args=(conn,), daemon=True).start()


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


def _start_server(role: str, host: str) -> tuple[subprocess.Popen[str], int]:
    """Start ``loadgen.py ROLE`` (the sink or the echo server); its port once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-u", HERE, role, "--host", host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _stop_server(proc, None)
        raise RuntimeError(f"the {role} process exited before listening")
    return proc, int(json.loads(line)["port"])


def _stop_server(proc: subprocess.Popen[str], reader: threading.Thread | None) -> None:
    if proc.stdin is not None:
        proc.stdin.close()  # the process exits on stdin EOF
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if reader is not None:
        reader.join(5)
    if proc.stdout is not None:
        proc.stdout.close()


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
        self._proc, port = _start_server("sink", self._host)
        self.address = (self._host, port)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        _stop_server(proc, self._reader)

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


def _run_sender(
    role: str,
    entry: tuple[str, int],
    streams: int,
    bytes_per_stream: int,
    timeout: float,
    *extra: str,
) -> dict[str, Any]:
    """Run a sender process (``loadgen.py ROLE``) against ``entry`` to its end; its JSON
    report."""
    argv = [sys.executable, "-u", HERE, role, "--host", entry[0], "--port", str(entry[1])]
    argv += ["--streams", str(streams), "--bytes", str(bytes_per_stream)]
    argv += ["--timeout", str(timeout), *extra]
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
    report: dict[str, Any] = json.loads(out)
    return report


def _timeout(streams: int, bytes_per_stream: int) -> float:
    # generous: 5 MB/s would be a broken forwarder, not a slow one
    return 30.0 + streams * bytes_per_stream / (5 * MB)


def measure(
    entry: tuple[str, int],
    sink: Sink,
    streams: int,
    bytes_per_stream: int,
    timeout: float | None = None,
) -> Measurement:
    """Run one sender process against ``entry`` and time the bytes the sink received."""
    if timeout is None:
        timeout = _timeout(streams, bytes_per_stream)
    tag = _new_tag()
    sent = _run_sender("send", entry, streams, bytes_per_stream, timeout, "--tag", str(tag))
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


@dataclasses.dataclass(frozen=True)
class EchoServer:
    address: tuple[str, int]
    pid: int


@contextlib.contextmanager
def echo_server(host: str = LOOPBACK) -> Iterator[EchoServer]:
    """The echo server process, owned: yields its address and pid."""
    proc, port = _start_server("echo-server", host)
    try:
        yield EchoServer((host, port), proc.pid)
    finally:
        _stop_server(proc, None)


def wait_greeted(
    entry: tuple[str, int], timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until a connection to ``entry`` gets an echo's greeting, end to end; fail early
    if ``proc`` (what listens at ``entry``) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
        try:
            with socket.create_connection(entry, timeout=5.0) as s:
                _read_line(s)
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no greeting through {entry[0]}:{entry[1]}: {exc}") from exc
            time.sleep(0.2)


def measure_echo(
    entry: tuple[str, int], streams: int, bytes_per_stream: int, timeout: float | None = None
) -> Measurement:
    """Run one echo sender process against ``entry``: the time from every greeting read to
    the last byte back, ``bytes_per_stream`` each way on each of ``streams`` connections
    (``total_bytes`` counts one way)."""
    if timeout is None:
        timeout = 2 * _timeout(streams, bytes_per_stream)
    sent = _run_sender("echo-send", entry, streams, bytes_per_stream, timeout)
    return Measurement(
        streams=streams,
        bytes_per_stream=bytes_per_stream,
        total_bytes=streams * bytes_per_stream,
        seconds=(sent["end"] - sent["start"]) / 1e9,
        per_stream_seconds=[],
    )


@contextlib.contextmanager
def raw_tcp(sink: tuple[str, int]) -> Iterator[tuple[str, int]]:
    """The raw loopback leg: the entry is the sink itself, nothing in between."""
    yield sink


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("sink", "echo-server"):
        sub.add_parser(role).add_argument("--host", default=LOOPBACK)
    for role in ("send", "echo-send"):
        send = sub.add_parser(role)
        send.add_argument("--host", default=LOOPBACK)
        send.add_argument("--port", type=int, required=True)
        send.add_argument("--streams", type=int, required=True)
        send.add_argument("--bytes", type=int, required=True)
        send.add_argument("--timeout", type=float, default=600.0)
        if role == "send":
            send.add_argument("--tag", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "sink":
        return run_sink(args.host)
    if args.role == "echo-server":
        return run_echo_server(args.host)
    if args.role == "echo-send":
        return run_echo_sender(args.host, args.port, args.streams, args.bytes, args.timeout)
    return run_sender(args.host, args.port, args.streams, args.bytes, args.tag, args.timeout)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

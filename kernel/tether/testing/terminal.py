"""Run a program on a terminal of its own, as a person at a keyboard does: password prompts
read the terminal (not standard input), an interactive shell gets its lines typed, and
Ctrl-C typed there interrupts the terminal's foreground processes (the program and its
children, such as the ``psql`` that ``tether db connect`` starts)."""

from __future__ import annotations

import fcntl
import os
import pathlib
import pty
import select
import subprocess
import termios
import time
from collections.abc import Callable, Mapping, Sequence

#: what to type once ``expect`` shows: a line, or a function that returns it (called then, so
#: it can check something while the program runs)
Step = tuple[bytes, "str | Callable[[], str]"]


def _controlling_terminal() -> None:
    """In the child: make the terminal on its standard input its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_terminal(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: pathlib.Path | None = None,
    answers: Mapping[bytes, str] | None = None,
    script: Sequence[Step] = (),
    timeout: float = 60,
) -> tuple[int, str]:
    """Run ``argv`` with a terminal of its own (its controlling tty) until it exits.

    :param env: the whole environment of the program.
    :param answers: prompt -> reply, typed each time the prompt shows anew (a password).
    :param script: typed in order, each once its ``expect`` shows after the previous one's.
    :returns: the exit status (negative for a signal; the program is killed at ``timeout``)
        and everything it wrote, with the terminal's line ends made ``\\n``.
    """
    master, slave = pty.openpty()
    process = subprocess.Popen(
        list(argv),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_controlling_terminal,
    )
    os.close(slave)
    seen = b""
    counts = dict.fromkeys(answers or {}, 0)
    step, cursor = 0, 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the program exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            for prompt, reply in (answers or {}).items():
                if seen.count(prompt) > counts[prompt]:
                    counts[prompt] = seen.count(prompt)
                    os.write(master, reply.encode() + b"\n")
            while step < len(script) and script[step][0] in seen[cursor:]:
                expect, typed = script[step]
                cursor = seen.index(expect, cursor) + len(expect)
                line = typed() if callable(typed) else typed
                os.write(master, line.encode() + b"\n")
                step += 1
        status = process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        status = -9
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return status, seen.decode(errors="replace").replace("\r\n", "\n")

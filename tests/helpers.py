"""Test helpers shared by every test session (main and nameko): waiting on conditions, never on time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, message: str = "condition") -> None:
    """Poll ``predicate`` until it is truthy; fail with ``message`` after ``timeout`` seconds.

    Under eventlet (the nameko session) ``time.sleep`` is green, so the poll lets the containers run.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)  # quick for fast conditions, light on the CPU for slow ones


def free_port_block(size: int, start: int = 21000) -> int:
    """A base port with ``size`` consecutive free ports (a federation numbers its nodes from it)."""
    import socket

    for base in range(start, 60000, 97):
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port block")


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

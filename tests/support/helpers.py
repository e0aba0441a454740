"""Test helpers shared by every test session (main and nameko): waiting on conditions, never on time."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.federation import Federation


def wait_until(predicate: Callable[..., object], timeout: float = 10.0, message: str = "condition") -> None:
    """Poll ``predicate()`` until it is truthy; fail with ``message`` after ``timeout`` seconds.

    ``Callable[...]`` so that a loop may bind its variable as a default (``lambda n=node: ...``).

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


@contextmanager
def running_federation(data_dir: Path, *, ready_timeout_s: float = 120.0, **options: Any) -> Iterator[Federation]:
    """The six nodes of `lianxin up` and the national simulator on free ports, stopped afterwards."""
    from services.federation import DEFAULT_TOPOLOGY, Federation

    base = free_port_block(2 * len(DEFAULT_TOPOLOGY) + 1)
    federation = Federation(
        data_dir=data_dir,
        base_port=base,
        metrics_base_port=base + len(DEFAULT_TOPOLOGY) + 1,  # the national simulator takes base + 6
        extra_env={"LIANXIN_LOG_LEVEL": "WARNING"},
        **options,
    )
    try:
        federation.start(ready_timeout_s=ready_timeout_s)
        yield federation
    finally:
        federation.stop()

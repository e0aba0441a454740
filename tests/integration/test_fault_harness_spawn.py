"""The fault harness starts its node processes from a process that is busy with grpc itself.

The harness's own load generator and health checks run grpc, so grpc's event engine (its epoll
poller thread) is alive in the process that spawns, kills and restarts the nodes. A child started
with fork() runs grpc's fork handlers, which restart that engine in the child, and the child's
close_fds then closes the new epoll fd before exec: the child aborts ("epoll_wait error: Bad file
descriptor", exit -6) in a worker's log, which the harness counted as a worker crashing on its own.
Here every child of ``spawn_logged`` must exit 0 while this process has grpc running, and a child
must still die with the thread that started it (its parent-death signal).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.faults.cluster import spawn_logged
from tests.support.helpers import wait_until

# About one child in twenty aborted with the old spawn (preexec_fn) on the shared two-core machine.
SPAWNS = 300


@pytest.fixture()
def grpc_running() -> Iterator[None]:
    """A grpc server and a channel to it in this process, one call made: the event engine is up."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        yield
    finally:
        channel.close()
        server.stop(None)


def _true() -> str:
    path = shutil.which("true")
    assert path is not None
    return path


@pytest.mark.usefixtures("grpc_running")
def test_children_spawned_beside_grpc_never_abort_before_exec(tmp_path: Path) -> None:
    log = tmp_path / "children.log"
    codes = [spawn_logged([_true()], os.environ, log).wait(timeout=30) for _ in range(SPAWNS)]
    aborted = sum(1 for code in codes if code != 0)
    assert aborted == 0, f"{aborted} of {SPAWNS} children failed: {log.read_text(errors='replace')[-2000:]}"


def _running(pid: int, program: str) -> bool:
    """The process has exec'd ``program`` (setpriv set its parent-death signal just before)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe")) == program
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="no setpriv: children do not get a parent-death signal")
@pytest.mark.usefixtures("grpc_running")
def test_a_child_dies_with_the_thread_that_started_it(tmp_path: Path) -> None:
    started = []

    def start() -> None:
        child = spawn_logged(["sleep", "120"], os.environ, tmp_path / "sleep.log")
        started.append(child)
        wait_until(lambda: _running(child.pid, "sleep"), timeout=30, message="sleep to start")

    starter = threading.Thread(target=start)
    starter.start()
    starter.join()  # the starting thread is gone: the kernel sends the child SIGKILL
    (child,) = started
    try:
        wait_until(lambda: child.poll() is not None, timeout=30, message="the child to die with its starter")
        assert child.returncode == -9
    finally:
        child.kill()
        child.wait()

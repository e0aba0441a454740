"""The transport baseline: a bare grpcio server whose one method returns the request bytes.

Run as its own process (``python -m bench.harness.echo --workers 16``) so that, like the node it is
compared with, it does not share the load generator's interpreter lock. It prints its address on
the first line of stdout and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc

METHOD = "/bench.Echo/Echo"


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def echo_server(workers: int, host: str = "127.0.0.1") -> tuple[grpc.Server, str]:
    """A started echo server with ``workers`` threads (the node's gRPC pool size) and its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    server.start()
    return server, f"{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare grpcio echo server (benchmark baseline)")
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)
    server, address = echo_server(args.workers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    print(address, flush=True)

    # The parent's death closes our stdin: never outlive the harness.
    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait()
    server.stop(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

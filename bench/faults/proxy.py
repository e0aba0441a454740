"""A TCP proxy on loopback that the fault harness controls: cut, restore and delay a link.

It stands between a child node and its parent (``LIANXIN_PARENT`` = the proxy's address), so the
harness can break the link the way a network does, without touching either process:

- ``cut()``: every open connection is reset (RST, not a polite FIN: the peers see a broken link)
  and the listening socket is closed, so new connections are refused until ``restore()``.
- ``restore()``: listen again on the same port.
- ``set_delay(ms)``: every chunk read from either side is written to the other side ``ms``
  milliseconds after it was read. Chunks are pipelined (a latency, not a throughput cap), in order.

The proxy runs an asyncio loop in its own daemon thread; the control methods are thread-safe and
return once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

CHUNK = 64 * 1024
QUEUE_CHUNKS = 64  # per direction: a slow reader pushes back on the writer instead of buffering without end


@dataclass
class ProxyStats:
    accepted: int = 0
    active: int = 0
    reset: int = 0
    bytes_up: int = 0  # client → target
    bytes_down: int = 0  # target → client


class _Pair:
    """One proxied connection: the client's and the target's transports."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.target: asyncio.StreamWriter | None = None

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.target) if w is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on with a zero timeout makes close() abort the connection."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards ``host:port`` (loopback, a free port by default) to ``target`` ("host:port")."""

    def __init__(self, target: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        target_host, _, target_port = target.rpartition(":")
        self.target_host = target_host or "127.0.0.1"
        self.target_port = int(target_port)
        self.host = host
        self.port = port
        self.stats = ProxyStats()
        self._delay_s = 0.0
        self._cut = False
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{target}", daemon=True)

    # ------------------------------------------------------------------ control (any thread)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def delay_ms(self) -> float:
        return self._delay_s * 1000.0

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Reset every connection and refuse new ones until ``restore()``."""
        self._call(self._cut_all())

    def restore(self) -> None:
        self._call(self._restore())

    def set_delay(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("delay must be >= 0 ms")
        self._delay_s = ms / 1000.0

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._cut_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    # ------------------------------------------------------------------ the loop's side

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])  # the free port chosen, kept for restore()

    async def _cut_all(self) -> None:
        self._cut = True
        if self._server is not None:
            self._server.close()  # closes the listening socket: connects are refused from now on
            self._server = None
        for pair in list(self._pairs):
            for writer in pair.writers():
                _reset(writer)
            self.stats.reset += 1
        self._pairs.clear()

    async def _restore(self) -> None:
        if self._server is None:
            await self._listen()
        self._cut = False

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if self._cut:
            _reset(client)
            return
        self.stats.accepted += 1
        pair = _Pair(client)
        self._pairs.add(pair)
        self.stats.active += 1
        try:
            try:
                target_reader, pair.target = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                _reset(client)  # the target refuses: so does the proxy
                return
            if self._cut or pair not in self._pairs:
                _reset(pair.target)
                return
            up = asyncio.ensure_future(self._pump(client_reader, pair.target, up=True))
            down = asyncio.ensure_future(self._pump(target_reader, client, up=False))
            # A clean EOF half-closes one direction and the other goes on; a reset on either side
            # (an exception) resets both, as a broken network path would.
            _done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
            if pending:
                for writer in pair.writers():
                    _reset(writer)
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
            for task in (up, down):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved, so asyncio does not log it as never retrieved
        finally:
            self.stats.active -= 1
            self._pairs.discard(pair)
            for writer in pair.writers():
                if not writer.is_closing():
                    writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool) -> None:
        """Copy one direction; each chunk leaves ``delay`` after it arrived, in arrival order."""
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read() -> None:
            loop = asyncio.get_running_loop()
            try:
                while True:
                    data = await reader.read(CHUNK)
                    await queue.put((loop.time() + self._delay_s, data))
                    if not data:
                        return
            except OSError:
                await queue.put((0.0, None))  # the sender's side broke: pass the reset on

        async def write() -> None:
            loop = asyncio.get_running_loop()
            while True:
                due, data = await queue.get()
                if data is None:
                    raise ConnectionResetError("peer reset")
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()  # half-close, as the sender did
                    return
                writer.write(data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await writer.drain()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reading

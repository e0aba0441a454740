"""A client channel that refuses calls once closed, instead of ending the process.

grpcio (1.85) looks up a method's registered call handle in the C core each time a multi-callable is
made, and makes one for every call that passes through client interceptors. On a channel that
another thread has closed, that lookup dereferences the freed core channel: a segmentation fault
that kills every node of the process (a CI run died of it when a node stopped while its exchange link
was acknowledging a PullDown). This wrapper makes the lookup and ``close`` exclusive, so a call
that loses the race gets grpc's own ``ValueError`` for a closed channel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

_CLOSED = "Cannot invoke RPC on closed channel!"


class ClosableChannel(grpc.Channel):  # type: ignore[misc]
    """Wraps a plain channel (before any interceptor): multi-callables are made only while it is open."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self._guard = threading.Lock()
        self._closed = False

    def _multi_callable(self, kind: str, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._guard:
            if self._closed:
                raise ValueError(_CLOSED)
            return getattr(self._channel, kind)(method, *args, **kwargs)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> grpc.UnaryUnaryMultiCallable:
        return self._multi_callable("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> grpc.UnaryStreamMultiCallable:
        return self._multi_callable("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> grpc.StreamUnaryMultiCallable:
        return self._multi_callable("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> grpc.StreamStreamMultiCallable:
        return self._multi_callable("stream_stream", method, *args, **kwargs)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> ClosableChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""When a request reached the gateway: the start of the server time its pages report (issue 17).

Starlette runs a page only once uvicorn's event loop gets to the request's task; with 50 clients
that wait can be as long as the page itself, and a clock started in the page would not see it. The
HTTP protocol below notes the moment its parser begins a request (the first bytes read from the
socket) in the request's ASGI scope, and ``received_at`` hands it to the page wrapper.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RECEIVED_KEY = "lianxin.received"


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, noting when each request's first bytes were parsed."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[RECEIVED_KEY] = time.perf_counter()  # type: ignore[literal-required]


def received_at(scope: Mapping[str, Any]) -> float:
    """When the request reached the gateway's parser; now, under a server without the protocol above."""
    found = scope.get(RECEIVED_KEY)
    return found if isinstance(found, float) else time.perf_counter()

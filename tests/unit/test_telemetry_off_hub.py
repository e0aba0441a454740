"""The worker's span exports leave the calling thread; api processes never load eventlet for it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from services.common.security import Access, rule_for
from services.common.telemetry import OffHubExporter, _off_hub_executor


class Recording(SpanExporter):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.threads.append(threading.get_ident())
        return SpanExportResult.SUCCESS


def test_an_off_hub_exporter_exports_on_the_executors_thread() -> None:
    inner = Recording()
    with ThreadPoolExecutor(max_workers=1) as pool:

        def execute(call: Callable[..., Any], *args: Any) -> Any:
            return pool.submit(call, *args).result()

        assert OffHubExporter(inner, execute).export([]) is SpanExportResult.SUCCESS
    assert inner.threads and inner.threads[0] != threading.get_ident()


def test_a_process_without_eventlet_exports_inline_and_does_not_import_it() -> None:
    if "eventlet" in sys.modules:  # another test of this session loaded it: nothing to check here
        return
    assert _off_hub_executor() is None
    assert "eventlet" not in sys.modules


def test_room_holds_accept_another_nodes_certificate_or_an_operator_token() -> None:
    # ListFreePeriods: a remote consultation's host asks each participant's node (远程会商).
    for method in ("HoldRoom", "ConfirmHold", "ReleaseHold", "ListFreePeriods"):
        assert rule_for(f"lianxin.video.v1.VideoService/{method}").access is Access.NODE_OR_OPERATOR
    for method in ("BookVisit", "BookConsultation", "RecordConsultationMinutes", "ListConsultations"):
        assert rule_for(f"lianxin.video.v1.VideoService/{method}").access is Access.OPERATOR

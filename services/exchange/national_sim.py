"""A national system simulator (国家信访信息系统 model, ``lianxin.national.v1``) with fault injection.

Used by the tests and by ``lianxin up``: it stores reports (deduplicated by report_id), serves
transfers after an opaque cursor, and can add latency, fail calls with UNAVAILABLE, duplicate
transfers and reorder them, so the province's adapter is exercised against an unreliable peer.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc

from services.common.grpcserver import GrpcServer
from services.common.service import ServicerBinding
from services.common.settings import Settings
from services.common.tls import NATIONAL_CODE, NodeTls, peer_region

DEFAULT_FETCH = 100


@dataclass
class Faults:
    """What goes wrong, and how often."""

    latency_ms: int = 0
    error_rate: float = 0.0  # share of calls answered UNAVAILABLE before doing anything
    duplicate_rate: float = 0.0  # share of fetched transfers sent twice
    reorder: bool = False  # shuffle each fetched batch
    seed: int | None = None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass
class _Province:
    transfers: list[national_pb2.NationalTransfer] = field(default_factory=list)
    reports: dict[str, national_pb2.NationalCaseReport] = field(default_factory=dict)
    acked: dict[str, None] = field(default_factory=dict)


class NationalSimulator(national_grpc.NationalServiceServicer):
    def __init__(self, faults: Faults | None = None, *, mtls: bool = False) -> None:
        self._mtls = mtls
        self.faults = faults or Faults()
        self._lock = threading.Lock()
        self._provinces: dict[str, _Province] = {}
        self.calls = 0
        self.failed_calls = 0

    def _province(self, code: str) -> _Province:
        return self._provinces.setdefault(code, _Province())

    def _caller_is(self, province_code: str, context: Any) -> None:
        """Over mutual TLS only the province itself may report, fetch or acknowledge for its code."""
        if self._mtls and peer_region(context) != province_code:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"the client certificate is not province {province_code}")

    def _misbehave(self, context: Any) -> None:
        self.calls += 1
        if self.faults.latency_ms:
            time.sleep(self.faults.latency_ms / 1000)  # injected latency is the point here
        if self.faults.error_rate and self.faults.rng.random() < self.faults.error_rate:
            self.failed_calls += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "national system busy (injected)")

    def ReportCases(self, request: national_pb2.ReportCasesRequest, context: Any) -> national_pb2.ReportCasesResponse:
        self._caller_is(request.province_code, context)
        self._misbehave(context)
        with self._lock:
            province = self._province(request.province_code)
            for report in request.reports:
                province.reports.setdefault(report.report_id, report)
        return national_pb2.ReportCasesResponse(acked_ids=[r.report_id for r in request.reports])

    def FetchTransfers(
        self, request: national_pb2.FetchTransfersRequest, context: Any
    ) -> national_pb2.FetchTransfersResponse:
        self._caller_is(request.province_code, context)
        self._misbehave(context)
        start = int(request.after_cursor) if request.after_cursor.isdigit() else 0
        limit = request.max_items or DEFAULT_FETCH
        with self._lock:
            batch = list(self._province(request.province_code).transfers[start : start + limit])
        end = start + len(batch)
        out = list(batch)
        for transfer in batch:
            if self.faults.duplicate_rate and self.faults.rng.random() < self.faults.duplicate_rate:
                out.append(transfer)
        if self.faults.reorder:
            self.faults.rng.shuffle(out)
        return national_pb2.FetchTransfersResponse(transfers=out, next_cursor=str(end))

    def AckTransfers(
        self, request: national_pb2.AckTransfersRequest, context: Any
    ) -> national_pb2.AckTransfersResponse:
        self._caller_is(request.province_code, context)
        self._misbehave(context)
        with self._lock:
            province = self._province(request.province_code)
            for transfer_id in request.transfer_ids:
                province.acked[transfer_id] = None
        return national_pb2.AckTransfersResponse(acked_ids=list(request.transfer_ids))

    def SubmitTransfer(
        self, request: national_pb2.SubmitTransferRequest, context: Any
    ) -> national_pb2.SubmitTransferResponse:
        transfer = national_pb2.NationalTransfer()
        transfer.CopyFrom(request.transfer)
        if not transfer.transfer_id:
            transfer.transfer_id = f"NT-{uuid.uuid4().hex[:12]}"
        if not transfer.national_case_id:
            transfer.national_case_id = f"GJ{uuid.uuid4().hex[:10].upper()}"
        if not transfer.kind:
            transfer.kind = national_pb2.TRANSFER_KIND_TRANSFER
        with self._lock:
            self._province(request.province_code).transfers.append(transfer)
        return national_pb2.SubmitTransferResponse(transfer_id=transfer.transfer_id)

    def ListReports(self, request: national_pb2.ListReportsRequest, context: Any) -> national_pb2.ListReportsResponse:
        with self._lock:
            province = self._province(request.province_code)
            reports = []
            for report in province.reports.values():
                copy = national_pb2.NationalCaseReport()
                copy.CopyFrom(report)
                copy.ClearField("payload")
                reports.append(copy)
            acked = list(province.acked)
        return national_pb2.ListReportsResponse(reports=reports, acked_transfer_ids=acked)


def serve(
    *, port: int = 0, faults: Faults | None = None, host: str = "127.0.0.1", tls_dir: Path | None = None
) -> tuple[GrpcServer, NationalSimulator]:
    """Start the simulator on a real gRPC server (health, reflection, metrics off); returns both.

    With ``tls_dir`` (a CA and ``100000.pem``/``.key``, as ``lianxin certs --nodes 100000`` makes) it
    speaks mutual TLS like a node: clients need a certificate of that CA, and a province may only
    report, fetch and acknowledge for its own code.
    """
    simulator = NationalSimulator(faults, mtls=tls_dir is not None)
    settings = Settings(grpc_host=host, grpc_port=port, metrics_port=None)
    credentials = NodeTls.load(tls_dir, NATIONAL_CODE).server_credentials() if tls_dir is not None else None
    server = GrpcServer(
        [
            ServicerBinding(
                national_grpc.add_NationalServiceServicer_to_server, simulator, "lianxin.national.v1.NationalService"
            )
        ],
        settings=settings,
        server_credentials=credentials,
    )
    server.start()
    return server, simulator

"""The province's link to the national system: report the up-log, fetch transfers and route them down.

``NationalAdapter`` is what the province needs of the national system (``GrpcNationalAdapter``:
``lianxin.national.v1`` over gRPC; ``national_sim`` answers it in tests and demos).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.national.v1 import national_service_pb2 as national_pb2
from lianxin.national.v1 import national_service_pb2_grpc as national_grpc

from services.common.events import parse_envelope, unfolded
from services.common.grpcclient import instrumented_channel
from services.common.timeutil import to_timestamp
from services.exchange import domain
from services.exchange.handlers import Exchange
from services.exchange.link import Backoff
from services.exchange.ports import Item

log = logging.getLogger(__name__)

NATIONAL = "national"


@dataclass(frozen=True)
class TransferBatch:
    transfers: list[national_pb2.NationalTransfer]
    next_cursor: str


class NationalAdapter(Protocol):
    """What the province needs of the national system; the gRPC model below is one implementation."""

    def report(self, province: str, reports: Sequence[national_pb2.NationalCaseReport]) -> set[str]: ...

    def fetch(self, province: str, after_cursor: str, max_items: int) -> TransferBatch: ...

    def ack(self, province: str, transfer_ids: Sequence[str]) -> None: ...


class GrpcNationalAdapter:
    """``lianxin.national.v1`` over gRPC, with a deadline on every call."""

    def __init__(
        self, address: str, *, deadline_s: float = 5.0, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self._channel = instrumented_channel(address, credentials=credentials)
        self._stub = national_grpc.NationalServiceStub(self._channel)
        self._deadline = deadline_s

    def report(self, province: str, reports: Sequence[national_pb2.NationalCaseReport]) -> set[str]:
        reply = self._stub.ReportCases(
            national_pb2.ReportCasesRequest(province_code=province, reports=reports), timeout=self._deadline
        )
        return set(reply.acked_ids) | {r.report_id for r in reply.rejections}

    def fetch(self, province: str, after_cursor: str, max_items: int) -> TransferBatch:
        reply = self._stub.FetchTransfers(
            national_pb2.FetchTransfersRequest(province_code=province, after_cursor=after_cursor, max_items=max_items),
            timeout=self._deadline,
        )
        return TransferBatch(list(reply.transfers), reply.next_cursor)

    def ack(self, province: str, transfer_ids: Sequence[str]) -> None:
        self._stub.AckTransfers(
            national_pb2.AckTransfersRequest(province_code=province, transfer_ids=transfer_ids), timeout=self._deadline
        )

    def close(self) -> None:
        self._channel.close()


_STATE_BY_EVENT: dict[str, int] = {
    "case_registered": common_pb2.CASE_STATE_REGISTERED,
    "case_handed_off": common_pb2.CASE_STATE_TRANSFERRED,
    "case_withdrawn": common_pb2.CASE_STATE_WITHDRAWN,
    "case_merged": common_pb2.CASE_STATE_MERGED,
}


def national_reports(body: bytes) -> list[national_pb2.NationalCaseReport]:
    """The reports of one up-log envelope: one, or for a placement folded into its creation (issue 21)
    one per event it stands for, each with that event's id, version, state and body, as the national
    system received them when they were three envelopes. None for a body that is no envelope."""
    env = parse_envelope(body)
    if env is None:
        return []
    events = unfolded(env)
    if len(events) == 1:
        return [_report(env, body)]
    return [_report(one, one.SerializeToString()) for one in events]


def _report(env: events_pb2.EventEnvelope, body: bytes) -> national_pb2.NationalCaseReport:
    kind = env.WhichOneof("payload") or ""
    state = _STATE_BY_EVENT.get(kind, common_pb2.CASE_STATE_UNSPECIFIED)
    if kind == "work_order_changed":
        state = env.work_order_changed.to_state
    case = env.case_registered.case if kind == "case_registered" else None
    return national_pb2.NationalCaseReport(
        report_id=env.event_id,
        case_id=env.case_id,
        version=env.version,
        state=state,  # type: ignore[arg-type]
        category=case.category if case is not None else "",
        region_code=case.region_code if case is not None else "",
        title=case.title if case is not None else "",
        occurred_at=env.occurred_at,
        payload=body,
    )


def transfer_envelope(
    transfer: national_pb2.NationalTransfer, *, province: str, to_node: str, now: datetime
) -> events_pb2.EventEnvelope:
    """A national transfer as the hand-off it is: ownership moves to ``to_node`` at epoch 1."""
    case_id = f"N-{transfer.national_case_id}"
    case = common_pb2.Case(
        case_id=case_id,
        title=transfer.title,
        body=transfer.body,
        category=transfer.category,
        region_code=transfer.region_code,
        registering_node=province,
        owner_node=to_node,
        owner_epoch=1,
        channel=common_pb2.CHANNEL_NATIONAL_TRANSFER,
    )
    kind = "national_transfer" if transfer.kind != national_pb2.TRANSFER_KIND_ASSIGN else "assign_down"
    env = events_pb2.EventEnvelope(
        # Deterministic: a duplicated transfer can never become a second hand-off.
        event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:national-transfer:{transfer.transfer_id}")),
        case_id=case_id,
        version=1,
        owner_epoch=1,
        owner_node=to_node,
        origin_node=province,
        origin_service="exchange",
        occurred_at=to_timestamp(now),
        case_handed_off=events_pb2.CaseHandedOff(
            from_node="national", to_node=to_node, new_owner_epoch=1, kind=kind, reason="国家转送", case=case
        ),
    )
    return env


class NationalLink:
    """The province's link to the national system: report the up-log, fetch transfers and route them down."""

    def __init__(
        self,
        store: Exchange,
        adapter: NationalAdapter,
        *,
        clock: Callable[[], datetime],
        batch_size: int = 200,
        max_batches_per_run: int = 20,
    ) -> None:
        self._store = store
        self._adapter = adapter
        self._clock = clock
        self._batch = batch_size
        self._max_batches = max_batches_per_run
        self._lock = threading.Lock()
        self.backoff = Backoff()

    def run(self) -> None:
        if not self.backoff.ready() or not self._lock.acquire(blocking=False):
            return
        try:
            self.report_up()
            self.fetch_down()
            self.backoff.succeeded()
        except grpc.RpcError as error:
            delay = self.backoff.failed()
            code = error.code().name if isinstance(error, grpc.Call) else "error"
            log.warning("national link failed; retrying later", extra={"retry_in_s": round(delay, 2), "error": code})
        finally:
            self._lock.release()

    def report_up(self) -> int:
        province = self._store.node
        sent = 0
        for _ in range(self._max_batches):
            acked = self._store.cursor(NATIONAL, "national_up").position
            # Commands on the up-log are for the parent link (the province has none): not reported.
            rows = self._store.pending_up(acked, self._batch, envelopes_only=True)
            if not rows:
                break
            reports = _positioned_reports(rows, acked)
            acked_ids = self._adapter.report(province, [r for _, r in reports if r is not None])
            # The cursor moves over the acknowledged prefix only, so nothing is skipped after a partial ack.
            position = domain.acked_prefix(
                [(pos, report.report_id if report is not None else None) for pos, report in reports], acked_ids, acked
            )
            self._store.save_cursor(NATIONAL, "national_up", position=position)
            sent += len(reports)
            if position < rows[-1].position:
                break
        return sent

    def fetch_down(self) -> int:
        province = self._store.node
        got = 0
        for _ in range(self._max_batches):
            cursor = self._store.cursor(NATIONAL, "national_down").token
            batch = self._adapter.fetch(province, cursor, self._batch)
            if not batch.transfers:
                if batch.next_cursor and batch.next_cursor != cursor:
                    self._store.save_cursor(NATIONAL, "national_down", token=batch.next_cursor)
                break
            now = self._clock()
            items = []
            for transfer in batch.transfers:
                region = transfer.region_code
                to_node = (
                    region
                    if region in self._store.regions and self._store.regions.contains(province, region)
                    else province
                )
                env = transfer_envelope(transfer, province=province, to_node=to_node, now=now)
                items.append((transfer.transfer_id, env.SerializeToString()))
            # Apply, acknowledge, then move the cursor: if the ack fails the batch is fetched again,
            # and the transfer ids already applied are skipped (the national side sees its ack later).
            self._store.apply_transfers(items)
            self._adapter.ack(province, sorted({t.transfer_id for t in batch.transfers}))
            self._store.save_cursor(NATIONAL, "national_down", token=batch.next_cursor)
            got += len(batch.transfers)
        return got


def _positioned_reports(rows: Sequence[Item], before: int) -> list[tuple[int, national_pb2.NationalCaseReport | None]]:
    """Each row's reports with the up-log position the cursor may move to once it is acknowledged:
    the row's own for its last report, the row before's for the others (a folded placement's
    reports), so a partial acknowledgement never moves the cursor past a report not acknowledged."""
    out: list[tuple[int, national_pb2.NationalCaseReport | None]] = []
    for item in rows:
        found = national_reports(item.body)
        if not found:
            out.append((item.position, None))
        out += [(before, report) for report in found[:-1]]
        if found:
            out.append((item.position, found[-1]))
        before = item.position
    return out

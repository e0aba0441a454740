"""RoutingService gRPC adapter."""

from __future__ import annotations

from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.errors import InvalidArgument
from services.common.timeutil import to_timestamp
from services.routing import handlers
from services.routing.handlers import UnitOfWorkFactory, WorkOrderView


def _state(name: str) -> int:
    return int(common_pb2.CaseState.Value(f"CASE_STATE_{name}")) if name else 0


def work_order_message(view: WorkOrderView) -> routing_pb2.WorkOrder:
    return routing_pb2.WorkOrder(
        work_order_id=view.work_order_id,
        case_id=view.case_id,
        node=view.node,
        unit_id=view.unit_id,
        category=view.category,
        region_code=view.region_code,
        state=_state(view.state),
        deadlines=[common_pb2.Deadline(kind=k, due_at=to_timestamp(v)) for k, v in view.deadlines.items()],
        created_at=to_timestamp(view.created_at),
        updated_at=to_timestamp(view.updated_at),
        history=[
            routing_pb2.WorkOrderHistoryEntry(
                at=to_timestamp(h.at),
                actor=h.actor,
                action=h.action,
                from_state=_state(h.from_state),
                to_state=_state(h.to_state),
                reason=h.reason,
            )
            for h in view.history
        ],
    )


class RoutingServicer(routing_grpc.RoutingServiceServicer):
    def __init__(self, *, uow_factory: UnitOfWorkFactory) -> None:
        self._uow_factory = uow_factory

    def GetWorkOrder(self, request: routing_pb2.GetWorkOrderRequest, context: Any) -> routing_pb2.GetWorkOrderResponse:
        if not request.work_order_id:
            raise InvalidArgument("work_order_id", "must be set")
        view = handlers.get_work_order(request.work_order_id, uow_factory=self._uow_factory)
        return routing_pb2.GetWorkOrderResponse(work_order=work_order_message(view))

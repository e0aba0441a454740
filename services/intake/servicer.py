"""IntakeService gRPC adapter: translate requests, call the handlers, translate answers back."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.errors import InvalidArgument
from services.intake import handlers, mapping
from services.intake.handlers import IntakeDeps, IntakeUnitOfWork


class IntakeServicer(intake_grpc.IntakeServiceServicer):
    """Domain errors raised here become status codes in the server's one interceptor."""

    def __init__(
        self,
        *,
        uow_factory: Callable[[], AbstractContextManager[IntakeUnitOfWork]],
        deps: IntakeDeps,
        after_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._uow_factory = uow_factory
        self._deps = deps
        self._after_commit = after_commit

    def SubmitCase(self, request: intake_pb2.SubmitCaseRequest, context: Any) -> intake_pb2.SubmitCaseResponse:
        result = handlers.submit_case(
            mapping.submission(request),
            uow_factory=self._uow_factory,
            deps=self._deps,
            submitted_at=mapping.submitted_at(request),
        )
        if result.created:
            self._after_commit()
        return intake_pb2.SubmitCaseResponse(
            case=mapping.case_message(result.case, personal="full"),
            created=result.created,
            tracking_code=result.case.tracking_code,
        )

    def GetCase(self, request: intake_pb2.GetCaseRequest, context: Any) -> intake_pb2.GetCaseResponse:
        if not request.case_id:
            raise InvalidArgument("case_id", "must be set")
        case = handlers.get_case(request.case_id, uow_factory=self._uow_factory)
        return intake_pb2.GetCaseResponse(case=mapping.case_message(case))

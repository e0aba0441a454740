"""Composition of the intake service for any host (embedded node, api process, worker)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.crypto import cipher_from_env
from services.common.service import ServiceContext, ServiceParts, ServicerBinding
from services.intake.handlers import IntakeDeps
from services.intake.models import outbox
from services.intake.servicer import IntakeServicer
from services.intake.store import SqlIntakeUnitOfWork

log = logging.getLogger(__name__)


def _categoriser(ctx: ServiceContext) -> Callable[[str], str | None]:
    """The trained category model when present; otherwise leave the category for a clerk."""
    try:
        from services.intake.classifier import Classifier, default_model_path

        path = default_model_path(ctx.settings.data_dir)
        if path.exists():
            model = Classifier.load(path)
            return lambda text: model.predict([text])[0][0]
    except ImportError:
        pass
    log.info("no category model; categories left for clerks", extra={"node": ctx.settings.node})
    return lambda text: None


def _locator(ctx: ServiceContext) -> Callable[[str], str | None]:
    try:
        from services.intake.locator import Locator

        locator = Locator(ctx.regions)
        node = ctx.settings.node
        return lambda text: locator.locate(text, node=node).code
    except ImportError:
        return lambda text: None


def build(ctx: ServiceContext) -> ServiceParts:
    cipher = cipher_from_env()
    node = ctx.settings.node

    def uow_factory() -> SqlIntakeUnitOfWork:
        return SqlIntakeUnitOfWork(ctx.session_factory, cipher, node)

    deps = IntakeDeps(
        node=node,
        allowed_regions=frozenset(ctx.regions.subtree(node)),
        categorise=_categoriser(ctx),
        locate=_locator(ctx),
        clock=ctx.clock,
    )
    servicer = IntakeServicer(
        uow_factory=uow_factory,
        deps=deps,
        after_commit=lambda: ctx.extras.get("notify_outbox", lambda: None)(),
    )
    return ServiceParts(
        name="intake",
        servicers=[
            ServicerBinding(intake_grpc.add_IntakeServiceServicer_to_server, servicer, "lianxin.intake.v1.IntakeService")
        ],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )

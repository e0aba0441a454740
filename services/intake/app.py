"""Composition of the intake service for any host (embedded node, api process, worker): wiring only.

The rules are in ``domain``, the use cases in ``handlers``, the event subscriptions in ``consumers``,
the category model in ``category_model``, the relay's coalesced wake in ``relay_wake``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from sqlalchemy.orm import Session

from services.common.crypto import node_cipher
from services.common.db import reading
from services.common.errors import InvalidArgument
from services.common.events import write_event
from services.common.regions import RegionTree
from services.common.service import ServiceContext, ServiceParts, ServicerBinding, Timer
from services.intake.case_rows import notice_settled_envelope
from services.intake.category_model import CategoryModel
from services.intake.consumers import IntakeConsumers
from services.intake.domain import Case
from services.intake.handlers import IntakeDeps
from services.intake.models import outbox
from services.intake.notice_sender import FileChannel, next_due, send_due
from services.intake.notices import NoticeChannel, NoticeSettled, RetryPolicy
from services.intake.relay_wake import CoalescedNotify
from services.intake.screening import Screen
from services.intake.servicer import IntakeServicer, initialise_received_metrics
from services.intake.store import CaseNumbers, SqlIntakeUnitOfWork
from services.intake.submit_sql import PgSubmitPath

log = logging.getLogger(__name__)

NOTICE_TIMER = "intake.progress_notices"
# Where the notice sender is woken by the commits that queue notices (an embedded node), it also runs
# this often, for notices queued by another process of the node.
NOTICE_SAFETY_S = 30.0


class Places:
    """The node's place names: a submission's region, the candidates a clerk asks for, a region's message."""

    def __init__(self, regions: RegionTree, node: str) -> None:
        from services.intake.locator import Locator

        self._regions = regions
        self._node = node
        self._locator = Locator(regions)
        self._root = next(code for code, region in regions.regions.items() if region.parent_code is None)

    def locate_for_submit(self, text: str) -> str | None:
        return self._locator.locate(text, node=self._node).code

    def locate_candidates(self, text: str, within: str) -> tuple[str, bool, list[str]]:
        within = within or self._root
        if within not in self._regions:
            raise InvalidArgument("within_region_code", f"unknown region code {within}")
        found = self._locator.locate(text, node=within)
        return found.code or "", found.ambiguous, list(found.candidates)

    def region_message(self, code: str) -> common_pb2.Region:
        region = self._regions.get(code)
        return common_pb2.Region(
            code=code,
            name=region.name,
            tier=common_pb2.Tier.Value(f"TIER_{region.tier.name}"),
            parent_code=region.parent_code or "",
        )


def _notice_sender(
    ctx: ServiceContext, uow_factory: Callable[[], SqlIntakeUnitOfWork], notify: Callable[[], None]
) -> Callable[[], float | None]:
    """The progress notice sender's pass; returns the seconds until the next retry falls due (None: none).
    ``notify`` wakes the relay after notices ended (their events are in the outbox)."""
    config = ctx.settings.intake
    # 办事进度推送: a deployment passes its SMS/WeChat adapter as hooks.intake_notice_channel; the
    # embedded default writes each message to <data_dir>/<node>/progress_notices.jsonl.
    channel: NoticeChannel = ctx.hooks.intake_notice_channel or FileChannel(
        ctx.settings.data_dir / ctx.settings.node / "progress_notices.jsonl"
    )
    policy = RetryPolicy(max_attempts=config.notice_attempts, first_delay=config.notice_first_delay)

    def case_of(case_id: str) -> Case | None:
        # A read: a deferred BEGIN and the case by its statement built once, not BEGIN IMMEDIATE and the ORM.
        with reading(), uow_factory() as uow:
            return uow.get(case_id)

    node = ctx.settings.node

    def settled(session: Session, end: NoticeSettled, case: Case | None) -> None:
        write_event(session, outbox, notice_settled_envelope(end, case, node))  # counted in stats

    def send_notices() -> float | None:
        now = ctx.clock()
        due = next_due(ctx.session_factory)
        if due is None or due > now:
            # Most runs (an idle node's safety pass, a handling change that queued nothing): one read.
            return None if due is None else (due - now).total_seconds()
        done = send_due(
            ctx.session_factory, case_of=case_of, channel=channel, now=now, policy=policy, on_settled=settled
        )
        if done["sent"] or done["given_up"] or done["skipped"]:
            notify()
        due = next_due(ctx.session_factory)
        return None if due is None else max(0.0, (due - now).total_seconds())

    return send_notices


def build(ctx: ServiceContext) -> ServiceParts:
    cipher = node_cipher(ctx.settings)
    node = ctx.settings.node
    regions = ctx.regions
    # An embedded node's relay wants waking after commits; a production api process has no relay
    # (the worker polls), and then nothing is woken, not even the coalescing thread.
    wake_relay = ctx.hooks.notify_outbox
    notify: Callable[[], None] = CoalescedNotify(wake_relay) if wake_relay is not None else lambda: None

    numbers = CaseNumbers(ctx.session_factory)
    submit_path = None
    if ctx.engine.dialect.name == "postgresql":
        submit_path = PgSubmitPath(ctx.engine.url.render_as_string(hide_password=False), service=ctx.service)

    def uow_factory() -> SqlIntakeUnitOfWork:
        return SqlIntakeUnitOfWork(ctx.session_factory, cipher, node, numbers=numbers, submit_path=submit_path)

    def reads() -> SqlIntakeUnitOfWork:
        return SqlIntakeUnitOfWork(None, cipher, node, reads=ctx.engine)

    config = ctx.settings.intake
    model = CategoryModel(ctx.settings.data_dir, config.shared_data, enabled=config.classifier).start()
    ctx.hooks.intake_category_model = model  # tests and the demo wait on model.ready

    places = Places(regions, node)

    deps = IntakeDeps(
        node=node,
        allowed_regions=frozenset(regions.subtree(node)),
        categorise=model.categorise,
        locate=places.locate_for_submit,
        clock=ctx.clock,
        screen=Screen.load(),
        rate_limit=config.rate_limit,
        rate_window=config.rate_window,
        regions_under=lambda code: frozenset(regions.subtree(code)),
    )
    servicer = IntakeServicer(
        uow_factory=uow_factory,
        deps=deps,
        after_commit=notify,
        classify=model.scored,
        locate=places.locate_candidates,
        region_message=places.region_message,
        case_mac=cipher.blind_index,
        reads=reads,
    )

    send_notices = _notice_sender(ctx, uow_factory, notify)

    # Embedded: the sender runs when a handling change committed (a notice may be queued) and when a
    # retry falls due; a worker, which nobody wakes, polls every notice_interval_s.
    wake_timer: Callable[[str], None] = ctx.hooks.wake_timer or (lambda _name: None)
    consumers = IntakeConsumers(
        node=node,
        session_factory=ctx.session_factory,
        unit_of_work=lambda session: SqlIntakeUnitOfWork(None, cipher, node, session=session),
        followed=lambda: wake_timer(NOTICE_TIMER),
    )

    return ServiceParts(
        name="intake",
        servicers=[
            ServicerBinding(
                intake_grpc.add_IntakeServiceServicer_to_server,
                servicer,
                "lianxin.intake.v1.IntakeService",
                initialise_metrics=initialise_received_metrics,
            )
        ],
        subscriptions=consumers.subscriptions(),
        timers=[Timer(NOTICE_TIMER, config.notice_interval_s, send_notices, safety_interval_s=NOTICE_SAFETY_S)],
        session_factory=ctx.session_factory,
        outbox=outbox,
        close=submit_path.close if submit_path is not None else lambda: None,
    )

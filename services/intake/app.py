"""Composition of the intake service for any host (embedded node, api process, worker)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.crypto import node_cipher
from services.common.errors import InvalidArgument
from services.common.events import WORK_ORDER_EVENTS, decode, parse_command, parse_envelope
from services.common.outbox import consume_once
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription, Timer
from services.common.timeutil import from_timestamp
from services.intake import handlers
from services.intake.domain import HANDLING_DEADLINE_KINDS, Case, CaseState, registered_here
from services.intake.handlers import HandlingChange, HandOffSeen, IntakeDeps
from services.intake.models import inbox, outbox
from services.intake.notice_sender import FileChannel, send_due
from services.intake.notices import NoticeChannel, RetryPolicy
from services.intake.screening import Screen
from services.intake.servicer import IntakeServicer, initialise_received_metrics
from services.intake.store import CaseNumbers, PgSubmitPath, SqlIntakeUnitOfWork

log = logging.getLogger(__name__)

# One trained model per training file per process: every node of an embedded federation (and every
# node a test suite starts) would otherwise retrain the same model on its own data_dir.
_TRAINED: dict[Path, Any] = {}
_LOADED: dict[tuple[Path, int], Any] = {}
_TRAINING_LOCK = threading.Lock()


def load_or_train(data_dir: Path, shared_data: Path | None) -> Any:
    """``classifier.ensure_model`` with an in-process cache; None when there is neither model nor data."""
    from services.intake.classifier import default_model_path, ensure_model, load_current

    path = default_model_path(data_dir)
    try:
        key = (path.resolve(), path.stat().st_mtime_ns)
    except OSError:
        key = None
    with _TRAINING_LOCK:
        # The nodes of one host process (services/host.py) share one data folder: one copy in
        # memory, loaded once under the lock while the other nodes' loaders wait for it.
        model = _LOADED.get(key) if key is not None else None
        if model is None:
            model = load_current(path)
            if model is not None and key is not None:
                _LOADED[key] = model
    if model is not None:
        return model
    source = (Path(shared_data) / "messages.csv").resolve() if shared_data is not None else None
    with _TRAINING_LOCK:
        cached = _TRAINED.get(source) if source is not None else None
        if cached is not None:
            cached.save(path)
            return cached
        model = ensure_model(data_dir, shared_data)
        if model is not None and source is not None:
            _TRAINED[source] = model
        if model is not None and path.exists():
            _LOADED[(path.resolve(), path.stat().st_mtime_ns)] = model
        return model


class CategoryModel:
    """The category model, loaded (or trained on first start) in a background thread.

    Until it is ready, submissions without a category stay uncategorised and flagged for a clerk,
    so serving never waits for training. ``enabled=False`` (``LIANXIN_INTAKE_CLASSIFIER=off``) disables it.
    """

    def __init__(self, data_dir: Path, shared_data: Path | None, *, enabled: bool = True) -> None:
        self._data_dir = data_dir
        self._shared_data = shared_data
        self._enabled = enabled
        self.model: Any = None
        self.ready = threading.Event()

    def start(self) -> CategoryModel:
        if not self._enabled:
            self.ready.set()
            return self
        threading.Thread(target=self._load, name="intake-category-model", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            self.model = load_or_train(self._data_dir, self._shared_data)
            if self.model is None:
                log.info("no category model and no messages.csv; categories left for clerks")
        except Exception:
            log.warning("category model could not be loaded; categories left for clerks", exc_info=True)
        finally:
            self.ready.set()

    def categorise(self, text: str) -> str | None:
        model = self.model
        return None if model is None else str(model.predict([text])[0][0])

    def scored(self, text: str) -> tuple[str, float]:
        model = self.model
        if model is None:
            return "", 0.0
        category, confidence = model.predict([text])[0]
        return str(category), float(confidence)


# Routing's events intake follows (events.WORK_ORDER_EVENTS) come from this node's routing and
# (source "exchange") replicated up from the nodes below, where cases registered here may be handled
# after a hand-off down.
HAND_OFF_EVENTS = ("case_handed_off",)
# "exchange": replicas of the subtree's events (and hand-offs delivered down to this node), republished
# on this node's bus; consume_once dedups by event id and old versions change nothing.
SOURCES = ("routing", "exchange")


def _hand_off(env: events_pb2.EventEnvelope) -> HandOffSeen:
    hand_off = env.case_handed_off
    return HandOffSeen(
        case_id=env.case_id, version=env.version, to_node=hand_off.to_node, new_owner_epoch=hand_off.new_owner_epoch
    )


def _handling_change(env: events_pb2.EventEnvelope) -> HandlingChange | None:
    """Routing's work order event as intake follows it; None for any other payload."""
    kind = env.WhichOneof("payload")
    if kind not in WORK_ORDER_EVENTS:
        return None
    at = from_timestamp(env.occurred_at)
    assert at is not None
    if kind == "work_order_created":
        created = env.work_order_created
        assigned = bool(created.unit_id) and not created.manual_queue
        # No milestone of its own: routing's "assign" change that follows is the citizen's 已交办
        # (listing both showed it twice).
        return HandlingChange(
            case_id=env.case_id,
            version=env.version,
            action="",
            to_state=CaseState.ASSIGNED if assigned else None,
            work_order_id=created.work_order_id,
            unit_id=created.unit_id,
            at=at,
            owner_node=env.owner_node,
            owner_epoch=env.owner_epoch,
            handling_due=_handling_due(created.deadlines),
        )
    changed = env.work_order_changed
    to_state = None
    if changed.to_state:
        to_state = CaseState(common_pb2.CaseState.Name(changed.to_state).removeprefix("CASE_STATE_"))
    return HandlingChange(
        case_id=env.case_id,
        version=env.version,
        action=changed.action,
        to_state=to_state,
        work_order_id=changed.work_order_id,
        unit_id=changed.unit_id,
        at=at,
        owner_node=env.owner_node,
        owner_epoch=env.owner_epoch,
        reply_text=changed.reply_text,
        handling_due=_handling_due(changed.deadlines),
        main_case_id=changed.main_case_id,
    )


def _handling_due(deadlines: Sequence[common_pb2.Deadline]) -> datetime | None:
    due = {d.kind: d.due_at for d in deadlines if d.HasField("due_at")}
    for kind in HANDLING_DEADLINE_KINDS:
        if kind in due:
            return from_timestamp(due[kind])
    return None


class CoalescedNotify:
    """Wake the outbox relay at most once per ``interval_s``, never leaving a commit unannounced.

    Waking it after every commit made the relay run a pass (lease, select, update: a transaction
    of its own) per submit, which on PostgreSQL cost about as much CPU as the submit. The first
    commit after a quiet spell wakes it at once; commits within the interval share one trailing
    wake, so an event waits at most ``interval_s`` longer than it would have.

    The trailing wakes come from one thread that lives while commits keep coming and ends after
    ``idle_s`` without any (a thread per trailing wake cost more than the wake).
    """

    def __init__(self, notify: Callable[[], None], interval_s: float = 0.02, idle_s: float = 2.0) -> None:
        self._notify = notify
        self._interval_s = interval_s
        self._idle_s = idle_s
        self._cond = threading.Condition()
        self._last = float("-inf")
        self._pending = False
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        with self._cond:
            if self._pending:
                return
            now = time.monotonic()
            if self._last + self._interval_s > now:
                self._pending = True
                if self._thread is None:
                    self._thread = threading.Thread(target=self._trailing, name="intake-relay-wake", daemon=True)
                    self._thread.start()
                else:
                    self._cond.notify()
                return
            self._last = now
        self._notify()

    def _trailing(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._cond.wait_for(lambda: self._pending, timeout=self._idle_s):
                    self._thread = None  # under the lock: a later call sees None and starts a new one
                    return
                delay = self._last + self._interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._cond:
                self._pending = False
                self._last = time.monotonic()
            self._notify()


def build(ctx: ServiceContext) -> ServiceParts:
    cipher = node_cipher(ctx.settings)
    node = ctx.settings.node
    regions = ctx.regions
    # An embedded node's relay wants waking after commits; a production api process has no relay
    # (the worker polls), and then nothing is woken, not even the coalescing thread.
    wake_relay = ctx.extras.get("notify_outbox")
    notify: Callable[[], None] = CoalescedNotify(wake_relay) if wake_relay is not None else lambda: None

    numbers = CaseNumbers(ctx.session_factory)
    submit_path = None
    if ctx.engine.dialect.name == "postgresql":
        submit_path = PgSubmitPath(ctx.engine.url.render_as_string(hide_password=False), service=ctx.service)

    def uow_factory() -> SqlIntakeUnitOfWork:
        return SqlIntakeUnitOfWork(ctx.session_factory, cipher, node, numbers=numbers, submit_path=submit_path)

    config = ctx.settings.intake
    model = CategoryModel(ctx.settings.data_dir, config.shared_data, enabled=config.classifier).start()
    ctx.extras["intake.category_model"] = model  # tests and the demo wait on model.ready

    from services.intake.locator import Locator

    locator = Locator(regions)
    root = next(code for code, region in regions.regions.items() if region.parent_code is None)

    def locate_for_submit(text: str) -> str | None:
        return locator.locate(text, node=node).code

    def locate_candidates(text: str, within: str) -> tuple[str, bool, list[str]]:
        within = within or root
        if within not in regions:
            raise InvalidArgument("within_region_code", f"unknown region code {within}")
        found = locator.locate(text, node=within)
        return found.code or "", found.ambiguous, list(found.candidates)

    def region_message(code: str) -> common_pb2.Region:
        region = regions.get(code)
        return common_pb2.Region(
            code=code,
            name=region.name,
            tier=common_pb2.Tier.Value(f"TIER_{region.tier.name}"),
            parent_code=region.parent_code or "",
        )

    deps = IntakeDeps(
        node=node,
        allowed_regions=frozenset(regions.subtree(node)),
        categorise=model.categorise,
        locate=locate_for_submit,
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
        locate=locate_candidates,
        region_message=region_message,
        case_mac=cipher.blind_index,
    )

    # 办事进度推送: a deployment passes its SMS/WeChat adapter as extras["intake.notice_channel"]; the
    # embedded default writes each message to <data_dir>/<node>/progress_notices.jsonl.
    channel: NoticeChannel = ctx.extras.get("intake.notice_channel") or FileChannel(
        ctx.settings.data_dir / node / "progress_notices.jsonl"
    )
    policy = RetryPolicy(max_attempts=config.notice_attempts, first_delay=config.notice_first_delay)

    def case_of(case_id: str) -> Case | None:
        with uow_factory() as uow:
            return uow.get(case_id)

    def send_notices() -> None:
        send_due(ctx.session_factory, case_of=case_of, channel=channel, now=ctx.clock(), policy=policy)

    def on_handling(event: BusEvent) -> None:
        env = decode(event)
        if event.source != "routing" and not registered_here(env.case_id, node):
            # A replica of the subtree's handling of a case registered elsewhere: nothing to follow here.
            return
        follow(event, _handling_change(env))

    def follow(event: BusEvent, change: HandlingChange | None) -> None:
        if change is None:
            return

        def apply(session: Any) -> None:
            handlers.apply_handling_change(change, SqlIntakeUnitOfWork(None, cipher, node, session=session))

        consume_once(ctx.session_factory, inbox, "intake", event, apply)

    def on_command(event: BusEvent) -> None:
        # A handling update exchange delivered here, the registering node: the owner's routing sends
        # its work order events as commands when this node is neither the owner nor above it (after a
        # 上报 or a transfer into another subtree), since replicas would not come down. Applied as a
        # replica is, once per command id (the inbox; the bus event id is the command id).
        command = parse_command(event.body)
        if command is None:
            log.warning("undecodable command ignored", extra={"node": node, "event_id": event.event_id})
            return
        if command.WhichOneof("body") != "handling" or not registered_here(command.case_id, node):
            return  # the citizen's requests are routing's (the owner's) to apply
        env = parse_envelope(command.handling.envelope)
        if env is None:
            log.warning("undecodable handling update ignored", extra={"node": node, "event_id": event.event_id})
            return
        if env.case_id != command.case_id:
            log.warning("handling update about another case ignored", extra={"node": node, "event_id": event.event_id})
            return
        follow(event, _handling_change(env))

    def on_hand_off(event: BusEvent) -> None:
        env = decode(event)
        if not registered_here(env.case_id, node):
            return
        seen = _hand_off(env)

        def apply(session: Any) -> None:
            handlers.apply_hand_off(seen, SqlIntakeUnitOfWork(None, cipher, node, session=session))

        consume_once(ctx.session_factory, inbox, "intake", event, apply)

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
        subscriptions=[
            *(Subscription("intake", source, kind, on_handling) for source in SOURCES for kind in WORK_ORDER_EVENTS),
            *(Subscription("intake", source, kind, on_hand_off) for source in SOURCES for kind in HAND_OFF_EVENTS),
            Subscription("intake", "exchange", "command", on_command),
        ],
        timers=[Timer("intake.progress_notices", config.notice_interval_s, send_notices)],
        session_factory=ctx.session_factory,
        outbox=outbox,
        close=submit_path.close if submit_path is not None else lambda: None,
    )

"""What a service hands to the process that hosts it: servicers, event subscriptions, timers, outbox.

One composition function per service (``services/<name>/app.py: build(ctx) -> ServiceParts``) is
used by every host: the embedded node (all five services on one port, in-process bus), the
production api process (``lianxin serve``: servicers only) and the production worker
(``lianxin worker``: subscriptions, timers and the outbox relay under nameko).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table
from sqlalchemy.orm import Session, sessionmaker

from services.common.regions import RegionTree
from services.common.settings import Settings

if TYPE_CHECKING:  # annotations only: the kernel imports no service at run time (tests/unit/test_layering.py)
    from services.common.calendar import ChineseWorkingCalendar
    from services.common.calendar_store import NodeCalendar
    from services.common.waiting import LinkDriver
    from services.exchange.national import NationalAdapter
    from services.exchange.store import ExchangeStore
    from services.intake.category_model import CategoryModel
    from services.intake.notices import NoticeChannel
    from services.stats.domain.months import StatsConfig


@dataclass(frozen=True)
class BusEvent:
    """An integration event as the buses carry it: routing keys plus the serialized EventEnvelope."""

    event_id: str
    source: str  # emitting service, e.g. "intake"
    event_type: str  # the EventEnvelope payload field name, e.g. "case_registered"
    body: bytes  # serialized lianxin.events.v1.EventEnvelope


EventHandler = Callable[[BusEvent], None]


@dataclass(frozen=True)
class Subscription:
    """``consumer`` wants ``handle`` called for every ``event_type`` event emitted by ``source``.

    ``handle`` must be idempotent (see ``services.common.inbox.consume_once``): buses deliver at
    least once.
    """

    consumer: str
    source: str
    event_type: str
    handle: EventHandler


@dataclass(frozen=True)
class Timer:
    """Periodic work (deadline sweep, link pump). Runs in the worker (nameko @timer) or a node thread.

    ``safety_interval_s``: a timer that its service wakes when there is work (the host's
    ``hooks.wake_timer(name)``, an embedded node's ``TimerLoop.wake``) runs on each wake and only
    this often otherwise; where nothing wakes it (a nameko worker) it runs every ``interval_s``. Its
    ``run`` may then return the seconds until it wants to run again (a retry that falls due), or None.
    """

    name: str
    interval_s: float
    run: Callable[[], float | None]
    safety_interval_s: float | None = None


@dataclass(frozen=True)
class ServicerBinding:
    """A generated ``add_XServicer_to_server`` function with its servicer instance and full name."""

    add_to_server: Callable[[Any, Any], None]
    servicer: Any
    full_name: str  # e.g. "lianxin.intake.v1.IntakeService"
    # The servicer's own labelled series at zero, called only by a process that serves it: a worker
    # builds the same servicer but never counts its calls, so it must not export their zeros.
    initialise_metrics: Callable[[], None] = lambda: None


@dataclass
class ServiceParts:
    name: str
    servicers: list[ServicerBinding]
    subscriptions: list[Subscription] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    session_factory: sessionmaker[Session] | None = None  # the outbox relay reads this database
    outbox: Table | None = None  # the service's outbox table (services.common.outbox.outbox_table)
    ready: Callable[[], bool] = lambda: True
    close: Callable[[], None] = lambda: None
    # Embedded hosts only (``services.node.Node``): background work started once the node serves
    # (exchange's event-driven links), and what ends long-held calls when it stops, before the
    # server's grace period (a PullDown long poll would otherwise hold the stop for the whole grace).
    start: Callable[[], None] = lambda: None
    release: Callable[[], None] = lambda: None


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class NodeHooks:
    """What a host hands the services of a node besides the settings, and what they leave for tests and
    the demo: one per node, shared by its services. A production process (``lianxin serve``, ``lianxin
    worker``) gives none; an embedded node (``services.node.Node.start``) the first four.
    """

    # Given by an embedded node.
    notify_outbox: Callable[[], None] | None = None  # wake the outbox relay after a commit
    wake_timer: Callable[[str], None] | None = None  # run the named timer now (Timer.safety_interval_s)
    on_scrape: Callable[[Callable[[], object]], None] | None = None  # refresh a gauge when /metrics is read
    link_driver: LinkDriver | None = None  # exchange's links wait for work (one driver per process)
    # Given by a deployment, a test or the demo.
    calendar: ChineseWorkingCalendar | NodeCalendar | None = None  # node_calendar() keeps the node's here
    video_peers: dict[str, str] = field(default_factory=dict)  # node code -> its video host:port
    video_hold_ttl_s: float | None = None
    intake_notice_channel: NoticeChannel | None = None  # the SMS/WeChat adapter of 办事进度推送
    stats_config: StatsConfig | None = None
    national_adapter: NationalAdapter | None = None
    # Left by the services, for tests and the demo.
    intake_category_model: CategoryModel | None = None  # wait on its ``ready``
    exchange_store: dict[str, ExchangeStore] = field(default_factory=dict)  # by node
    routing_sweep: dict[str, Callable[[], object]] = field(default_factory=dict)  # by node: sweep now


@dataclass
class ServiceContext:
    """What a service's composition function may use. Built by the host, never at import time."""

    settings: Settings
    service: str
    regions: RegionTree
    engine: Engine
    session_factory: sessionmaker[Session]
    clock: Callable[[], datetime] = utc_now
    # host:port of each service of this node for synchronous gRPC calls (embedded: the node's port)
    peers: dict[str, str] = field(default_factory=dict)
    hooks: NodeHooks = field(default_factory=NodeHooks)

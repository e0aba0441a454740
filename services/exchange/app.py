"""Composition of the exchange service: subscriptions feeding the up-log, the link pumps, the servicer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from sqlalchemy import Engine

from services.common.audit import AuditLog
from services.common.db import make_engine, service_database_url
from services.common.events import decode
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription, Timer
from services.common.timeutil import to_timestamp
from services.common.tls import client_credentials
from services.common.waiting import LinkDriver
from services.exchange import domain
from services.exchange.link import GrpcNationalAdapter, NationalAdapter, NationalLink, ParentLink
from services.exchange.models import outbox
from services.exchange.servicer import ExchangeServicer, LinkReporter
from services.exchange.store import ExchangeStore

log = logging.getLogger(__name__)

# A production worker's link pump polls at this interval; an embedded node's links wait for events.
PUMP_INTERVAL_S = 0.2
# An embedded province's national link: the up-log is reported when it grows; transfers are fetched
# at this interval (the national system's API has no long poll).
NATIONAL_POLL_S = 1.0
METRICS_INTERVAL_S = 1.0
# Embedded node: the link gauges are refreshed at this interval (a scrape every 15 s or more is usual).
EVENT_METRICS_INTERVAL_S = 15.0


def _recorder(store: ExchangeStore) -> Callable[[BusEvent], None]:
    def record(event: BusEvent) -> None:
        # Idempotent by event id (up_log.event_id is unique), so bus redelivery is harmless.
        store.record_local(decode(event), event.body)

    return record


def _audit_head(audit: AuditLog) -> Callable[[], exchange_pb2.AuditHead | None]:
    def head() -> exchange_pb2.AuditHead | None:
        record = audit.head()
        if record is None:
            return None
        return exchange_pb2.AuditHead(sequence=record.seq, hash=record.hash, at=to_timestamp(record.at))

    return head


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    notify: Callable[[], None] = ctx.extras.get("notify_outbox", lambda: None)
    # Present in an embedded node (one per process): the links wait for work instead of polling.
    driver: LinkDriver | None = ctx.extras.get("link_driver")
    store = ExchangeStore(ctx.session_factory, node=node, regions=ctx.regions, clock=ctx.clock, notify=notify)
    record = _recorder(store)
    subscriptions = [
        Subscription("exchange", source, event_type, record)
        for source, types in domain.UP_EVENT_TYPES.items()
        for event_type in types
    ]

    def route_command(event: BusEvent) -> None:
        # A non-owner's request (a citizen's evaluation at the registering node, a supervisor's 督办):
        # routed to the owner, or quarantined here (peer "local") when it cannot get anywhere.
        store.record_command(event.body)

    subscriptions += [Subscription("exchange", source, "command", route_command) for source in domain.COMMAND_SOURCES]
    # Node-to-node links present this node's certificate when the node runs with TLS (docs/security.md).
    credentials = client_credentials(ctx.settings.tls_dir, node)
    parent_link: ParentLink | None = None
    audit_engine: Engine | None = None
    if ctx.settings.parent:
        parent_node = ctx.regions.parent(node) or ""
        head_of_chain = None
        if ctx.settings.audit or ctx.settings.auth:
            # The node's audit chain (written by its servers' security interceptor) anchored above.
            audit_engine = make_engine(service_database_url(ctx.settings, "audit"), service="audit")
            head_of_chain = _audit_head(AuditLog(audit_engine, node))
        parent_link = ParentLink(
            store,
            parent_node=parent_node,
            address=ctx.settings.parent,
            batch_size=ctx.settings.exchange.batch_size,
            credentials=credentials,
            audit_head=head_of_chain,
            anchor_interval_s=ctx.settings.audit_anchor_interval_s,
        )
    national_link: NationalLink | None = None
    adapter: NationalAdapter | None = ctx.extras.get("national_adapter")
    if adapter is None and ctx.settings.national:
        adapter = GrpcNationalAdapter(ctx.settings.national, credentials=credentials)
    if adapter is not None:
        national_link = NationalLink(store, adapter, clock=ctx.clock)
    reporter = LinkReporter(store, parent=parent_link, national=national_link)
    next_metrics = [0.0]

    def refresh_metrics() -> None:
        try:
            reporter.refresh_metrics()
        except Exception:
            log.warning("exchange metrics refresh failed", exc_info=True)

    def pump() -> None:
        if parent_link is not None:
            parent_link.run()
        if national_link is not None:
            national_link.run()
        if time.monotonic() >= next_metrics[0]:
            next_metrics[0] = time.monotonic() + METRICS_INTERVAL_S
            refresh_metrics()

    timers = [Timer("exchange-link-pump", PUMP_INTERVAL_S, pump)]
    if driver is not None:
        on_scrape: Callable[[Callable[[], object]], None] | None = ctx.extras.get("on_scrape")
        if on_scrape is not None:
            on_scrape(refresh_metrics)  # the link gauges when /metrics is read (and on every LinkStatus)
            timers = []
        else:
            timers = [Timer("exchange-link-metrics", EVENT_METRICS_INTERVAL_S, refresh_metrics)]
        if national_link is not None:
            timers.append(Timer("exchange-national-link", NATIONAL_POLL_S, national_link.run))
        store.wake_link = parent_link.wake if parent_link is not None else store.wake_link

    def start() -> None:
        if driver is not None and parent_link is not None:
            parent_link.start(driver)

    def release() -> None:
        store.down_changes.close()  # long polls answer now, not after the server's grace

    def close() -> None:
        release()
        if parent_link is not None:
            parent_link.close()
        if audit_engine is not None:
            audit_engine.dispose()
        if isinstance(adapter, GrpcNationalAdapter):
            adapter.close()

    ctx.extras.setdefault("exchange_store", {})[node] = store
    return ServiceParts(
        name="exchange",
        servicers=[
            ServicerBinding(
                exchange_grpc.add_ExchangeServiceServicer_to_server,
                # Long polls only where this process writes the down-queue (embedded); half the
                # server's threads at most, so that waiting children never starve other calls.
                ExchangeServicer(
                    store,
                    reporter,
                    clock=ctx.clock,
                    long_polls=max(1, ctx.settings.grpc_workers // 2) if driver is not None else 0,
                ),
                "lianxin.exchange.v1.ExchangeService",
            )
        ],
        subscriptions=subscriptions,
        timers=timers,
        session_factory=ctx.session_factory,
        outbox=outbox,
        close=close,
        start=start,
        release=release,
    )

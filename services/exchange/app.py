"""Composition of the exchange service for any host: wiring only.

The rules are in ``domain``, the use cases in ``handlers`` (``Exchange``; ``store.ExchangeStore`` over
SQL), the subscriptions in ``consumers``, the links in ``link`` and ``national``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from sqlalchemy import Engine

from services.common.audit import AuditLog
from services.common.db import make_engine, service_database_url
from services.common.service import ServiceContext, ServiceParts, ServicerBinding, Timer
from services.common.timeutil import to_timestamp
from services.common.tls import client_credentials
from services.exchange.consumers import ExchangeConsumers
from services.exchange.link import ParentLink
from services.exchange.models import outbox
from services.exchange.national import GrpcNationalAdapter, NationalAdapter, NationalLink
from services.exchange.reporting import LinkReporter
from services.exchange.servicer import ExchangeServicer
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


def _audit_head(audit: AuditLog) -> Callable[[], exchange_pb2.AuditHead | None]:
    def head() -> exchange_pb2.AuditHead | None:
        record = audit.head()
        if record is None:
            return None
        return exchange_pb2.AuditHead(sequence=record.seq, hash=record.hash, at=to_timestamp(record.at))

    return head


@dataclass
class _Links:
    """The node's links (either may be absent) and what closes with them."""

    parent: ParentLink | None = None
    national: NationalLink | None = None
    adapter: NationalAdapter | None = None
    audit_engine: Engine | None = None

    def close(self) -> None:
        if self.parent is not None:
            self.parent.close()
        if self.audit_engine is not None:
            self.audit_engine.dispose()
        if isinstance(self.adapter, GrpcNationalAdapter):
            self.adapter.close()


def _links(ctx: ServiceContext, store: ExchangeStore) -> _Links:
    node = ctx.settings.node
    links = _Links()
    # Node-to-node links present this node's certificate when the node runs with TLS (docs/security.md).
    credentials = client_credentials(ctx.settings.tls_dir, node)
    if ctx.settings.parent:
        parent_node = ctx.regions.parent(node) or ""
        head_of_chain = None
        if ctx.settings.audit or ctx.settings.auth:
            # The node's audit chain (written by its servers' security interceptor) anchored above.
            links.audit_engine = make_engine(service_database_url(ctx.settings, "audit"), service="audit")
            head_of_chain = _audit_head(AuditLog(links.audit_engine, node))
        links.parent = ParentLink(
            store,
            parent_node=parent_node,
            address=ctx.settings.parent,
            batch_size=ctx.settings.exchange.batch_size,
            credentials=credentials,
            audit_head=head_of_chain,
            anchor_interval_s=ctx.settings.audit_anchor_interval_s,
        )
    links.adapter = ctx.hooks.national_adapter
    if links.adapter is None and ctx.settings.national:
        links.adapter = GrpcNationalAdapter(ctx.settings.national, credentials=credentials)
    if links.adapter is not None:
        links.national = NationalLink(store, links.adapter, clock=ctx.clock)
    return links


def _timers(ctx: ServiceContext, store: ExchangeStore, links: _Links, reporter: LinkReporter) -> list[Timer]:
    """A production worker pumps the links on a timer; an embedded node's links wait for events."""
    next_metrics = [0.0]

    def refresh_metrics() -> None:
        try:
            reporter.refresh_metrics()
        except Exception:
            log.warning("exchange metrics refresh failed", exc_info=True)

    def pump() -> None:
        if links.parent is not None:
            links.parent.run()
        if links.national is not None:
            links.national.run()
        if time.monotonic() >= next_metrics[0]:
            next_metrics[0] = time.monotonic() + METRICS_INTERVAL_S
            refresh_metrics()

    if ctx.hooks.link_driver is None:
        return [Timer("exchange-link-pump", PUMP_INTERVAL_S, pump)]
    timers = []
    on_scrape = ctx.hooks.on_scrape
    if on_scrape is not None:
        on_scrape(refresh_metrics)  # the link gauges when /metrics is read (and on every LinkStatus)
    else:
        timers = [Timer("exchange-link-metrics", EVENT_METRICS_INTERVAL_S, refresh_metrics)]
    if links.national is not None:
        timers.append(Timer("exchange-national-link", NATIONAL_POLL_S, links.national.run))
    if links.parent is not None:
        store.wake_link = links.parent.wake
        store.wake_link_local = links.parent.wake_local
    return timers


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    notify: Callable[[], None] = ctx.hooks.notify_outbox or (lambda: None)
    # Present in an embedded node (one per process): the links wait for work instead of polling.
    driver = ctx.hooks.link_driver
    store = ExchangeStore(ctx.session_factory, node=node, regions=ctx.regions, clock=ctx.clock, notify=notify)
    links = _links(ctx, store)
    reporter = LinkReporter(store, parent=links.parent, national=links.national)
    timers = _timers(ctx, store, links, reporter)

    def start() -> None:
        if driver is not None and links.parent is not None:
            links.parent.start(driver)

    def release() -> None:
        store.down_changes.close()  # long polls answer now, not after the server's grace

    def close() -> None:
        release()
        links.close()

    ctx.hooks.exchange_store[node] = store
    return ServiceParts(
        name="exchange",
        servicers=[
            ServicerBinding(
                exchange_grpc.add_ExchangeServiceServicer_to_server,
                # Long polls only where this process writes the down-queue (embedded): one held for each
                # direct child, on threads the node adds to its server's for them (services/node.py),
                # so waiting children never starve other calls. A child refused a hold asks every
                # second instead of every LONG_POLL_S (a city of 20 counties with 8 holds: 12 did).
                ExchangeServicer(
                    store,
                    reporter,
                    clock=ctx.clock,
                    long_polls=max(1, len(ctx.regions.children.get(node, []))) if driver is not None else 0,
                ),
                "lianxin.exchange.v1.ExchangeService",
            )
        ],
        subscriptions=ExchangeConsumers(store).subscriptions(),
        timers=timers,
        session_factory=ctx.session_factory,
        outbox=outbox,
        close=close,
        start=start,
        release=release,
    )

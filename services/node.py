"""Composition roots: an embedded node (five services, one port, in-process bus) and a single service.

The same ``services.<name>.app.build(ctx)`` feeds every host, so the embedded node, the production
api process and the production worker run identical business code.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, text

from services.common.bus import InProcessBus, RelayLoop, TimerLoop
from services.common.db import make_engine, make_session_factory, service_database_url
from services.common.grpcserver import GrpcServer, refresh_on_scrape
from services.common.migrations import upgrade
from services.common.outbox import Relay
from services.common.regions import RegionTree
from services.common.security import ServerSecurity, server_security
from services.common.service import NodeHooks, ServiceContext, ServiceParts, utc_now
from services.common.settings import SERVICES, Settings
from services.common.waiting import LinkDriver

log = logging.getLogger(__name__)


def build_service(
    settings: Settings,
    service: str,
    *,
    regions: RegionTree,
    clock: Callable[[], datetime] = utc_now,
    peers: dict[str, str] | None = None,
    hooks: NodeHooks | None = None,
) -> tuple[ServiceParts, Engine]:
    """Open the service's own database, migrate it, and let the service compose itself."""
    engine = make_engine(service_database_url(settings, service), service=service)
    upgrade(engine, service)
    ctx = ServiceContext(
        settings=settings,
        service=service,
        regions=regions,
        engine=engine,
        session_factory=make_session_factory(engine),
        clock=clock,
        peers=peers if peers is not None else {},
        hooks=hooks if hooks is not None else NodeHooks(),
    )
    module = importlib.import_module(f"services.{service}.app")
    parts: ServiceParts = module.build(ctx)
    return parts, engine


def long_poll_threads(regions: RegionTree, code: str) -> int:
    """gRPC threads a node needs beyond ``grpc_workers``: one per direct child, whose long poll holds one."""
    return max(1, len(regions.children.get(code, [])))


def database_ready(engine: Engine) -> Callable[[], bool]:
    """Readiness = the service's database answers (DESIGN §6)."""

    def ready() -> bool:
        try:
            with engine.connect() as conn:
                conn.execute(text("select 1"))
            return True
        except Exception as error:
            # GrpcServer logs the change of readiness; the cause is said once here, without a traceback.
            log.debug("database not ready: %s", type(error).__name__)
            return False

    return ready


@dataclass
class Node:
    """One region's node in embedded mode: five services behind one gRPC port, in-process events."""

    settings: Settings
    regions: RegionTree = field(default_factory=RegionTree.load)
    clock: Callable[[], datetime] = utc_now
    services: Sequence[str] = SERVICES
    hooks: NodeHooks = field(default_factory=NodeHooks)
    # A host of many nodes (services/host.py) shares one gRPC thread pool between them.
    executor: ThreadPoolExecutor | None = None
    parts: dict[str, ServiceParts] = field(default_factory=dict, init=False)
    engines: dict[str, Engine] = field(default_factory=dict, init=False)
    peers: dict[str, str] = field(default_factory=dict, init=False)
    bus: InProcessBus = field(default_factory=InProcessBus, init=False)
    server: GrpcServer | None = field(default=None, init=False)
    relay_loop: RelayLoop | None = field(default=None, init=False)
    timer_loop: TimerLoop | None = field(default=None, init=False)
    security: ServerSecurity | None = field(default=None, init=False)
    _scrape_hooks: list[Callable[[], None]] = field(default_factory=list, init=False)

    @property
    def code(self) -> str:
        return self.settings.node

    @property
    def address(self) -> str:
        assert self.server is not None, "node not started"
        return self.server.address

    @property
    def metrics_port(self) -> int | None:
        assert self.server is not None, "node not started"
        return self.server.metrics_port

    @property
    def public_port(self) -> int | None:
        """The port serving only citizens' methods (LIANXIN_PUBLIC_PORT), or None."""
        assert self.server is not None, "node not started"
        return self.server.public_port

    def start(self) -> Node:
        if self.code not in self.regions:
            raise ValueError(f"node {self.code} is not a known region code")
        hooks = self.hooks
        if hooks.notify_outbox is None:
            hooks.notify_outbox = self._notify_outbox
        # Timers with a safety interval run when their service has work for them (Timer.safety_interval_s).
        if hooks.wake_timer is None:
            hooks.wake_timer = self._wake_timer
        # Gauges read from the databases are refreshed when /metrics is scraped, not on timers.
        if hooks.on_scrape is None:
            hooks.on_scrape = self._on_scrape
        # Exchange's links wait for work instead of polling; one driver serves every node of the process.
        if hooks.link_driver is None:
            hooks.link_driver = LinkDriver.shared()
        for name in self.services:
            parts, engine = build_service(
                self.settings, name, regions=self.regions, clock=self.clock, peers=self.peers, hooks=self.hooks
            )
            self.parts[name] = parts
            self.engines[name] = engine
            for sub in parts.subscriptions:
                self.bus.subscribe(sub)
        readiness = [database_ready(engine) for engine in self.engines.values()]
        bindings = [binding for parts in self.parts.values() for binding in parts.servicers]
        # Tokens, mTLS and audit per settings (docs/security.md); off by default for `lianxin up`.
        self.security = server_security(self.settings, self.regions, [b.full_name for b in bindings])
        self.server = GrpcServer(
            bindings,
            settings=self.settings,
            ready=lambda: all(check() for check in readiness),
            interceptors=self.security.interceptors,
            server_credentials=self.security.credentials,
            executor=self.executor
            or ThreadPoolExecutor(
                max_workers=self.settings.grpc_workers + long_poll_threads(self.regions, self.code),
                thread_name_prefix=f"grpc-{self.code}",
            ),
        )
        self.server.start()
        # Services of one embedded node reach each other on the node's own port.
        for name in self.services:
            self.peers[name] = self.server.address
        relays = [
            Relay(
                parts.session_factory,
                parts.outbox,
                self.bus.publish,
                service=name,
                publish_many=self.bus.publish_batch,
            )
            for name, parts in self.parts.items()
            if parts.session_factory is not None and parts.outbox is not None
        ]
        self.relay_loop = RelayLoop(
            relays, interval_s=self.settings.relay_poll_s(woken_by_commits=True), metrics_in_passes=False
        )
        self._on_scrape(self.relay_loop.refresh_metrics)
        self.relay_loop.start()
        self.timer_loop = TimerLoop([timer for parts in self.parts.values() for timer in parts.timers])
        self.timer_loop.start()
        for parts in self.parts.values():
            parts.start()
        log.info("node started", extra={"node": self.code, "address": self.server.address})
        return self

    def _notify_outbox(self) -> None:
        # Called by servicers after a commit so in-process delivery does not wait for the poll.
        if self.relay_loop is not None:
            self.relay_loop.notify()

    def _on_scrape(self, hook: Callable[[], object]) -> None:
        self._scrape_hooks.append(refresh_on_scrape(hook))

    def _wake_timer(self, name: str) -> None:
        if self.timer_loop is not None:
            self.timer_loop.wake(name)

    def drain(self) -> None:
        """Publish every pending outbox row now (tests and demo use this instead of waiting)."""
        assert self.relay_loop is not None
        self.relay_loop.run_now()

    def stop(self, grace: float = 5.0) -> None:
        for parts in self.parts.values():
            parts.release()
        if self.server is not None:
            self.server.stop(grace)
        if self.timer_loop is not None:
            self.timer_loop.stop()
        if self.relay_loop is not None:
            self.relay_loop.stop()
        for remove in self._scrape_hooks:
            remove()
        for parts in self.parts.values():
            parts.close()
        for engine in self.engines.values():
            engine.dispose()
        if self.security is not None:
            self.security.close()

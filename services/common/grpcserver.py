"""The gRPC server every service runs: health, reflection, /metrics, tracing, graceful stop.

The interceptors it installs (domain error → status code, RPC metrics, the public port's filter) are in
``interceptors``; the client side (``instrumented_channel``, ``CHANNEL_OPTIONS``) in ``grpcclient``.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import server_interceptor
from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from services.common import read_together
from services.common.grpcclient import MAX_MESSAGE_BYTES, TRACE_FIELDS, tracer_installed
from services.common.interceptors import (
    HEALTH_SERVICE_NAME,
    LianxinServerInterceptor,
    PublicOnlyInterceptor,
    QueryThreadsInterceptor,
    initialise_rpc_metrics,
    read_only_methods,
)
from services.common.request_rules import RequestRulesInterceptor
from services.common.security import CITIZEN_METHODS
from services.common.server_calls import MethodInterceptor, ServerCalls
from services.common.service import ServicerBinding
from services.common.settings import Settings

log = logging.getLogger(__name__)

# What a server reads of one request before refusing it. Public (citizen) and node-to-node methods
# share one port and grpcio has one receive limit per server, so it is set just above the largest
# legitimate request: a link's PushEvents batch (exchange's MAX_BATCH_BYTES, 1 MiB of envelopes,
# plus the one item that crossed it; an envelope is tens of KiB at most). grpc-core checks the
# length prefix, so a larger request is refused RESOURCE_EXHAUSTED before its body is read; the
# 64 KiB public limit stays in RequestRulesInterceptor (PUBLIC_MAX_BYTES). Replies (a bulletin's
# charts) may still be up to MAX_MESSAGE_BYTES.
MAX_RECEIVE_BYTES = 2 * 1024 * 1024
# What the public port (settings.public_port) reads of one request: a citizen's largest legitimate
# one is under 16 KiB and the request rules refuse anything above PUBLIC_MAX_BYTES (64 KiB), so the
# transport refuses more than that from the length prefix, before a byte of the body is buffered.
PUBLIC_RECEIVE_BYTES = 80 * 1024
# The overall health name: liveness (the process answers), never the database (GrpcServer).
LIVENESS_SERVICE_NAME = ""
REFLECTION_SERVICE_NAME: str = reflection.SERVICE_NAME
# Readiness is checked when a probe asks (at most every ``readiness_interval_s``) and, unasked, this often.
READINESS_BACKGROUND_S = 60.0

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    # Ping idle clients so half-open connections through e-government firewalls are noticed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept client pings down to every 10 s instead of answering them with GOAWAY.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # grpcio sets SO_REUSEPORT by default: a second server on a taken fixed port would bind quietly
    # and steal half the connections. A clash must fail loudly instead.
    ("grpc.so_reuseport", 0),
)

PUBLIC_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    *(option for option in SERVER_OPTIONS if option[0] != "grpc.max_receive_message_length"),
    ("grpc.max_receive_message_length", PUBLIC_RECEIVE_BYTES),
)

# --------------------------------------------------------------------------- the server


class _QuietRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Every scrape would otherwise print an access line to stderr, outside structured logs.
        pass


_SCRAPE_HOOKS: dict[int, Callable[[], object]] = {}
_SCRAPE_LOCK = threading.Lock()
_SCRAPE_IDS = iter(range(1, 1 << 62))


def refresh_on_scrape(hook: Callable[[], object], *, min_interval_s: float = 5.0) -> Callable[[], None]:
    """Run ``hook`` (a gauge refresh) before a /metrics page is served, at most every ``min_interval_s``.

    Gauges read from a database (backlogs, open work orders) then cost nothing while nobody looks,
    instead of a query on a timer in every node. Returns the function that removes the hook.
    """
    last = [float("-inf")]

    def paced() -> None:
        now = time.monotonic()
        if now - last[0] >= min_interval_s:
            last[0] = now
            hook()

    with _SCRAPE_LOCK:
        key = next(_SCRAPE_IDS)
        _SCRAPE_HOOKS[key] = paced

    def remove() -> None:
        with _SCRAPE_LOCK:
            _SCRAPE_HOOKS.pop(key, None)

    return remove


def run_scrape_hooks() -> None:
    """Refresh every registered gauge (``refresh_on_scrape``); a failing hook is logged, the page still served."""
    with _SCRAPE_LOCK:
        hooks = list(_SCRAPE_HOOKS.values())
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.warning("gauge refresh before a scrape failed", exc_info=True)


def _metrics_app() -> Callable[[dict[str, Any], Any], Any]:
    serve = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        run_scrape_hooks()
        return serve(environ, start_response)

    return app


class _HealthOnDemand(health.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 whose readiness answers are checked when asked (``asked``), not on a timer."""

    def __init__(self, asked: Callable[[str], None]) -> None:
        super().__init__()
        self._asked = asked

    def Check(self, request: Any, context: Any) -> Any:
        self._asked(request.service)
        return super().Check(request, context)

    def Watch(self, request: Any, context: Any, send_response_callback: Any = None) -> Any:
        self._asked(request.service)
        return super().Watch(request, context, send_response_callback)


class MetricsHttp:
    """Serves the default registry like ``prometheus_client.start_http_server``, without polling.

    ``serve_forever`` wakes every ``poll_interval`` to see whether it should stop (prometheus_client:
    0.5 s; 0.05 s here before, so that stopping was quick): 20 wake-ups a second of an idle node.
    This loop sleeps in ``select`` until a scrape arrives or ``stop`` writes to its wake-up socket.
    """

    def __init__(self, host: str, port: int) -> None:
        self.http = make_server(host, port, _metrics_app(), ThreadingWSGIServer, handler_class=_QuietRequestHandler)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"metrics-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.http.server_port)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.http, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.http and not self._stopping:
                        self.http.handle_request()  # readable: accepts at once, a handler thread serves it

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self.http.server_close()
        self._wake_r.close()
        self._wake_w.close()


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_call_traced(details: grpc.HandlerCallDetails) -> bool:
    """Whether OpenTelemetry's server interceptor can record or hand on anything for this call.

    Without a tracer provider (no exporter configured) and without trace context in the call's
    metadata, its span is a non-recording one with no context and nothing reaches the handler, the
    events or the logs; skipping it saved ~0.1 ms of a node's CPU per call (issue 17: the console's
    pages make up to seven calls). A call that carries context is still traced, so it passes on.
    """
    return tracer_installed() or any(key in TRACE_FIELDS for key, _ in details.invocation_metadata or ())


class GrpcServer:
    """A grpcio sync server hosting business servicers plus health, reflection and /metrics.

    Interceptor order (outermost first): OpenTelemetry, the Lianxin error/metrics interceptor, then
    ``interceptors`` (security), so rejections by security are traced and counted too, and last the
    contract's request rules, so every handler sees only requests within them. They run as the layers
    of one ``ServerCalls`` interceptor, which builds each method's handler once (server_calls).

    Health has two meanings (Kubernetes probes them apart, deploy/k8s): the overall name ``""`` is
    **liveness**, SERVING while the process answers (until it drains); each business service's name
    is **readiness**, SERVING while ``ready()`` holds (its database answers), checked every
    ``settings.readiness_interval_s``. A database outage takes the pods out of the Service without
    restarting them.
    """

    def __init__(
        self,
        bindings: Sequence[ServicerBinding],
        settings: Settings,
        *,
        ready: Callable[[], bool] | None = None,
        interceptors: Sequence[MethodInterceptor] = (),
        server_credentials: grpc.ServerCredentials | None = None,
        executor: futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self._bindings = list(bindings)
        self._settings = settings
        self._ready = ready or (lambda: True)
        self._credentials = server_credentials
        self._service_names = [binding.full_name for binding in self._bindings]
        initialise_rpc_metrics(self._service_names)
        for binding in self._bindings:
            binding.initialise_metrics()
        # A host of many nodes passes one executor for all its servers (threads start only when used).
        pool = executor or futures.ThreadPoolExecutor(
            max_workers=settings.grpc_workers, thread_name_prefix=f"grpc-{settings.node}"
        )
        layers: list[MethodInterceptor] = [
            LianxinServerInterceptor(),
            *interceptors,
            RequestRulesInterceptor(CITIZEN_METHODS),
        ]
        # The query RPCs on threads of their own (QueryThreadsInterceptor), outermost so that grpcio
        # sees the pool on the behaviour it runs; 0 query threads: they share the handler threads.
        queries = read_only_methods((b.full_name, b.servicer) for b in self._bindings)
        self._query_pool: futures.ThreadPoolExecutor | None = None
        outer: MethodInterceptor | None = None
        query_threads = settings.query_threads()
        if query_threads > 0 and queries:
            self._query_pool = futures.ThreadPoolExecutor(
                max_workers=query_threads, thread_name_prefix=f"grpc-query-{settings.node}"
            )
            # ReadTogether is a query too: its parts run on the query thread it was handed to.
            outer = QueryThreadsInterceptor({*queries, read_together.METHOD}, self._query_pool)
        tracing = server_interceptor()  # type: ignore[no-untyped-call]
        calls = ServerCalls(layers, outer=outer, tracing=tracing, traced=server_call_traced)
        self._server = grpc.server(pool, interceptors=[calls], options=SERVER_OPTIONS)
        self._health = _HealthOnDemand(self._asked)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        handlers = read_together.add_servicers(self._server, self._bindings)
        reflected = [*self._service_names, HEALTH_SERVICE_NAME, REFLECTION_SERVICE_NAME]
        if queries:  # a process serving reads answers several of them in one call (read_together)
            read_together.add_to_server(self._server, read_together.ReadTogether(calls, handlers, queries))
            initialise_rpc_metrics([read_together.SERVICE])
            reflected.append(read_together.SERVICE)
        reflection.enable_server_reflection(reflected, self._server)
        # The public port: the same servicers and checks in the same threads, but grpcio has one
        # receive limit per server, so citizens get their own server with a small one (and only
        # their methods; the refusal is counted and traced like any other).
        self._public_server: grpc.Server | None = None
        if settings.public_port is not None:
            public_layers = [layers[0], PublicOnlyInterceptor(CITIZEN_METHODS), *layers[1:]]
            self._public_server = grpc.server(
                pool,
                interceptors=[ServerCalls(public_layers, outer=outer, tracing=tracing, traced=server_call_traced)],
                options=PUBLIC_SERVER_OPTIONS,
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._public_server)
            for binding in self._bindings:
                binding.add_to_server(binding.servicer, self._public_server)
        self._public_port: int | None = None
        # Nothing is ready before start(): probes must not route traffic to a half-built server.
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._port: int | None = None
        self._metrics_http: MetricsHttp | None = None
        self._probe_server: grpc.Server | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._terminated = threading.Event()
        self._stop_watching = threading.Event()
        self._was_ready: bool | None = None
        self._checked_at = float("-inf")  # monotonic time of the last readiness check
        self._checking = threading.Lock()

    # -- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("GrpcServer.port is known only after start()")
        return self._port

    @property
    def address(self) -> str:
        return _format_address(self._settings.grpc_host, self.port)

    @property
    def public_port(self) -> int | None:
        """The bound public (citizen) port, or None without one (or before start())."""
        return self._public_port

    @property
    def metrics_port(self) -> int | None:
        """The bound /metrics port, or None when metrics are disabled (or before start())."""
        return None if self._metrics_http is None else self._metrics_http.port

    @property
    def service_names(self) -> list[str]:
        return list(self._service_names)

    @property
    def grpc_server(self) -> grpc.Server:
        return self._server

    # -- lifecycle

    def start(self) -> GrpcServer:
        """Bind the gRPC port (0 picks a free one), start /metrics, serve, and publish health."""
        self._port = self._bind(self._server, self._settings.grpc_port, "gRPC")
        if self._public_server is not None:
            self._public_port = self._bind(self._public_server, self._settings.public_port or 0, "public")
        if self._settings.metrics_port is not None:
            # One exposition server per GrpcServer, all reading the default registry, so several
            # nodes in one process each have a /metrics port showing the process's figures.
            self._metrics_http = MetricsHttp(self._settings.grpc_host, self._settings.metrics_port)
        self._server.start()
        if self._public_server is not None:
            self._public_server.start()
        if self._settings.health_port is not None:
            self._start_probe_port(self._settings.health_port)
        self._health.set(LIVENESS_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.refresh_health()
        threading.Thread(target=self._watch_readiness, name="grpc-readiness", daemon=True).start()
        log.info(
            "gRPC server listening",
            extra={
                "address": self.address,
                "metrics_port": self.metrics_port,
                "public_port": self.public_port,
                "services": self._service_names,
            },
        )
        return self

    def _bind(self, server: grpc.Server, port: int, what: str) -> int:
        bind = _format_address(self._settings.grpc_host, port)
        if self._credentials is None:
            bound = server.add_insecure_port(bind)
        else:
            bound = server.add_secure_port(bind, self._credentials)
        if bound == 0:
            raise RuntimeError(f"could not bind the {what} port {bind}")
        return int(bound)

    def _start_probe_port(self, port: int) -> None:
        """The same health answers on a plaintext port with nothing else on it: Kubernetes' gRPC
        probes cannot present a client certificate, and this port serves no business method."""
        probe = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-probe"))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, probe)
        bind = _format_address(self._settings.grpc_host, port)
        if probe.add_insecure_port(bind) == 0:
            raise RuntimeError(f"could not bind the health port {bind}")
        probe.start()
        self._probe_server = probe

    def refresh_health(self) -> bool:
        """Publish readiness (SERVING or NOT_SERVING for every business service) from ``ready()``."""
        with self._checking:
            return self._refresh_health()

    def _refresh_health(self) -> bool:
        self._checked_at = time.monotonic()
        try:
            ready = bool(self._ready())
        except Exception:
            log.exception("readiness check failed")
            ready = False
        with self._lock:
            if self._stopping:
                return False
            changed = ready != self._was_ready
            self._was_ready = ready
        if changed:
            log.log(logging.INFO if ready else logging.WARNING, "readiness", extra={"ready": ready})
        serving = health_pb2.HealthCheckResponse
        self._set_readiness(serving.SERVING if ready else serving.NOT_SERVING)
        return ready

    def _asked(self, service: str) -> None:
        """A probe asks for a service's readiness: check it first if the last check is older than the interval."""
        if service == LIVENESS_SERVICE_NAME or service not in self._service_names:
            return  # liveness is the process answering; an unknown name is NOT_FOUND as before
        if time.monotonic() - self._checked_at < self._settings.readiness_interval_s:
            return
        if self._checking.acquire(blocking=False):  # one check at a time; the others answer what it finds
            try:
                if time.monotonic() - self._checked_at >= self._settings.readiness_interval_s:
                    self._refresh_health()
            finally:
                self._checking.release()

    def _watch_readiness(self) -> None:
        # Probes (Kubernetes' Check) get a fresh answer when they ask (``_asked``); this slow pass keeps
        # the status right for health Watch streams and for the log line when nobody asks.
        interval = max(self._settings.readiness_interval_s, READINESS_BACKGROUND_S)
        while not self._stop_watching.wait(interval):
            if time.monotonic() - self._checked_at >= interval:
                self.refresh_health()

    def _set_readiness(self, status: int) -> None:
        for name in self._service_names:
            self._health.set(name, status)

    def _set_health(self, status: int) -> None:
        for name in (LIVENESS_SERVICE_NAME, *self._service_names):
            self._health.set(name, status)

    def stop(self, grace: float = 5.0) -> None:
        """Drain: health NOT_SERVING first, then let in-flight RPCs finish for ``grace`` s, then stop."""
        with self._lock:
            already = self._stopping
            self._stopping = True
        self._stop_watching.set()
        if already:
            # A second stop (signal plus finally-block) waits for the first instead of racing it.
            self._terminated.wait()
            return
        try:
            # Health watchers (load balancers) see NOT_SERVING while the server still answers.
            self._health.enter_graceful_shutdown()
            public = self._public_server.stop(grace) if self._public_server is not None else None
            self._server.stop(grace).wait()
            if public is not None:
                public.wait()
            if self._probe_server is not None:
                self._probe_server.stop(0).wait()
            if self._query_pool is not None:
                self._query_pool.shutdown(wait=False)
        finally:
            if self._metrics_http is not None:
                self._metrics_http.stop()
            self._terminated.set()
            log.info("gRPC server stopped", extra={"address": self.address if self._port else None})

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until stop() has finished; True if it did within ``timeout``."""
        return self._terminated.wait(timeout)

    def install_signal_handlers(self, grace: float = 5.0) -> None:
        """SIGTERM/SIGINT stop the server with ``grace``; only from the main thread (a Python rule)."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("install_signal_handlers() must be called from the main thread")

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
            # Stopping blocks for up to ``grace``; a signal handler must return quickly.
            threading.Thread(target=self.stop, args=(grace,), name="grpc-stop", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

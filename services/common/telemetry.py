"""OpenTelemetry tracing setup and the trace-context helpers that events and logs use.

Every process (``lianxin node``, ``serve``, ``worker``) calls ``configure_tracing`` with the environment
the command line hands it, and reads the standard OpenTelemetry variables there (docs/operations.md,
Tracing): ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_TRACES_EXPORTER=otlp|console``) turns export on,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and the exporter's own
``OTEL_EXPORTER_OTLP_*`` variables apply as usual. Trace context travels inside every event
(``EventEnvelope.trace_context``), so a case's trace continues through the outbox, the handlers and
the replication to the parent.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default
from opentelemetry.trace import SpanKind

from services.common.names import LINK_METHODS

EXPORTERS: tuple[str, ...] = ("none", "console", "memory", "otlp")

# Node-to-node polling and probes: a root span of these is never sampled (a link pumps every fraction of
# a second; each case's own trace continues from the context its events carry, not from the push).
UNTRACED_METHODS: frozenset[str] = LINK_METHODS | {"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"}


class SkipPolling(Sampler):
    """Drops root spans of ``UNTRACED_METHODS``; everything else goes to the configured sampler."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and name.lstrip("/") in UNTRACED_METHODS:
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"SkipPolling{{{self._delegate.get_description()}}}"


_lock = threading.Lock()
# OTel lets a process set its global tracer provider only once, so every node hosted in this
# process shares the first provider; exporters are attached to it at most once each.
_provider: TracerProvider | None = None
_memory_exporter: InMemorySpanExporter | None = None
_console_attached = False
_otlp_attached = False


def exporters_from_environment(environ: Mapping[str, str], legacy: str = "none") -> list[str]:
    """The span exporters the standard OpenTelemetry environment asks for, plus LIANXIN_OTEL_EXPORTER.

    ``OTEL_TRACES_EXPORTER`` names them (otlp, console, none); unset, an OTLP endpoint
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT``) means otlp, and nothing means no
    export, so a process with no collector configured does not try to reach localhost:4317.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not named and (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        named = ["otlp"]
    chosen = [name for name in [*named, legacy] if name != "none"]
    unknown = [name for name in chosen if name not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported {', '.join(unknown)} (otlp, console or none)")
    return list(dict.fromkeys(chosen))


def configure_tracing(
    service_name: str, node: str, legacy_exporter: str = "none", *, environ: Mapping[str, str]
) -> list[str]:
    """Tracing for one process from its environment; returns the exporters attached (none: tracing off)."""
    chosen = exporters_from_environment(environ, legacy_exporter)
    for exporter in chosen:
        setup_tracing(service_name, node, exporter, named_by_environment=bool(environ.get("OTEL_SERVICE_NAME")))
    return chosen


def record_event_spans(name: str, carriers: Sequence[Mapping[str, str]], attributes: Mapping[str, str]) -> None:
    """One span per event, each in the trace its event carries (a replica stored at the parent).

    Only where a span goes somewhere (an exporter attached by ``setup_tracing``): without one, reading
    each event's trace context still cost a catch-up's 500-item batch about 10 ms (at a parent storing
    the batch in ~100 ms), for spans nobody receives."""
    if not (_otlp_attached or _console_attached or _memory_exporter is not None):
        return
    tracer = trace.get_tracer("lianxin.events")
    for carrier in carriers:
        if carrier:
            tracer.start_span(name, context=extract_context(carrier), attributes=dict(attributes)).end()


# The events' tracer, got once: ``trace.get_tracer`` builds a tracer (its instrumentation scope) on every
# call, which every handler delivery paid. Got before ``setup_tracing`` it is the API's proxy, which
# hands over to the provider once one is installed.
_EVENTS_TRACER = trace.get_tracer("lianxin.events")


@contextmanager
def consumer_span(name: str, carrier: Mapping[str, str], attributes: Mapping[str, str]) -> Iterator[None]:
    """Run an event handler as a CONSUMER span in the trace that its event carried."""
    with (
        attached_context(carrier),
        _EVENTS_TRACER.start_as_current_span(name, kind=SpanKind.CONSUMER, attributes=dict(attributes)),
    ):
        yield


def setup_tracing(
    service_name: str, node: str, exporter: str = "none", *, named_by_environment: bool = False
) -> InMemorySpanExporter | None:
    """Install the process-wide tracer provider (once) and attach ``exporter`` (once per kind).

    Returns the in-memory exporter when ``exporter == "memory"`` so tests can read finished spans.
    The resource (``service.name``, ``lianxin.node``) is fixed by the first call in the process.
    """
    global _provider, _memory_exporter, _console_attached, _otlp_attached
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown OTel exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    with _lock:
        if _provider is None:
            attributes = {"lianxin.node": node}
            if not named_by_environment:  # OTEL_SERVICE_NAME, which the resource reads itself
                attributes["service.name"] = service_name
            _provider = TracerProvider(
                resource=Resource.create(attributes), sampler=SkipPolling(_get_from_env_or_default())
            )
            trace.set_tracer_provider(_provider)
        if exporter == "otlp" and not _otlp_attached:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            # Endpoint, TLS, headers and timeouts come from OTEL_EXPORTER_OTLP_* (read by the exporter).
            otlp: SpanExporter = OTLPSpanExporter()
            execute = _off_hub_executor()
            if execute is not None:
                otlp = OffHubExporter(otlp, execute)
            _provider.add_span_processor(BatchSpanProcessor(otlp))
            _otlp_attached = True
        if exporter == "memory":
            if _memory_exporter is None:
                _memory_exporter = InMemorySpanExporter()
                # Simple (synchronous) processing so a test sees a span as soon as it ends.
                _provider.add_span_processor(SimpleSpanProcessor(_memory_exporter))
            return _memory_exporter
        if exporter == "console" and not _console_attached:
            _provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            _console_attached = True
        return None


class OffHubExporter(SpanExporter):
    """Another exporter whose ``export`` runs on a real OS thread, for an eventlet (nameko) worker.

    In a monkey-patched worker the batch processor's thread is a green thread on the one OS thread
    that runs every handler, and the OTLP exporter's gRPC call blocks in C: a slow or unreachable
    collector (up to ``OTEL_EXPORTER_OTLP_TIMEOUT`` per batch, with retries) would stop the whole
    worker. ``execute`` (eventlet's ``tpool.execute``) runs the call on a pool thread while the green
    caller yields to the hub, so handlers, timers and the relay go on.
    """

    def __init__(self, inner: SpanExporter, execute: Callable[..., Any]) -> None:
        self._inner = inner
        self._execute = execute

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result: SpanExportResult = self._execute(self._inner.export, spans)
        return result

    def shutdown(self) -> None:
        # Only sets a flag and closes the channel: no network wait, and the pool may be gone at exit.
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _off_hub_executor() -> Callable[..., Any] | None:
    """eventlet's ``tpool.execute`` in a monkey-patched process (the worker), else None.

    Never imports eventlet itself: api processes must not load it (tests/unit/test_no_eventlet.py).
    """
    if "eventlet" not in sys.modules:
        return None
    from eventlet import patcher, tpool

    return tpool.execute if patcher.is_monkey_patched("thread") else None


def tracer_provider() -> TracerProvider | None:
    """The provider installed by ``setup_tracing``, or None when tracing was never set up."""
    return _provider


def inject_context() -> dict[str, str]:
    """The current trace context as a W3C ``traceparent``/``tracestate`` map, to store inside an event."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The trace context an event carried, to start the consumer's spans as its children."""
    return propagate.extract(dict(carrier))


@contextmanager
def attached_context(carrier: Mapping[str, str]) -> Iterator[Context]:
    """Run a block (an event handler) inside the trace context that an event carried."""
    ctx = extract_context(carrier)
    token = otel_context.attach(ctx)
    try:
        yield ctx
    finally:
        otel_context.detach(token)


def current_trace_id() -> str | None:
    """The active span's trace id as 32 hex digits, or None outside a (valid) span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")


def current_span_id() -> str | None:
    """The active span's id as 16 hex digits, or None outside a (valid) span."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.span_id, "016x")

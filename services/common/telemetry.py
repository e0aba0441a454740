"""OpenTelemetry tracing setup and the trace-context helpers that events and logs use."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTERS: tuple[str, ...] = ("none", "console", "memory")

_lock = threading.Lock()
# OTel lets a process set its global tracer provider only once, so every node hosted in this
# process shares the first provider; exporters are attached to it at most once each.
_provider: TracerProvider | None = None
_memory_exporter: InMemorySpanExporter | None = None
_console_attached = False


def setup_tracing(service_name: str, node: str, exporter: str = "none") -> InMemorySpanExporter | None:
    """Install the process-wide tracer provider (once) and attach ``exporter`` (once per kind).

    Returns the in-memory exporter when ``exporter == "memory"`` so tests can read finished spans.
    The resource (``service.name``, ``lianxin.node``) is fixed by the first call in the process.
    """
    global _provider, _memory_exporter, _console_attached
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown OTel exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    with _lock:
        if _provider is None:
            resource = Resource.create({"service.name": service_name, "lianxin.node": node})
            _provider = TracerProvider(resource=resource)
            trace.set_tracer_provider(_provider)
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

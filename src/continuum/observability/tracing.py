"""W3C trace context and optional OpenTelemetry spans.

* Tracing off (the default): nothing here runs per request. A client's ``traceparent`` /
  ``tracestate`` are forwarded upstream untouched, like any other header.
* ``tracing.enabled`` without ``opentelemetry-sdk``: one warning at start; a request that
  came without ``traceparent`` gets a fresh one (new trace id), forwarded upstream.
* ``tracing.enabled`` with the SDK: spans ``ingress`` (server), ``routing`` and one
  ``upstream attempt`` (client) per attempt, exported by a batch processor (console or
  OTLP/HTTP). Each attempt's upstream ``traceparent`` names that attempt's span.

Spans take their parent explicitly (no context attach/detach), which suits trio's tasks.
"""

from __future__ import annotations

import logging
import random
from importlib import import_module
from typing import Any, Final, final

from ..config import TracingConfig

log = logging.getLogger("continuum.tracing")

_VERSION: Final = b"00"
_SPAN_BITS: Final = 64
_SPAN_MASK: Final = (1 << _SPAN_BITS) - 1


def new_traceparent(rng: random.Random) -> bytes:
    """A new sampled ``traceparent`` with a random trace id and parent id, both from one
    draw of ``rng``. Trace context asks for random ids, not secret ones (they travel in
    clear to every upstream), so a seeded PRNG does: ``SystemRandom`` made this two
    ``getrandom`` syscalls per request."""
    bits = rng.getrandbits(128 + _SPAN_BITS)
    return b"00-%032x-%016x-01" % ((bits >> _SPAN_BITS) or 1, (bits & _SPAN_MASK) or 1)


def valid_traceparent(value: bytes) -> bool:
    """Is ``value`` a well-formed version-00 ``traceparent`` (non-zero ids)?"""
    parts = value.split(b"-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == b"ff":
        return False
    version, trace_id, span_id, flags = parts[:4]
    if version == _VERSION and len(parts) != 4:
        return False
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2:
        return False
    try:
        return int(trace_id, 16) != 0 and int(span_id, 16) != 0 and int(flags, 16) >= 0
    except ValueError:
        return False


def _format(span: Any) -> bytes:
    ctx = span.get_span_context()
    return b"%s-%032x-%016x-%02x" % (_VERSION, ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


@final
class Tracing:
    """One router's tracing: ``enabled`` (propagation) and ``spans`` (OpenTelemetry)."""

    def __init__(self, config: TracingConfig) -> None:
        self.enabled = config.enabled
        self.spans = False
        #: Ids of generated ``traceparent``s: one generator per router, seeded from the OS
        #: (each worker process seeds its own).
        self.rng = random.Random()
        self._tracer: Any = None
        self._provider: Any = None
        if not config.enabled:
            return
        try:
            self._setup(config)
        except ImportError as exc:
            log.warning(
                "tracing.enabled is true but OpenTelemetry is not usable (%s); install "
                "'opentelemetry-sdk' (and 'opentelemetry-exporter-otlp-proto-http' for "
                "exporter: otlp) for spans. Continuing with traceparent propagation only.",
                exc,
            )

    def _setup(self, config: TracingConfig) -> None:
        # import_module: the SDK is optional (and untyped for mypy when absent).
        resources = import_module("opentelemetry.sdk.resources")
        sdk_trace = import_module("opentelemetry.sdk.trace")
        export = import_module("opentelemetry.sdk.trace.export")
        exporter: Any
        if config.exporter == "otlp":
            otlp = import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
            exporter = (otlp.OTLPSpanExporter(endpoint=config.endpoint) if config.endpoint
                        else otlp.OTLPSpanExporter())
        else:
            exporter = export.ConsoleSpanExporter()
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        Resource, TracerProvider = resources.Resource, sdk_trace.TracerProvider
        BatchSpanProcessor = export.BatchSpanProcessor
        provider = TracerProvider(resource=Resource.create({"service.name":
                                                            config.service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self._provider = provider
        self._tracer = provider.get_tracer("continuum")
        self._propagator = TraceContextTextMapPropagator()
        self.spans = True
        log.info("tracing: OpenTelemetry spans exported to %s", config.exporter)

    # -- spans (only called when ``spans``) ----------------------------------------------

    def start_ingress(self, method: str, path: str, traceparent: bytes | None,
                      tracestate: bytes | None) -> Any:
        from opentelemetry.trace import SpanKind

        carrier: dict[str, str] = {}
        if traceparent is not None:
            carrier["traceparent"] = traceparent.decode("latin-1")
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
        parent = self._propagator.extract(carrier)
        return self._tracer.start_span(
            f"{method} {path}", context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )

    def start_child(self, parent: Any, name: str, attributes: dict[str, Any],
                    client: bool = False) -> Any:
        from opentelemetry.trace import SpanKind, set_span_in_context

        return self._tracer.start_span(
            name, context=set_span_in_context(parent),
            kind=SpanKind.CLIENT if client else SpanKind.INTERNAL, attributes=attributes,
        )

    @staticmethod
    def traceparent(span: Any) -> bytes:
        """The ``traceparent`` that makes ``span`` the upstream's parent."""
        return _format(span)

    @staticmethod
    def end(span: Any, status: int | None = None, error: str = "") -> None:
        from opentelemetry.trace import Status, StatusCode

        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error or (status is not None and status >= 500):
            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()

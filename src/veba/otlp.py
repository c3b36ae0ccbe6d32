"""OpenTelemetry export of one span per delivery attempt (`veba serve --otlp-endpoint`).

Imported only with that flag: it needs the ``otel`` extra (opentelemetry-sdk and
the OTLP/HTTP protobuf exporter). Each settled attempt becomes a span named
``deliver <function>`` whose ids are the ones the attempt's ``traceparent`` sent
(`veba.tracing`): the trace id of the event, the attempt's own span id, the
incoming event's span as parent. The attempt is over when it is told of, so the
span is built whole (`ReadableSpan`) and handed to the SDK's batch processor,
which exports from its own thread.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from veba import __version__
from veba.eventlog.base import Delivery
from veba.targets.base import Result
from veba.tracing import EventScope

__all__ = ["SpanExport", "traces_url"]

_SCOPE = InstrumentationScope("veba", __version__)


def traces_url(endpoint: str) -> str:
    """OTLP/HTTP's traces URL: a bare ``http://host:4318`` gets ``/v1/traces``
    (as OTEL_EXPORTER_OTLP_ENDPOINT does); a URL with a path is taken as it is."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--otlp-endpoint {endpoint!r}: expected http(s)://HOST:PORT[/path]")
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class SpanExport:
    """Spans of settled attempts, batched to an OTLP/HTTP collector."""

    def __init__(self, endpoint: str, *, service: str = "veba") -> None:
        self.url = traces_url(endpoint)
        self._resource = Resource.create({"service.name": service})
        self._processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=self.url))

    def attempt(
        self, function: str, outcome: str, result: Result, delivery: Delivery, scope: EventScope
    ) -> None:
        """One settled attempt (outcome: delivered, retried or dead), whose scope
        the dispatcher bound: its trace context and start."""
        trace = scope.trace
        if trace is None:
            return
        event = delivery.event
        now = time.time()
        started = scope.started or result.started or now
        context = SpanContext(
            int(trace.trace_id, 16),
            int(trace.span_id, 16),
            is_remote=False,
            trace_flags=TraceFlags(int(trace.flags, 16)),
        )
        parent = (
            None
            if trace.parent_id is None
            else SpanContext(
                int(trace.trace_id, 16),
                int(trace.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(trace.flags, 16)),
            )
        )
        attributes: dict[str, str | int] = {
            "cloudevents.event_id": event.id,
            "cloudevents.event_source": event.source,
            "cloudevents.event_type": event.type,
            "veba.function": function,
            "veba.delivery_id": delivery.id,
            "veba.attempt": scope.attempt or delivery.attempt,
            "veba.outcome": outcome,
            "veba.result": result.kind,
        }
        if event.subject:
            attributes["cloudevents.event_subject"] = event.subject
        if result.status:
            attributes["http.response.status_code"] = result.status
        status = Status(StatusCode.OK)
        if not result.ok:
            why = (result.error or "").strip().splitlines()
            status = Status(StatusCode.ERROR, why[-1][:200] if why else result.kind)
        span = ReadableSpan(
            name=f"deliver {function}",
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind.PRODUCER,
            status=status,
            start_time=int(started * 1e9),
            end_time=int(max(now, started) * 1e9),
            instrumentation_scope=_SCOPE,
        )
        self._processor.on_end(span)

    def close(self) -> None:
        """Export what is queued, then stop the exporter's thread."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]

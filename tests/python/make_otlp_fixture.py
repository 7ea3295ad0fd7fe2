"""Encodes two traces with the OpenTelemetry Python SDK's own OTLP encoder.

Writes PREFIX.bin (an ExportTraceServiceRequest, exactly as the SDK's OTLP
exporters send it) and PREFIX.json (what a decoder must find in it).
"""
import json
import sys

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags


class Capture(SpanExporter):
    def __init__(self):
        self.spans = []

    def export(self, spans):
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def main(prefix):
    capture = Capture()
    provider = TracerProvider(resource=Resource.create({"service.name": "python-sdk-service"}))
    provider.add_span_processor(SimpleSpanProcessor(capture))
    tracer = provider.get_tracer("fixture-tracer", "1.2.3")

    with tracer.start_as_current_span(
        "POST /checkout", kind=SpanKind.SERVER, attributes={"http.route": "/checkout"}
    ) as root:
        # A link to a span of another trace, as a consumer of a batch links
        # to the producers of its messages.
        producer = SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        link = Link(producer, {"messaging.batch.index": 3, "link.reason": "batch"})
        with tracer.start_as_current_span(
            "SELECT orders", kind=SpanKind.CLIENT, links=[link]
        ) as child:
            child.add_event("exception", {"exception.type": "TimeoutError"})
            child.set_status(Status(StatusCode.ERROR, "db timeout"))
        error_trace = root.get_span_context().trace_id

    with tracer.start_as_current_span("GET /health", kind=SpanKind.SERVER) as ok_root:
        ok_trace = ok_root.get_span_context().trace_id

    provider.shutdown()
    request = encode_spans(capture.spans)
    with open(prefix + ".bin", "wb") as f:
        f.write(request.SerializeToString())
    expected = {
        "service_name": "python-sdk-service",
        "span_count": len(capture.spans),
        "error_trace_id": format(error_trace, "032x"),
        "error_trace_spans": 2,
        "ok_trace_id": format(ok_trace, "032x"),
        "ok_trace_spans": 1,
    }
    with open(prefix + ".json", "w") as f:
        json.dump(expected, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])

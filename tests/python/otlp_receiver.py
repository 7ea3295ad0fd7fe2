"""An OTLP/HTTP trace receiver for the forwarder tests.

Decodes `POST /v1/traces` (protobuf or JSON, gzipped or not) with the
official OpenTelemetry protobuf classes (`opentelemetry-proto`) and appends
one JSON line per span to OUT: ids, resource, scope, attributes, events,
links and status, as decoded. Faults are switched on at run time:

    POST /control {"mode": "ok"}
    POST /control {"mode": "status", "status": 503, "retry_after": "2"}
    POST /control {"mode": "hang"}                  # answers nothing until the mode changes
    POST /control {"mode": "partial", "rejected": 1} # 200 with partial_success
    GET  /stats    -> {"requests": n, "by_status": {...}, "spans": n,
                       "deliveries": [[unix seconds, spans], ...]}

With GRPC_PORT it also serves OTLP/gRPC (`TraceService/Export`) with the
same faults: status 503 answers UNAVAILABLE, 429 RESOURCE_EXHAUSTED with a
RetryInfo of `retry_after` seconds.

With TLS_DIR (ca.pem, server.pem, server.key) both trace ports speak TLS
and ask every client for a certificate signed by ca.pem (mutual TLS); the
control and stats endpoints then move to a plain CONTROL_PORT.

Usage: otlp_receiver.py PORT OUT [GRPC_PORT [TLS_DIR CONTROL_PORT]]
"""

import base64
import gzip
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

LOCK = threading.Lock()
STATE = {"mode": "ok", "status": 200, "retry_after": None, "rejected": 0}
STATS = {"requests": 0, "by_status": {}, "spans": 0, "content_types": {}, "deliveries": []}


ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def hex_ids_to_base64(node):
    """OTLP/JSON writes ids as hex, where protobuf's JSON mapping (and so
    json_format) reads bytes as base64: convert them before parsing."""
    if isinstance(node, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in ID_KEYS and isinstance(v, str) else hex_ids_to_base64(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [hex_ids_to_base64(x) for x in node]
    return node


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def spans_of(req):
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "resource": resource,
                    "scope_name": ss.scope.name,
                    "scope_version": ss.scope.version,
                    "attributes": attrs(s.attributes),
                    "events": [
                        {"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attrs(e.attributes)}
                        for e in s.events
                    ],
                    "links": [
                        {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex(), "attributes": attrs(l.attributes)}
                        for l in s.links
                    ],
                }


def record(req, content_type):
    """Appends the request's spans to OUT and counts them."""
    lines = [json.dumps(s, sort_keys=True) for s in spans_of(req)]
    with LOCK:
        with open(OUT, "a") as f:
            for line in lines:
                f.write(line + "\n")
        STATS["spans"] += len(lines)
        STATS["deliveries"].append([time.time(), len(lines)])
        STATS["content_types"][content_type] = STATS["content_types"].get(content_type, 0) + 1


def current_state():
    """The mode once it is not `hang`: a hung request waits here."""
    with LOCK:
        STATS["requests"] += 1
        state = dict(STATE)
    while state["mode"] == "hang":
        time.sleep(0.2)
        with LOCK:
            state = dict(STATE)
    return state


def serve_grpc(port, tls_dir=None):
    import grpc
    from concurrent import futures
    from google.protobuf import duration_pb2
    from google.protobuf.any_pb2 import Any
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            state = current_state()
            if state["mode"] == "status":
                status = int(state["status"])
                with LOCK:
                    STATS["by_status"][f"grpc_{status}"] = STATS["by_status"].get(f"grpc_{status}", 0) + 1
                if status == 429:
                    info = error_details_pb2.RetryInfo(
                        retry_delay=duration_pb2.Duration(seconds=int(state["retry_after"] or 1))
                    )
                    detail = Any()
                    detail.Pack(info)
                    context.abort_with_status(rpc_status.to_status(status_pb2.Status(
                        code=code_pb2.RESOURCE_EXHAUSTED, message="slow down", details=[detail])))
                context.abort(grpc.StatusCode.UNAVAILABLE, "unavailable")
            record(request, "grpc")
            resp = ExportTraceServiceResponse()
            if state["mode"] == "partial":
                resp.partial_success.rejected_spans = int(state["rejected"])
                resp.partial_success.error_message = "rejected by the test receiver"
            return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    if tls_dir:
        read = lambda name: open(os.path.join(tls_dir, name), "rb").read()
        credentials = grpc.ssl_server_credentials(
            [(read("server.key"), read("server.pem"))],
            root_certificates=read("ca.pem"),
            require_client_auth=True,
        )
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", content_type="application/x-protobuf", headers=()):
        with LOCK:
            STATS["by_status"][str(status)] = STATS["by_status"].get(str(status), 0) + 1
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        return raw

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            self.reply(200, body, "application/json")
        else:
            self.reply(404)

    def do_POST(self):
        if self.path == "/control":
            update = json.loads(self.body())
            with LOCK:
                STATE.update({"status": 200, "retry_after": None, "rejected": 0})
                STATE.update(update)
            self.reply(200, b"{}", "application/json")
            return
        if self.path != "/v1/traces":
            self.reply(404)
            return
        raw = self.body()
        state = current_state()
        if state["mode"] == "status":
            headers = [("Retry-After", state["retry_after"])] if state["retry_after"] else []
            self.reply(int(state["status"]), b"unavailable", "text/plain", headers)
            return
        content_type = self.headers.get("Content-Type", "")
        req = ExportTraceServiceRequest()
        try:
            if "json" in content_type:
                json_format.ParseDict(hex_ids_to_base64(json.loads(raw)), req)
            else:
                req.ParseFromString(raw)
        except Exception as e:  # a body the official classes refuse
            self.reply(400, str(e).encode(), "text/plain")
            return
        key = content_type + ("+gzip" if self.headers.get("Content-Encoding") == "gzip" else "")
        record(req, key)
        resp = ExportTraceServiceResponse()
        if state["mode"] == "partial":
            resp.partial_success.rejected_spans = int(state["rejected"])
            resp.partial_success.error_message = "rejected by the test receiver"
        if "json" in content_type:
            self.reply(200, json_format.MessageToJson(resp).encode(), "application/json")
        else:
            self.reply(200, resp.SerializeToString())


def mutual_tls(tls_dir):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(tls_dir, "server.pem"), os.path.join(tls_dir, "server.key"))
    ctx.load_verify_locations(os.path.join(tls_dir, "ca.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve_http(port):
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


if __name__ == "__main__":
    port, OUT = int(sys.argv[1]), sys.argv[2]
    tls_dir = sys.argv[4] if len(sys.argv) > 5 else None
    grpc_server = serve_grpc(int(sys.argv[3]), tls_dir) if len(sys.argv) > 3 else None
    server = serve_http(port)
    if tls_dir:
        server.socket = mutual_tls(tls_dir).wrap_socket(server.socket, server_side=True)
        control = serve_http(int(sys.argv[5]))
        threading.Thread(target=control.serve_forever, daemon=True).start()
    print(f"listening {port}", flush=True)
    server.serve_forever()

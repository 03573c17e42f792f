"""An OTLP/HTTP trace receiver for the tracing benchmark, in its own process (its CPU is not the
proxy's): it takes ``POST /v1/traces`` as a collector does, decodes each export with the
official protobuf messages to count the spans, and answers ``GET /stats`` with the counts.

    python -m benchmarks.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Sequence

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


def make_app() -> web.Application:
    stats = {"exports": 0, "spans": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        stats["exports"] += 1
        stats["bytes"] += len(body)
        stats["spans"] += sum(
            len(scope.spans) for rs in export.resource_spans for scope in rs.scope_spans
        )
        return web.Response(body=ANSWER, content_type="application/x-protobuf")

    async def read_stats(_: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", read_stats)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.otlp_sink")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

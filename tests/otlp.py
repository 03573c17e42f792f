"""A real OTLP/HTTP trace receiver for the tests, in Looker's neighbourhood: an aiohttp app that
takes ``POST /v1/traces`` as a collector does, decodes each export with the official protobuf
messages (``opentelemetry-proto``), answers an ``ExportTraceServiceResponse``, and keeps every
raw body (to search for secrets byte by byte) and every span, flattened; and the helpers the
tracing tests share."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from harness import Proxy
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pytest_aiohttp import AiohttpServer

KINDS = {
    Span.SPAN_KIND_INTERNAL: "INTERNAL",
    Span.SPAN_KIND_SERVER: "SERVER",
    Span.SPAN_KIND_CLIENT: "CLIENT",
}
STATUS = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it (ids in lower-case hex, '' for no parent)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    status: str
    status_message: str
    trace_state: str
    resource: dict[str, Any]
    scope: str
    start_ns: int
    end_ns: int
    events: int = 0
    links: int = 0

    def named_by(self, traceparent: str) -> bool:
        """Whether a W3C traceparent names this span, sampled (as a recorded span is)."""
        version, trace_id, span_id, flags = traceparent.split("-")
        sampled = int(flags, 16) & 1
        return (version, trace_id, span_id, sampled) == ("00", self.trace_id, self.span_id, 1)


@dataclass
class OtlpReceiver:
    bodies: list[bytes] = field(default_factory=list)
    spans: list[Received] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    base_url: str = ""
    hold: asyncio.Event | None = None
    """While set to an unset event, exports are taken but not answered (a collector that
    does not keep up): the exporter's thread waits."""
    held: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once an export is being held."""
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(f"{request.method} {request.path}")
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.method != "POST" or request.path != "/v1/traces":
            return web.Response(status=404)
        if self.hold is not None and not self.hold.is_set():
            self.held.set()
            await self.hold.wait()
        export = ExportTraceServiceRequest.FromString(body)
        self.bodies.append(body)
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(_received(span, resource, scope_spans.scope.name))
        self._arrived.set()
        self._arrived = asyncio.Event()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(
        self, ready: Callable[[list[Received]], bool], wait_s: float = 15
    ) -> list[Received]:
        """The spans, once ``ready(spans)`` holds (checked at each export received)."""
        async with asyncio.timeout(wait_s):
            while not ready(self.spans):
                await self._arrived.wait()
        return self.spans

    def trace(self, trace_id: str) -> list[Received]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _received(span: Span, resource: dict[str, Any], scope: str) -> Received:
    return Received(
        name=span.name,
        kind=KINDS.get(span.kind, str(span.kind)),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent=span.parent_span_id.hex(),
        attributes=_attributes(span.attributes),
        status=STATUS[span.status.code],
        status_message=span.status.message,
        trace_state=span.trace_state,
        resource=resource,
        scope=scope,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        events=len(span.events),
        links=len(span.links),
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if which is None else getattr(value, which)


# --- for the tests ------------------------------------------------------------------------------

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_PARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


async def serve(aiohttp_server: AiohttpServer) -> OtlpReceiver:
    """A receiver on a real socket (for a test's ``otlp`` fixture)."""
    receiver = OtlpReceiver()
    server = await aiohttp_server(receiver.app)
    receiver.base_url = str(server.make_url("/")).rstrip("/")
    return receiver


def traced(otlp: OtlpReceiver, **settings: Any) -> dict[str, Any]:
    """A ``tracing`` block that exports to the test's receiver."""
    return {"tracing": {"endpoint": otlp.base_url, **settings}}


async def flushed(proxy: Proxy) -> None:
    """Every span the proxy ended so far, exported (the SDK's flush, off the event loop)."""
    tracing = proxy.client.server.app.tracing
    assert tracing is not None
    assert await asyncio.to_thread(tracing.flush)


def one(spans: list[Received], name: str) -> Received:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def headers_named(raw: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode() for k, v in raw if k.lower() == name]


def secrets_of(proxy: Proxy, *more: str) -> list[str]:
    """Everything that must never be in a span: every credential the config resolves, the
    signing key, tokens, and what Authorization values look like."""
    config = proxy.config
    found = [config.token_signing_key.reveal(), "Authorization", "authorization", *more]
    for team in config.teams.values():
        found += [c.client_secret.reveal() for c in team.callers]
        if team.looker_client_secret is not None:
            found.append(team.looker_client_secret.reveal())
    return found


def assert_no_secret(otlp: OtlpReceiver, secrets: list[str]) -> None:
    """No exported byte holds a secret (every body, searched raw: names, attributes, status
    messages, events, resource)."""
    assert otlp.bodies
    for body in otlp.bodies:
        for secret in secrets:
            assert secret.encode() not in body, secret
    for span in otlp.spans:
        assert (span.events, span.links) == (0, 0), span

"""OpenTelemetry tracing, end to end: the proxy exports OTLP/HTTP spans to a real receiver
started by the test (``otlp.OtlpReceiver``, decoding with the official protobuf messages), and
Looker (the header spy, or the emulator) shows the ``traceparent`` it received.

What is checked: the span of each call and its attributes, the child spans of the trip to
Looker and of a pin (login, PATCH, read-back, branch checkout), the parentage from the caller's
``traceparent`` down, the ``traceparent`` Looker got for each call, the caller's trace context
never forwarded as such, sampling, the configuration (YAML block and OTEL_* variables), and
that no span holds a secret. With tracing off: no tracer, no span, nothing exported, no
OpenTelemetry module imported, the caller's trace context passed on unchanged. Each wait is for
spans the receiver got (the proxy flushes its exporter in a thread, or exports on shutdown)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from harness import ENV, Proxy, ProxyProcess, free_port, raw_config, raw_http
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from otlp import OtlpReceiver, Received
from pytest_aiohttp import AiohttpServer
from spy import SpyLooker

from workspace_proxy import spans as spans_module
from workspace_proxy.config import Tracing, parse_config, summary
from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator
from workspace_proxy.errors import ConfigError

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_PARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
ADMIN = next(u for u in DEFAULT_USERS if u.is_admin)


@pytest.fixture
async def otlp(aiohttp_server: AiohttpServer) -> OtlpReceiver:
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


# --- the span model ------------------------------------------------------------------------


async def test_the_callers_trace_is_continued_and_looker_gets_the_proxys_traceparent(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """Caller traceparent -> the call's span -> the pin (login, PATCH) and the trip to Looker;
    Looker gets one traceparent per call, naming the span that made it, never the caller's."""
    proxy = await make_proxy(spy, **traced(otlp))
    token = await proxy.login("analytics")
    trace_headers = {"traceparent": CALLER_PARENT, "tracestate": "rojo=00f067aa0ba902b7"}
    resp = await proxy.call("GET", "/api/4.0/user", token, headers=trace_headers)
    assert resp.status == 200, await resp.text()
    body = await resp.read()
    await flushed(proxy)
    spans = otlp.trace(CALLER_TRACE)

    call = one(spans, "GET user")
    assert (call.kind, call.parent, call.status) == ("SERVER", CALLER_SPAN, "UNSET")
    assert call.attributes == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "workspace_proxy.team": "analytics",
        "workspace_proxy.route": "user",
        "workspace_proxy.bytes_in": 0,
        "workspace_proxy.bytes_out": len(body),
        "workspace_proxy.replayed": False,
        "workspace_proxy.session.generation": 1,
    }
    upstream = one(spans, "looker GET user")
    assert (upstream.kind, upstream.parent) == ("CLIENT", call.span_id)
    assert upstream.attributes["http.response.status_code"] == 200
    assert upstream.attributes["workspace_proxy.session.generation"] == 1
    pin = one(spans, "pin")
    assert (pin.kind, pin.parent) == ("INTERNAL", call.span_id)
    assert pin.attributes == {
        "workspace_proxy.team": "analytics",
        "workspace_proxy.workspace": "dev",
        "workspace_proxy.pin.reason": "login",
        "workspace_proxy.pin.attempt": 1,
        "workspace_proxy.session.generation": 1,
    }
    login = one(spans, "looker POST /login")
    patch = one(spans, "looker PATCH /session")
    assert (login.parent, patch.parent) == (pin.span_id, pin.span_id)
    assert login.start_ns < patch.start_ns
    assert call.start_ns <= pin.start_ns <= upstream.start_ns <= upstream.end_ns <= call.end_ns
    assert {s.name for s in spans} == {
        "GET user",
        "looker GET user",
        "pin",
        "looker POST /login",
        "looker PATCH /session",
    }
    # The caller's tracestate travels in the trace context, as W3C asks.
    assert {s.trace_state for s in spans} == {"rojo=00f067aa0ba902b7"}
    assert {s.resource["service.name"] for s in spans} == {"workspace-proxy"}

    # What Looker received: for each call, exactly one traceparent, naming the span of that call.
    seen = {(method, path): raw for method, path, raw in spy.seen}
    for (method, path), span in [
        (("GET", "/api/4.0/user"), upstream),
        (("POST", "/api/4.0/login"), login),
        (("PATCH", "/api/4.0/session"), patch),
    ]:
        (sent,) = headers_named(seen[(method, path)], b"traceparent")
        assert span.named_by(sent), (method, path, sent)
        assert headers_named(seen[(method, path)], b"tracestate") == ["rojo=00f067aa0ba902b7"]
    assert_no_secret(otlp, [*secrets_of(proxy, token, "spy-looker-token"), "token "])


async def test_a_pin_that_fails_shows_its_read_back_and_the_logout(
    looker: LookerEmulator, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """A PATCH that lands in the wrong workspace: the pin span has the login, the PATCH, the
    read-back (GET /session) and the logout of the failed session as children, and is an error
    named by its kind; the call is a 503 and an error too."""
    looker.faults.patch_session_wrong_workspace = "production"
    once = {"interval_s": 5, "deadline_s": 0}  # exactly one attempt for the call
    proxy = await make_proxy(
        looker, looker={"base_url": looker.base_url, "retry": once}, **traced(otlp)
    )
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/user", token, headers={"traceparent": CALLER_PARENT})
    assert resp.status == 503, await resp.text()
    await flushed(proxy)
    spans = otlp.trace(CALLER_TRACE)

    call = one(spans, "GET user")
    assert (call.status, call.status_message) == ("ERROR", "wrong_workspace")
    assert call.attributes["http.response.status_code"] == 503
    assert call.attributes["workspace_proxy.outcome"] == "wrong_workspace"
    assert "workspace_proxy.session.generation" not in call.attributes
    pin = one(spans, "pin")
    assert (pin.parent, pin.status, pin.status_message) == (
        call.span_id,
        "ERROR",
        "wrong_workspace",
    )
    assert "workspace_proxy.session.generation" not in pin.attributes
    children = [s.name for s in sorted(spans, key=lambda s: s.start_ns) if s.parent == pin.span_id]
    assert children == [
        "looker POST /login",
        "looker PATCH /session",
        "looker GET /session",
        "looker DELETE /logout",
    ]
    assert not [s for s in spans if s.name.startswith("looker GET user")]  # nothing forwarded


async def test_a_pinned_branch_is_a_child_of_the_pin(
    looker: LookerEmulator, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """A dev team that pins a branch: login, PATCH, then the checkout, under the pin span."""
    looker.git.create(ADMIN, "sales", "feature-x", None)
    branch = {"git_branch": {"project": "sales", "name": "feature-x"}}
    proxy = await make_proxy(looker, team_settings={"analytics": branch}, **traced(otlp))
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/user", token, headers={"traceparent": CALLER_PARENT})
    assert resp.status == 200, await resp.text()
    await flushed(proxy)
    spans = otlp.trace(CALLER_TRACE)
    pin = one(spans, "pin")
    children = [s for s in sorted(spans, key=lambda s: s.start_ns) if s.parent == pin.span_id]
    assert [(s.name, s.attributes.get("http.response.status_code")) for s in children] == [
        ("looker POST /login", 200),
        ("looker PATCH /session", 200),
        ("looker PUT git_branch", 200),
    ]
    assert pin.status == "UNSET"


async def test_a_replay_after_a_401_is_two_trips_and_a_repin(
    looker: LookerEmulator, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """Looker drops the session: the trip that got the 401 (an error), the re-pin (reason
    reauth) and the replayed trip are children of the one call span, marked replayed."""
    proxy = await make_proxy(looker, **traced(otlp))
    token = await proxy.login("analytics")
    assert (await proxy.call("GET", "/api/4.0/user", token)).status == 200
    looker.revoke_all_tokens()
    resp = await proxy.call("GET", "/api/4.0/user", token, headers={"traceparent": CALLER_PARENT})
    assert resp.status == 200, await resp.text()
    await flushed(proxy)
    spans = otlp.trace(CALLER_TRACE)

    call = one(spans, "GET user")
    assert call.attributes["workspace_proxy.replayed"] is True
    assert call.attributes["workspace_proxy.session.generation"] == 2
    trips = sorted((s for s in spans if s.name == "looker GET user"), key=lambda s: s.start_ns)
    assert [
        (
            t.parent,
            t.attributes["http.response.status_code"],
            t.status,
            t.attributes["workspace_proxy.replayed"],
        )
        for t in trips
    ] == [(call.span_id, 401, "ERROR", False), (call.span_id, 200, "UNSET", True)]
    assert [t.attributes["workspace_proxy.session.generation"] for t in trips] == [1, 2]
    pin = one(spans, "pin")
    assert (pin.parent, pin.attributes["workspace_proxy.pin.reason"]) == (call.span_id, "reauth")
    assert trips[0].end_ns <= pin.start_ns <= pin.end_ns <= trips[1].start_ns


# --- the caller's trace context --------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "continued"),
    [
        ([("traceparent", CALLER_PARENT)], True),
        ([("TraceParent", CALLER_PARENT), ("TRACESTATE", "rojo=1")], True),
        ([("traceparent", CALLER_PARENT), ("traceparent", CALLER_PARENT)], False),
        ([("traceparent", CALLER_PARENT.upper())], False),
        ([("traceparent", "00-" + "0" * 32 + "-00f067aa0ba902b7-01")], False),
        ([("traceparent", "not a trace"), ("tracestate", "rojo=1")], False),
    ],
    ids=["plain", "any-case", "twice", "upper-hex", "zero-trace", "garbage"],
)
async def test_looker_gets_one_traceparent_whatever_the_caller_sent(
    spy: SpyLooker,
    make_proxy: MakeProxy,
    otlp: OtlpReceiver,
    lines: list[tuple[str, str]],
    continued: bool,
) -> None:
    """A valid caller traceparent (any case of the name) is continued; several, or one W3C
    does not allow, start a new trace. Either way Looker gets exactly one traceparent, the
    proxy's, and no trace context line of the caller's. (Sent as raw bytes: every line as
    written.)"""
    proxy = await make_proxy(spy, **traced(otlp))
    token = await proxy.login("analytics")
    head = ["GET /api/4.0/user HTTP/1.1", "Host: x", f"Authorization: token {token}"]
    head += [f"{name}: {value}" for name, value in lines]
    request = "\r\n".join([*head, "Connection: close", "", ""]).encode()
    status, answer = await raw_http(proxy.base_url, request)
    assert status == 200, answer
    await flushed(proxy)
    call = one(otlp.spans, "GET user")
    upstream = one(otlp.spans, "looker GET user")
    assert (call.trace_id == CALLER_TRACE) is continued
    assert call.parent == (CALLER_SPAN if continued else "")
    raw = next(raw for method, path, raw in spy.seen if path == "/api/4.0/user")
    sent = [(k.decode(), v.decode()) for k, v in raw if k.lower().startswith(b"trace")]
    assert [name for name, _ in sent] == ["traceparent"] + (
        ["tracestate"] if continued and len(lines) == 2 else []
    )
    assert upstream.named_by(sent[0][1])
    if len(sent) == 2:
        assert sent[1][1] == "rojo=1"


async def test_sampling_follows_the_ratio_and_the_callers_decision(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """At ratio 0 a call that starts its trace is not recorded (Looker still learns that, with
    flags 00); a caller's sampled traceparent is followed (recorded), an unsampled one too (not
    recorded)."""
    proxy = await make_proxy(spy, **traced(otlp, sampling_ratio=0))
    token = await proxy.login("analytics")
    unsampled_parent = f"00-{'1' * 32}-{CALLER_SPAN}-00"
    for headers in ({}, {"traceparent": unsampled_parent}, {"traceparent": CALLER_PARENT}):
        assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await flushed(proxy)
    assert {s.trace_id for s in otlp.spans} == {CALLER_TRACE}
    forwarded = [raw for method, path, raw in spy.seen if path == "/api/4.0/user"]
    sent = [headers_named(raw, b"traceparent") for raw in forwarded]
    assert [len(s) for s in sent] == [1, 1, 1]
    own, theirs, sampled = (s[0].split("-") for s in sent)
    assert own[1] not in (CALLER_TRACE, "1" * 32)
    assert int(own[3], 16) & 1 == 0  # not sampled: Looker need not record it either
    assert (theirs[1], int(theirs[3], 16) & 1) == ("1" * 32, 0)
    assert one(otlp.spans, "looker GET user").named_by("-".join(sampled))


async def test_the_callers_trace_context_does_not_defeat_the_decision_memo(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """Calls that differ only in their trace context are decided once (the forward Looker
    gets does not depend on it while the proxy traces)."""
    proxy = await make_proxy(spy, **traced(otlp))
    token = await proxy.login("analytics")
    for i in range(3):
        parent = f"00-{CALLER_TRACE}-{i + 1:016x}-01"
        assert (
            await proxy.call("GET", "/api/4.0/user", token, headers={"traceparent": parent})
        ).status == 200
    policy = proxy.client.server.app.view.policy
    assert policy.tracing
    assert len(policy.memo) == 1
    await flushed(proxy)
    parents = {s.parent for s in otlp.spans if s.name == "GET user"}
    assert parents == {f"{i + 1:016x}" for i in range(3)}


# --- turning it on and off --------------------------------------------------------------------


def tracing_of(block: object = None, **env: str) -> Tracing | None:
    raw = raw_config("http://127.0.0.1:19999")
    if block is not None:
        raw["tracing"] = block
    return parse_config(raw, env={**ENV, **env}).tracing


def test_tracing_is_off_unless_asked_for() -> None:
    """No block and no endpoint variable: off, whatever the other OTEL_* variables say (they
    are not even checked then)."""
    assert tracing_of() is None
    assert tracing_of(OTEL_TRACES_SAMPLER="xray", OTEL_SERVICE_NAME="x") is None
    assert tracing_of(OTEL_EXPORTER_OTLP_ENDPOINT="") is None  # empty is unset


def test_the_block_and_the_variables_turn_it_on_and_the_variables_win() -> None:
    """`tracing: {}` takes the defaults (OpenTelemetry's: localhost:4318, every trace, parent-
    based); an endpoint variable turns tracing on alone; each variable overrides its key."""
    assert tracing_of({}) == Tracing(traces_url="http://localhost:4318/v1/traces")
    assert tracing_of(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318/otlp/") == Tracing(
        endpoint="http://c:4318/otlp/", traces_url="http://c:4318/otlp/v1/traces"
    )
    full = "https://collector.example.com/custom/traces"
    assert tracing_of(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=full) == Tracing(traces_url=full)
    block = {"endpoint": "http://a:4318", "sampling_ratio": 0.5, "service_name": "bi-proxy"}
    assert tracing_of(block) == Tracing(
        endpoint="http://a:4318",
        sampling_ratio=0.5,
        service_name="bi-proxy",
        traces_url="http://a:4318/v1/traces",
    )
    assert tracing_of(
        block,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://b:4318",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.01",
        OTEL_SERVICE_NAME="from-env",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_EXPORTER="otlp",
    ) == Tracing(
        endpoint="http://b:4318",
        sampling_ratio=0.01,
        service_name="from-env",
        traces_url="http://b:4318/v1/traces",
        sampler="traceidratio",
    )
    # The argument of a sampler without a ratio is ignored, as OpenTelemetry's SDKs do.
    on = tracing_of(block, OTEL_TRACES_SAMPLER="always_on", OTEL_TRACES_SAMPLER_ARG="x")
    assert on is not None
    assert (on.sampler, on.sampling_ratio) == ("always_on", 0.5)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_the_standard_switches_turn_it_off_whatever_else_says(env: dict[str, str]) -> None:
    """OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: off, block and endpoint or not."""
    assert tracing_of({}, OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318", **env) is None


def test_every_tracing_problem_is_reported_at_once() -> None:
    """The block's mistakes and the variables' are all reported, each by its name."""
    block = {"endpoint": "grpc://c:4317", "sampling_ratio": 1.5, "service_name": " ", "x": 1}
    with pytest.raises(ConfigError) as info:
        tracing_of(
            block,
            OTEL_TRACES_EXPORTER="zipkin",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/json",
            OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c:99999/v1/traces",
            OTEL_TRACES_SAMPLER="xray",
        )
    assert info.value.problems == [
        "tracing.x: unknown key (allowed: endpoint, sampling_ratio, service_name)",
        "tracing.endpoint: must be an http(s) URL with a host, and no query or fragment",
        "tracing.sampling_ratio: must be at most 1",
        "tracing.service_name: must be a non-empty string",
        "OTEL_TRACES_EXPORTER: must be otlp or none, got 'zipkin'",
        "OTEL_EXPORTER_OTLP_PROTOCOL: must be http/protobuf (the proxy's exporter), got 'grpc'",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: must be http/protobuf (the proxy's exporter), got "
        "'http/json'",
        "OTEL_EXPORTER_OTLP_ENDPOINT: must be an http(s) URL with a host, and no query or fragment",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: has an invalid port: 'http://c:99999/v1/traces'",
        "OTEL_TRACES_SAMPLER: must be one of parentbased_traceidratio, parentbased_always_on, "
        "parentbased_always_off, traceidratio, always_on, always_off",
    ]
    for arg in ("1.5", "-0.1", "nan", "one"):
        with pytest.raises(ConfigError) as info:
            tracing_of({}, OTEL_TRACES_SAMPLER_ARG=arg)
        assert info.value.problems == ["OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1"]


def test_check_config_names_the_tracing_it_will_do() -> None:
    """check-config's summary says where spans go, how they are sampled and under what name."""
    raw = raw_config("http://127.0.0.1:19999", tracing={"sampling_ratio": 0.01})
    text = summary(parse_config(raw, env={**ENV, "OTEL_SERVICE_NAME": "bi"}))
    assert (
        "  tracing: OTLP/HTTP to http://localhost:4318/v1/traces, sampler "
        "parentbased_traceidratio (ratio 0.01), service bi"
    ) in text.splitlines()
    assert "tracing" not in summary(parse_config(raw_config("http://127.0.0.1:19999"), env=ENV))


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, True),
        ({"OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
    ],
    ids=["endpoint", "sdk-disabled", "exporter-none"],
)
async def test_an_endpoint_variable_alone_turns_it_on_and_the_switches_off(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver, env: dict[str, str], on: bool
) -> None:
    """The environment alone: spans reach the receiver it names, or, switched off, there is no
    tracer at all, Looker gets the caller's trace context exactly as sent, and nothing is ever
    exported (not even when the proxy stops)."""
    variables = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.base_url, **env}
    proxy = await make_proxy(spy, env_overrides=variables)
    app = proxy.client.server.app
    assert (app.tracing is not None) is on
    assert app.view.policy.tracing is on
    token = await proxy.login("analytics")
    headers = {"traceparent": CALLER_PARENT, "tracestate": "rojo=1"}
    assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await proxy.client.close()  # stops the app: a tracer exports what it still holds
    raw = next(raw for method, path, raw in spy.seen if path == "/api/4.0/user")
    sent = [(k, v) for k, v in raw if k.lower().startswith(b"trace")]
    if on:
        assert {s.name for s in otlp.trace(CALLER_TRACE)} >= {"GET user", "looker GET user"}
        assert sent[0][1] != CALLER_PARENT.encode()
    else:
        assert (otlp.paths, otlp.spans) == ([], [])
        assert sent == [(b"traceparent", CALLER_PARENT.encode()), (b"tracestate", b"rojo=1")]


REPORT_MODULES = """\
import atexit, sys

def report():
    count = sum(name.startswith("opentelemetry") for name in sys.modules)
    print("otel-modules:", count, flush=True)

atexit.register(report)
"""
"""A ``sitecustomize`` for ``serve``: at exit, how many OpenTelemetry modules were imported."""


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
async def test_serve_imports_no_opentelemetry_while_tracing_is_off(
    looker: LookerEmulator, otlp: OtlpReceiver, tmp_path: Path, on: bool
) -> None:
    """`workspace-proxy serve` as a process: with tracing off, calls are served and not one
    OpenTelemetry module is imported by exit (so no provider, no tracer, no exporter thread);
    with tracing on, the spans reach the receiver when the proxy stops."""
    (tmp_path / "sitecustomize.py").write_text(REPORT_MODULES, encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
    if on:
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{otlp.base_url}/v1/traces"
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0, "grace_s": 5})
    proxy = await ProxyProcess.start(raw, tmp_path, env=env)
    try:
        async with aiohttp.ClientSession() as http:
            form = {
                "client_id": "analytics-caller",
                "client_secret": ENV["ANALYTICS_CALLER_SECRET"],
            }
            async with http.post(f"{proxy.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}", "traceparent": CALLER_PARENT}
            async with http.get(f"{proxy.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200
        assert await proxy.stop() == 0, "\n".join(proxy.lines)
    finally:
        await proxy.kill()
    (report,) = [line for line in proxy.lines if line.startswith("otel-modules:")]
    imported = int(report.split()[1])
    if on:
        assert imported > 0
        assert {s.name for s in otlp.trace(CALLER_TRACE)} >= {"GET user", "looker GET user", "pin"}
    else:
        assert imported == 0, report
        assert (otlp.paths, otlp.spans) == ([], [])


@pytest.mark.parametrize("state", ["", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"])
@pytest.mark.parametrize("flags", [0, 1, 3])
def test_the_lines_looker_gets_are_what_the_w3c_propagator_writes(state: str, flags: int) -> None:
    """The hot path writes traceparent and tracestate itself: byte for byte what
    OpenTelemetry's W3C propagator injects for the same span context."""
    context = SpanContext(
        trace_id=int(CALLER_TRACE, 16),
        span_id=int(CALLER_SPAN, 16),
        is_remote=False,
        trace_flags=TraceFlags(flags),
        trace_state=TraceState.from_header([state]) if state else None,
    )
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(
        carrier, context=trace.set_span_in_context(NonRecordingSpan(context))
    )
    assert carrier.keys() == ({"traceparent", "tracestate"} if state else {"traceparent"})
    expected = "".join(f"{name}: {value}\r\n" for name, value in carrier.items())
    assert spans_module._lines(context) == expected.encode()


# --- the README's snippets ----------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
README_COLLECTOR = "http://127.0.0.1:4318"


def readme_blocks(language: str) -> list[str]:
    """The ```language blocks of the README's Tracing section."""
    text = README.read_text(encoding="utf-8")
    heading = "### Tracing (OpenTelemetry)\n"
    assert heading in text, "README.md no longer has its Tracing section"
    section = re.split(r"^#{2,3} ", text[text.index(heading) + len(heading) :], flags=re.M)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


async def test_readme_tracing_block_is_valid_and_traces(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """README 'Tracing': the `tracing` block is a valid section (the values its comments give),
    and a proxy configured with it (the collector's address aside) exports the calls' spans."""
    (block,) = readme_blocks("yaml")
    settings = yaml.safe_load(block)["tracing"]
    assert tracing_of(settings) == Tracing(
        endpoint=README_COLLECTOR,
        sampling_ratio=0.01,
        service_name="workspace-proxy",
        traces_url=f"{README_COLLECTOR}/v1/traces",
    )
    proxy = await make_proxy(spy, tracing={**settings, "endpoint": otlp.base_url})
    token = await proxy.login("analytics")
    headers = {"traceparent": CALLER_PARENT}  # at 1 %, the caller's decision makes it recorded
    assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await flushed(proxy)
    call = one(otlp.trace(CALLER_TRACE), "GET user")
    assert (call.parent, call.resource["service.name"]) == (CALLER_SPAN, "workspace-proxy")


async def test_readme_tracing_variables_run_as_written(
    spy: SpyLooker, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    """README 'Tracing': the shell snippet, run by bash as written (the collector's address and
    the config file aside), serves with tracing on: the spans reach the collector under the
    service name it sets, the caller's trace continued, by the time the proxy has stopped."""
    (block,) = readme_blocks("sh")
    assert README_COLLECTOR in block
    assert "config/example.yaml" in block
    port, admin = free_port(), free_port()
    config = raw_config(
        spy.base_url,
        listen={"host": "127.0.0.1", "port": port},
        admin={"host": "127.0.0.1", "port": admin},
        shutdown={"drain_s": 0, "grace_s": 5},
    )
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    script = block.replace(README_COLLECTOR, otlp.base_url).replace(
        "config/example.yaml", str(path)
    )
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to run the README's shell snippets"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    bin_dir = str(Path(sys.executable).parent)
    proc = await asyncio.create_subprocess_exec(
        bash, "-e", "-c", script,
        env={**clean, **ENV, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any('"listening"' in line for line in lines):
                raw = await proc.stdout.readline()
                assert raw, "\n".join(lines)
                lines.append(raw.decode())
        proxy = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            form = {
                "client_id": "analytics-caller",
                "client_secret": ENV["ANALYTICS_CALLER_SECRET"],
            }
            async with http.post(f"{proxy}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}", "traceparent": CALLER_PARENT}
            async with http.get(f"{proxy}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200
        os.killpg(proc.pid, signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    output = "".join(lines) + rest.decode()
    assert '"stopped"' in output, output
    call = one(otlp.trace(CALLER_TRACE), "GET user")
    assert call.parent == CALLER_SPAN
    assert call.resource["service.name"] == "workspace-proxy-bi"


async def test_a_collector_that_does_not_keep_up_costs_spans_not_calls_or_log_lines(
    looker: LookerEmulator, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    """`serve` with a small span queue and a collector that holds the first export: calls are
    served as usual, the spans that do not fit are dropped, and the SDK's warning about it is
    logged once, not once per span (a log line per dropped span would flood stdout when a
    collector goes down at full load; the SDK limits it itself)."""
    otlp.hold = asyncio.Event()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.base_url,
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
    }
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0, "grace_s": 5})
    proxy = await ProxyProcess.start(raw, tmp_path, env=env)
    try:
        async with aiohttp.ClientSession() as http:
            form = {
                "client_id": "analytics-caller",
                "client_secret": ENV["ANALYTICS_CALLER_SECRET"],
            }
            async with http.post(f"{proxy.url}/api/4.0/login", data=form) as resp:
                headers = {"Authorization": f"token {(await resp.json())['access_token']}"}
            async with http.get(f"{proxy.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200
            await otlp.held.wait()  # the exporter's thread is stuck: the queue fills up
            for _ in range(40):
                async with http.get(f"{proxy.url}/api/4.0/user", headers=headers) as resp:
                    assert resp.status == 200
        otlp.hold.set()
        assert await proxy.stop() == 0, "\n".join(proxy.lines)
    finally:
        otlp.hold.set()
        await proxy.kill()
    dropped = [line for line in proxy.lines if re.search(r"Queue (is )?full", line)]
    assert len(dropped) == 1, "\n".join(dropped)
    assert len(otlp.spans) < 40


async def test_a_reload_keeps_the_tracing_the_proxy_started_with(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """Tracing is set up at start: a reload without the block says it needs a restart, and
    calls go on being traced (and Looker on getting the proxy's traceparent)."""
    proxy = await make_proxy(spy, **traced(otlp))
    app = proxy.client.server.app
    with structlog.testing.capture_logs() as events:
        await app.reload(parse_config(raw_config(spy.base_url), env=ENV))
    assert "tracing_change_needs_restart" in [e["event"] for e in events]
    assert app.tracing is not None
    assert app.view.policy.tracing
    token = await proxy.login("analytics")
    headers = {"traceparent": CALLER_PARENT}
    assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await flushed(proxy)
    upstream = one(otlp.trace(CALLER_TRACE), "looker GET user")
    raw = next(raw for method, path, raw in spy.seen if path == "/api/4.0/user")
    (sent,) = headers_named(raw, b"traceparent")
    assert upstream.named_by(sent)


async def test_passthrough_calls_are_traced_without_their_tokens_or_credentials(
    looker: LookerEmulator, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """A passthrough caller logs in with its Looker credentials (its session pinned, answered
    with a sealed token), then calls with that sealed token and with a raw Looker token of its
    own (identified and pinned on first sight): each call is traced, its Looker calls are its
    children, and no span holds the credentials, the sealed token or either Looker token."""
    bi = {"mode": "passthrough", "workspace": "dev", "looker_client_ids": ["marketing-client-id"]}
    proxy = await make_proxy(looker, teams=("analytics",), team_settings={"bi": bi}, **traced(otlp))
    form = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}
    resp = await proxy.client.post(
        "/api/4.0/login", data=form, headers={"traceparent": CALLER_PARENT}
    )
    assert resp.status == 200, await resp.text()
    sealed = (await resp.json())["access_token"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{looker.base_url}/api/4.0/login", data=form) as direct,
    ):
        raw_token = (await direct.json())["access_token"]
    for token in (sealed, raw_token):
        resp = await proxy.call(
            "GET", "/api/4.0/user", token, headers={"traceparent": CALLER_PARENT}
        )
        assert resp.status == 200, await resp.text()
    await flushed(proxy)
    spans = otlp.trace(CALLER_TRACE)
    login = one(spans, "POST login")
    assert login.attributes["workspace_proxy.team"] == "bi"
    children = {s.name for s in spans if s.parent == login.span_id}
    assert children == {"looker POST /login", "looker PATCH /session"}
    calls = [s for s in spans if s.name == "GET user"]
    assert [c.attributes["workspace_proxy.team"] for c in calls] == ["bi", "bi"]
    first_sight = {s.name for s in spans if s.parent == calls[1].span_id}
    assert {"looker GET /user", "looker GET user"} <= first_sight
    looker_tokens = list(looker.issued_tokens())
    assert len(looker_tokens) >= 2
    secrets = [*secrets_of(proxy, sealed, raw_token, *looker_tokens), form["client_secret"]]
    assert_no_secret(otlp, [*secrets, "wp2.", "token "])

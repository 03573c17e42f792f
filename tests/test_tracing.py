"""OpenTelemetry tracing, end to end: the proxy exports OTLP/HTTP spans to a real receiver
started by the test (``otlp.OtlpReceiver``, decoding with the official protobuf messages), and
Looker (the header spy, or the emulator) shows the ``traceparent`` it received.

Here: the span of each call and its attributes, the child spans of the trip to Looker and of a
pin (login, PATCH, read-back, branch checkout, the logout of a failed one), the parentage from
the caller's ``traceparent`` down, the ``traceparent`` Looker got for each call, the caller's
trace context never forwarded as such, sampling, and that no span holds a secret (managed and
passthrough callers). Turning it on and off: ``test_tracing_setup.py``. Each wait is for spans
the receiver got (the proxy's exporter flushed in a thread)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from harness import Proxy, access_lines, raw_http
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from otlp import (
    CALLER_PARENT,
    CALLER_SPAN,
    CALLER_TRACE,
    OtlpReceiver,
    assert_no_secret,
    flushed,
    headers_named,
    one,
    secrets_of,
    serve,
    traced,
)
from pytest_aiohttp import AiohttpServer
from spy import SpyLooker

from workspace_proxy import spans as spans_module
from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]
ADMIN = next(u for u in DEFAULT_USERS if u.is_admin)


@pytest.fixture
async def otlp(aiohttp_server: AiohttpServer) -> OtlpReceiver:
    return await serve(aiohttp_server)


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


async def test_each_access_line_names_its_trace_sampled_or_not(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """Logs meet traces: while tracing is on, each access line carries its call's trace id (the
    caller's when it sent one, the one the proxy started otherwise), recorded or not; the id of
    a recorded call is the one its exported span has. Tracing off: no such key (the other
    tests' lines)."""
    proxy = await make_proxy(spy, **traced(otlp, sampling_ratio=0))
    token = await proxy.login("analytics")
    unsampled_parent = f"00-{'1' * 32}-{CALLER_SPAN}-00"
    with access_lines() as lines:
        for headers in ({}, {"traceparent": unsampled_parent}, {"traceparent": CALLER_PARENT}):
            assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await flushed(proxy)
    own, theirs, sampled = (line["trace_id"] for line in lines)
    assert (theirs, sampled) == ("1" * 32, CALLER_TRACE)
    assert len(own) == 32
    assert int(own, 16)
    assert own not in (theirs, sampled)
    (sent,) = headers_named(
        next(raw for m, p, raw in spy.seen if p == "/api/4.0/user"), b"traceparent"
    )
    assert sent.split("-")[1] == own, "the id Looker was told is the one logged"
    assert one(otlp.spans, "GET user").trace_id == sampled

    untraced = await make_proxy(spy)
    token = await untraced.login("analytics")
    with access_lines() as lines:
        assert (await untraced.call("GET", "/api/4.0/user", token)).status == 200
    assert len(lines) == 1
    assert "trace_id" not in lines[0]


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

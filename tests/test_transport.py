"""The transport on real sockets (``server``, ``exchange``, ``leg``, ``upstream``): pipelining,
bursts, timeouts, stale pooled connections, early answers and stalled callers, against the
emulator or a small echoing Looker; and the proof of issue 16: the same hostile call, made with
every kind of token and every kind of body, reaches Looker as the very same head."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import pytest
import structlog
from aiohttp import web
from harness import Proxy, ProxyServer, access_lines, assert_every_call_pinned
from pytest_aiohttp import AiohttpServer
from reliability import raw_answers, raw_exchange
from spy import SpyLooker

from workspace_proxy import log
from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]
USER: Final = "/api/4.0/user"


def served(proxy: Proxy) -> ProxyServer:
    server = proxy.client.server
    assert isinstance(server, ProxyServer)
    return server


async def pin(proxy: Proxy, team: str = "analytics") -> None:
    """Pin the team's session with the proxy's own Looker client, without forwarding a call
    (the upstream pool stays empty)."""
    await served(proxy).app.view.sessions[team].get()


class Echo:
    """Looker's login and session, and routes that answer with what they received, always 401,
    or hang up."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/api/4.0/login", self.login)
        self.app.router.add_route("*", "/api/4.0/session", self.session)
        self.app.router.add_route("*", "/api/4.0/echo", self.echo)
        self.app.router.add_get("/api/4.0/always_401", self.always_401)
        self.app.router.add_route("*", "/api/4.0/hang_up", self.hang_up)
        self.hung_up: list[str] = []
        self.base_url = ""
        self.logins = 0
        self.rejected: list[str] = []
        self.connections: list[asyncio.Transport] = []
        """The connection each echo call came on (server side)."""

    async def login(self, _: web.Request) -> web.Response:
        self.logins += 1
        return web.json_response(
            {"access_token": "up-1", "token_type": "Bearer", "expires_in": 600}
        )

    async def hang_up(self, request: web.Request) -> web.Response:
        """Close the connection without answering (as a server closing an idle one does)."""
        self.hung_up.append(request.method)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async def always_401(self, request: web.Request) -> web.Response:
        self.rejected.append(request.headers["Authorization"])
        return web.json_response({"message": "Requires authentication."}, status=401)

    async def session(self, request: web.Request) -> web.Response:
        return web.json_response({"workspace_id": "dev"})

    async def echo(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        self.connections.append(request.transport)
        body = await request.read()
        got = {
            "method": request.method,
            "target": request.raw_path,
            "headers": sorted([k, v] for k, v in request.headers.items()),
            "body": body.decode(),
        }
        return web.json_response(
            got,
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
                "Keep-Alive": "timeout=5",
                "X-Kept": "kept",
                "X-Request-Id": "looker-own-id",
            },
        )


@pytest.fixture
async def echo(aiohttp_server: AiohttpServer) -> Echo:
    upstream = Echo()
    server = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/")).rstrip("/")
    return upstream


HOSTILE_HEADERS: Final = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Host": "evil.example",
    "Forwarded": "for=6.6.6.6",
    "Proxy-Authorization": "Basic c3RvbGVu",
    "X-Authorization": "token stolen",
    "authorization_": "token stolen-2",
    "Connection": "keep-alive, X-Named",
    "X-Named": "hop",
    "Keep-Alive": "timeout=1",
    "TE": "trailers",
    "Cookie": "session=stolen",
    "X-Original-URL": "/api/4.0/login",
    "X-HTTP-Method-Override": "DELETE",
    "X-Workspace-Proxy-Peer": "6.6.6.6 https",
    "X-Request-Id": "caller-id-1",
    "X-Custom": "passed",
    "Content-Type": "application/json",
}


# --- one path for cold and warm calls -------------------------------------------------------------


async def test_calls_before_and_after_the_pin_share_one_session(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """The first call waits for the pin; later ones use the same session; each has one access
    line with its route and team."""
    token = await proxy.login("analytics")
    with access_lines() as lines:
        first = await proxy.get_json(USER, token)
        second = await proxy.get_json(USER, token)
        session = await proxy.get_json("/api/4.0/session", token)
    assert first == second
    assert session["workspace_id"] == "dev"
    assert [(x["route"], x["team"], x["status"]) for x in lines] == [
        ("user", "analytics", 200),
        ("user", "analytics", 200),
        ("session", "analytics", 200),
    ]
    assert lines[0]["session"] is not None
    assert {x["session"] for x in lines} == {lines[0]["session"]}
    assert assert_every_call_pinned(looker) == 3


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_cold_and_warm_calls_reach_looker_identically(
    echo: Echo, make_proxy: MakeProxy, method: str
) -> None:
    """The same hostile call, cold (the session is pinned during it) and warm: Looker receives
    the very same request, and the caller the very same answer (hop-by-hop headers dropped both
    ways, our request id)."""
    proxy = await make_proxy(echo)  # duck-typed: only base_url is read
    token = await proxy.login("analytics")
    body = b'{"fields": ["orders.count"]}' if method == "POST" else None
    answers = []
    for _ in range(2):
        resp = await proxy.call(
            method, "/api/4.0/echo?a=1&b=%2F", token, headers=HOSTILE_HEADERS, data=body
        )
        assert resp.status == 200, await resp.text()
        answers.append((resp, await resp.json()))
    assert echo.logins == 1
    (cold, seen_cold), (warm, seen_warm) = answers
    assert seen_warm == seen_cold
    sent = {k.lower(): v for k, v in seen_warm["headers"]}
    assert sent["authorization"] == "token up-1"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-custom"] == "passed"
    assert sent["x-request-id"] == "caller-id-1"
    names = {k.lower() for k, _ in seen_warm["headers"]}
    for dropped in ("proxy-authorization", "x-authorization", "authorization_", "forwarded"):
        assert dropped not in names
    for dropped in ("x-named", "keep-alive", "te", "cookie", "x-original-url"):
        assert dropped not in names
    assert "x-http-method-override" not in names
    assert seen_warm["target"] == "/api/4.0/echo?a=1&b=%2F"
    assert seen_warm["body"] == (body or b"").decode()
    for resp in (cold, warm):
        assert resp.headers["X-Kept"] == "kept"
        assert "X-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert resp.headers["X-Request-Id"] == "caller-id-1"  # ours, not Looker's


# --- pipelining and bursts ------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Several requests in one write, forwarded and local mixed: one answer each, in order."""
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
    login = b"client_id=finance-caller&client_secret=finance-caller-secret"

    def get(path: str, close: bool = False) -> bytes:
        tail = b"Connection: close\r\n" if close else b""
        return (
            f"GET {path} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n".encode()
            + tail
            + b"\r\n"
        )

    pipelined = (
        get(USER)
        + b"POST /api/4.0/login HTTP/1.1\r\nHost: proxy.test\r\n"
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(login)}\r\n\r\n".encode()
        + login
        + get("/api/4.0/session")
        + get("/api/4.0/lookml_models", close=True)
    )
    answers = await raw_answers(proxy.base_url, pipelined)
    assert [a.status for a in answers] == [200, 200, 200, 200]
    user, issued, session, models = (a.json for a in answers)
    assert isinstance(user, dict)
    assert user["id"] == "2"
    assert isinstance(issued, dict)
    assert "access_token" in issued
    assert isinstance(session, dict)
    assert session["workspace_id"] == "dev"
    assert isinstance(models, list)
    assert assert_every_call_pinned(looker) == 4


async def test_a_cold_burst_is_served_without_refusals(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """300 concurrent first calls: all wait for the one pin (none refused), one login."""
    token = await proxy.login("analytics")
    resp = await asyncio.gather(*(proxy.call("GET", USER, token) for _ in range(300)))
    assert [r.status for r in resp] == [200] * 300
    assert (looker.logins, looker.session_patches) == (1, 1)
    assert assert_every_call_pinned(looker) == 300


async def test_garbage_after_a_pipelined_request_is_answered_after_it(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """A good request, then bytes that do not parse, in one write: the good one is answered
    first, then a Looker-shaped 400, then the connection closes. (BUG: the 400 is never written:
    http1 answers the good request with Connection: close and closes.)"""
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
    good = f"GET {USER} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n\r\n"
    answers = await raw_answers(proxy.base_url, good.encode() + b"NOT HTTP AT ALL\r\n\r\n")
    assert [a.status for a in answers] == [200, 400]
    assert answers[1].looker_shaped
    assert answers[1].headers["Connection"] == "close"


async def test_answers_without_a_body_do_not_stall_the_connection(proxy: Proxy) -> None:
    """Answers to HEAD carry no body: the next request on the same connection is answered at
    once (it used to wait for bytes that never come). (BUG: the proxy's own error answer to a
    HEAD, here the 404 of HEAD /versions, carries its JSON body.)"""
    token = await proxy.login("analytics")
    for path in ("/api/4.0/session", "/api/4.0/user", "/versions"):
        for _ in range(2):
            resp = await asyncio.wait_for(proxy.call("HEAD", path, token), 5)
            assert resp.status in (200, 404)
            assert await resp.read() == b""
    assert (await proxy.call("GET", USER, token)).status == 200


async def test_a_large_answer_streams_intact(looker: LookerEmulator, proxy: Proxy) -> None:
    """A 20 MB CSV (its body bypasses the parser once the head is through) arrives byte for
    byte, and the connection serves the next call."""
    token = await proxy.login("analytics")
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    created = await proxy.call("POST", "/api/4.0/queries", token, json=query)
    qid = (await created.json())["id"]
    size = 20_000_000
    with access_lines() as lines:
        csv = f"/api/4.0/queries/{qid}/run/csv?emulator_bytes={size}"
        resp = await proxy.call("GET", csv, token)
        body = await resp.read()
        after = await proxy.call("GET", USER, token)
    assert resp.status == 200
    assert len(body) == size
    assert after.status == 200
    assert lines[0]["bytes_out"] == size
    assert [x["status"] for x in lines] == [200, 200]


# --- timeouts -------------------------------------------------------------------------------------


async def test_looker_going_quiet_is_a_504(looker: LookerEmulator, make_proxy: MakeProxy) -> None:
    """looker.timeouts.read_s bounds a call's wait for Looker: Looker-shaped 504."""
    proxy = await make_proxy(
        looker,
        looker={
            "base_url": looker.base_url,
            "timeouts": {"connect_s": 2, "read_s": 0.3, "session_s": 5},
        },
    )
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
    looker.faults.latency_s = 1.0
    with access_lines() as lines:
        resp = await proxy.call("GET", USER, token)
        body = await resp.json()
    assert resp.status == 504
    assert set(body) == {"message", "documentation_url"}
    assert [(x["status"], x["outcome"]) for x in lines] == [(504, "upstream_timeout")]
    looker.faults.latency_s = 0.0
    assert (await proxy.call("GET", USER, token)).status == 200


async def test_a_stalled_small_body_is_a_408(looker: LookerEmulator, make_proxy: MakeProxy) -> None:
    """A small body that stops arriving gets 408 after limits.body_idle_timeout_s; nothing is
    forwarded and the team's slot is free again."""
    proxy = await make_proxy(looker, limits={"body_idle_timeout_s": 0.3})
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
    before = len(looker.audit)
    half = (
        f"POST /api/4.0/queries HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n"
        'Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{"model":'
    ).encode()
    answers = await raw_answers(proxy.base_url, half, wait_s=5)
    assert [a.status for a in answers] == [408]
    assert answers[0].looker_shaped
    assert answers[0].headers["Connection"] == "close"
    assert len(looker.audit) == before
    assert (await proxy.call("GET", USER, token)).status == 200


async def test_a_connect_to_looker_that_hangs_is_a_504(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Looker stops accepting (its listen queue full, new connections hang): the call gives up
    after looker.timeouts.connect_s with a Looker-shaped 504."""
    proxy = await make_proxy(
        looker,
        looker={
            "base_url": looker.base_url,
            "timeouts": {"connect_s": 0.5, "read_s": 30, "session_s": 5},
        },
    )
    token = await proxy.login("analytics")
    await pin(proxy)  # no pooled connection to Looker: the call must open one
    port = int(looker.base_url.rsplit(":", 1)[1])
    assert looker.server is not None
    await looker.server.close()  # the emulator stops; a listener that never accepts takes over
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    queued = []
    for _ in range(3):  # fill the accept queue: further SYNs are dropped, connects hang
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        queued.append(s)
    try:
        with access_lines() as lines:
            started = asyncio.get_running_loop().time()
            resp = await proxy.call("GET", USER, token)
            body = await resp.json()
            waited = asyncio.get_running_loop().time() - started
    finally:
        for s in queued:
            s.close()
        listener.close()
    assert resp.status == 504
    assert set(body) == {"message", "documentation_url"}
    assert [(x["status"], x["outcome"]) for x in lines] == [(504, "connect_timeout")]
    assert 0.4 < waited < 3.0


# --- connections to Looker ------------------------------------------------------------------------


async def test_a_pooled_connection_looker_closed_is_replaced(
    echo: Echo, make_proxy: MakeProxy
) -> None:
    """Looker closes idle keep-alive connections: the next call opens a new one and succeeds
    (nothing is reported to the caller)."""
    proxy = await make_proxy(echo)
    token = await proxy.login("analytics")
    with access_lines() as lines:
        for _ in range(3):
            resp = await proxy.call("GET", "/api/4.0/echo", token)
            assert resp.status == 200
            await resp.read()
            for transport in echo.connections:
                transport.close()  # as Looker does with a connection idle too long
    ports = [t.get_extra_info("peername")[1] for t in echo.connections]
    assert len(set(ports)) == 3, "each call came on a new connection"
    assert [(x["status"], x["outcome"]) for x in lines] == [(200, None)] * 3


@pytest.mark.parametrize(("method", "sent"), [("GET", 2), ("DELETE", 2), ("POST", 1), ("PATCH", 1)])
async def test_only_idempotent_calls_are_resent_when_a_kept_alive_connection_dies(
    echo: Echo, make_proxy: MakeProxy, method: str, sent: int
) -> None:
    """Looker drops a reused connection without answering: a GET or DELETE is sent once more on
    a new connection; a POST or PATCH might have been acted on, so it is never sent twice."""
    proxy = await make_proxy(echo)
    token = await proxy.login("analytics")
    for _ in range(2):  # pinned, then a kept-alive connection to Looker is in the pool
        resp = await proxy.call("GET", "/api/4.0/echo", token)
        assert resp.status == 200
        await resp.read()
    resp = await proxy.call(method, "/api/4.0/hang_up", token)
    body = await resp.json()
    assert resp.status == 502
    assert set(body) == {"message", "documentation_url"}
    assert echo.hung_up == [method] * sent


async def test_a_burst_of_new_connections_looks_looker_up_once(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Looker by name: 30 concurrent calls, each on a new connection, cause one DNS lookup (the
    address is kept for 10 s), not one per connection."""
    port = looker.base_url.rsplit(":", 1)[1]
    proxy = await make_proxy(
        looker,
        looker={
            "base_url": f"http://localhost:{port}",
            "timeouts": {"connect_s": 2, "read_s": 30, "session_s": 5},
        },
    )
    token = await proxy.login("analytics")
    await pin(proxy)  # with the proxy's own client (its own lookups); the pool is still cold
    loop = asyncio.get_running_loop()
    lookups: list[object] = []
    real = loop.getaddrinfo

    async def counted(host: object, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return await real(host, *args, **kwargs)  # type: ignore[arg-type]

    loop.getaddrinfo = counted  # type: ignore[method-assign]
    try:
        resp = await asyncio.gather(*(proxy.call("GET", USER, token) for _ in range(30)))
        for r in resp:
            await r.read()
    finally:
        del loop.getaddrinfo
    assert [r.status for r in resp] == [200] * 30
    assert lookups == ["localhost"]


async def test_a_fresh_session_rejected_again_is_a_503(echo: Echo, make_proxy: MakeProxy) -> None:
    """Looker answers 401 even to a freshly pinned session: the call re-pins once, replays once,
    then answers 503 instead of looping."""
    proxy = await make_proxy(echo)
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/echo", token)
    assert resp.status == 200
    await resp.read()
    with access_lines() as lines:
        resp = await proxy.call("GET", "/api/4.0/always_401", token)
        body = await resp.json()
    assert resp.status == 503
    assert "rejected a freshly pinned session" in body["message"]
    assert resp.headers["Retry-After"] == "5"
    assert [(x["outcome"], x["replayed"]) for x in lines] == [("rejected", True)]
    assert echo.logins == 2, "one re-pin, no loop"
    assert len(echo.rejected) == 2, "sent once, replayed once"


# --- callers that send or read slowly -------------------------------------------------------------


async def test_an_early_answer_reaches_a_caller_still_sending_its_body(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A body announced over the limit is refused (413) before it is read; the caller keeps
    sending it and must still read the 413 (the proxy lingers instead of resetting)."""
    proxy = await make_proxy(looker, limits={"max_request_body_bytes": 1_000_000})
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
    size = 8_000_000
    host, port = proxy.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST /api/4.0/queries HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    chunk = b"x" * 65536
    try:
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass  # the proxy stops reading after the lingering time; the answer is already there
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"Connection: close" in answer


async def test_a_caller_that_stops_reading_frees_its_slot(
    looker: LookerEmulator, make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that stops reading a large answer is cut after the idle timeout: the Looker
    connection and the team's concurrency slot it held are free again."""
    proxy = await make_proxy(looker, team_settings={"analytics": {"max_concurrency": 1}})
    server = served(proxy)
    assert server.server is not None
    server.server.keepalive_s = 0.5
    token = await proxy.login("analytics")
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    created = await proxy.call("POST", "/api/4.0/queries", token, json=query)
    csv = f"/api/4.0/queries/{(await created.json())['id']}/run/csv?emulator_bytes=200000000"
    freed = asyncio.Event()
    release = server.app.release_slot

    def released(team: str) -> None:
        release(team)
        freed.set()

    monkeypatch.setattr(server.app, "release_slot", released)
    host, port = proxy.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {csv} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n\r\n".encode()
    )
    await reader.readexactly(1024)  # the answer has started; this caller reads no more
    with access_lines() as lines:
        held = await proxy.call("GET", USER, token)
        await held.read()
        await asyncio.wait_for(freed.wait(), 20)
        after = await proxy.call("GET", USER, token)
        await after.read()
    writer.close()
    assert held.status == 429, "the stalled download holds the team's only slot"
    assert after.status == 200, "the stalled caller's slot was freed"
    assert "caller_gone" in [x["outcome"] for x in lines]


# --- the access log -------------------------------------------------------------------------------


def access_line(rid: str) -> None:
    """One access line, as an exchange writes it."""
    log.access(
        request_id=rid,
        team="analytics",
        method="GET",
        route="user",
        status=200,
        bytes_in=0,
        bytes_out=2,
        duration_ms=0.1,
        session=None,
        replayed=False,
        outcome=None,
    )


async def test_access_lines_are_written_in_batches_at_most_a_moment_late() -> None:
    """With access_batch_s (as `serve` sets it), lines reach the stream together, in one write,
    no later than that; flush() writes what is left at once (shutdown)."""
    loop = asyncio.get_running_loop()
    written = asyncio.Event()
    writes: list[tuple[float, str]] = []

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            writes.append((loop.time(), text))
            written.set()
            return super().write(text)

    stream = Stream()
    log.configure("info", stream=stream, json=True, access_batch_s=0.05)
    try:
        started = loop.time()
        access_line("a1")
        access_line("a2")
        assert writes == []
        await asyncio.wait_for(written.wait(), 5)
        batch_at, batch = writes[0]
        access_line("a3")
        log.access.flush()
        every = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    finally:
        log.access.flush()
        log.access.stream, log.access.batch_s = None, None
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert [json.loads(line)["request_id"] for line in batch.splitlines()] == ["a1", "a2"]
    assert 0.04 <= batch_at - started < 1.0
    assert every == ["a1", "a2", "a3"]
    assert len(writes) == 2


def test_the_written_access_line_is_json_with_the_trace_id_only_while_tracing() -> None:
    """The JSON the stream gets (written by hand for speed) parses, and has ``trace_id`` only
    when the call has one."""
    stream = io.StringIO()
    log.configure("info", stream=stream, json=True)
    try:
        access_line("plain")
        log.access(
            request_id="traced",
            team="analytics",
            method="GET",
            route="user",
            status=200,
            bytes_in=0,
            bytes_out=2,
            duration_ms=0.1,
            session="1:abcd",
            replayed=False,
            outcome=None,
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        )
    finally:
        log.access.stream = None
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    plain, traced = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in plain
    assert traced["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (traced["event"], traced["session"], traced["outcome"]) == ("request", "1:abcd", None)


# --- issue 16's proof: one head for every kind of call --------------------------------------------

SPY_TEAMS: Final = {
    "analytics": {"allow_sudo": True},
    "bi": {"mode": "passthrough", "workspace": "dev", "looker_client_ids": ["bi-client-id"]},
}
REPLAY_BYTES: Final = 4096
BODIES: Final = {
    "none": None,
    "small": b'{"q": "' + b"s" * 100 + b'"}',
    "large": b'{"q": "' + b"L" * (3 * REPLAY_BYTES) + b'"}',
    "chunked": b'{"q": "' + b"c" * 5000 + b'"}',
}
TARGET: Final = b"//api/4.0//%75ser?x=%2F&y=a%20b"
SENT_TARGET: Final = "/api/4.0/user?x=%2F&y=a%20b"
HOSTILE: Final = [
    b"X-Authorization: token stolen-1",
    b"authorization_: token stolen-2",
    b"Authorization_: token stolen-3",
    b"X-Forwarded-Authorization: token stolen-4",
    b"Proxy-Authorization: Basic c3RvbGVu",
    b"Connection: keep-alive, X-Named, x_named_too",
    b"X-Named: hop",
    b"X-Named-Too: hop",
    b"Keep-Alive: timeout=1",
    b"TE: trailers",
    b"Trailer: X-Foo",
    b"Upgrade: h2c",
    b"Proxy-Connection: keep-alive",
    b"X-Forwarded-For: 6.6.6.6",
    b"X_Forwarded_For: 7.7.7.7",
    b"X-Forwarded-Host: evil.example",
    b"X-Forwarded-Proto: gopher",
    b"X-Forwarded-Port: 1",
    b"Forwarded: for=6.6.6.6;proto=http",
    b"X-Real-IP: 6.6.6.6",
    b"True-Client-IP: 6.6.6.6",
    b"CF-Connecting-IP: 6.6.6.6",
    b"X-Client-IP: 6.6.6.6",
    b"Via: 1.1 evil",
    b"Max-Forwards: 0",
    b"X-Original-URL: /api/4.0/login",
    b"X-Rewrite-URL: /api/4.0/login",
    b"X-HTTP-Method-Override: DELETE",
    b"X-Host: evil.example",
    b"Cookie: session=stolen",
    b"Content_Length: 999",
    b"Transfer_Encoding: gzip",
    b"Expect: 100-continue",
]
"""Everything that must stay out of Looker's head (the caller's Authorization too)."""
ORDINARY: Final = [
    (b"X-Custom", b"passed"),
    (b"X-Latin", b"caf\xe9 \xff"),
    (b"Content-Type", b"application/json"),
    (b"Accept", b"application/json"),
]
DIFFERS: Final = frozenset(
    {b"authorization", b"content-length", b"transfer-encoding", b"x-request-id"}
)
"""What legitimately differs from call to call: the session, the framing, the request id."""


def hostile_call(token: str, rid: str, body: bytes | None, *, chunked: bool) -> bytes:
    """The hostile call: every Authorization look-alike, hop-by-hop and Connection-named
    headers, spoofed address and route headers, an encoded route spelling; then the body."""
    lines = [
        b"POST " + TARGET + b" HTTP/1.1",
        b"Host: proxy.test",
        *HOSTILE[:3],
        b"Authorization: token " + token.encode(),
        *HOSTILE[3:],
        b"X-Request-Id: " + rid.encode(),
        *(name + b": " + value for name, value in ORDINARY),
    ]
    if chunked:
        assert body is not None
        lines.append(b"Transfer-Encoding: chunked")
        data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:1000], body[1000:]))
        tail = data + b"0\r\n\r\n"
    elif body is not None:
        lines.append(b"Content-Length: %d" % len(body))
        tail = body
    else:
        tail = b""
    return b"\r\n".join(lines) + b"\r\n\r\n" + tail


async def tokens_of_every_kind(proxy: Proxy, spy: SpyLooker) -> dict[str, str]:
    """A managed team's proxy token, its sudo token, a passthrough caller's sealed token and a
    raw Looker token of a passthrough user (pinned on first sight)."""
    managed = await proxy.login("analytics")
    resp = await proxy.call("POST", "/api/4.0/login/3", managed)
    assert resp.status == 200, await resp.text()
    sudo = (await resp.json())["access_token"]
    form = {"client_id": "bi-client-id", "client_secret": "bi-secret"}
    resp = await proxy.client.post("/api/4.0/login", data=form)
    assert resp.status == 200, await resp.text()
    sealed = (await resp.json())["access_token"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{spy.base_url}/api/4.0/login", data=form) as direct,
    ):
        raw = (await direct.json())["access_token"]
    assert managed.startswith("wp1.")
    assert sudo.startswith("wp1.")
    assert sealed.startswith("wp2.")
    return {"managed": managed, "sudo": sudo, "passthrough-sealed": sealed, "passthrough-raw": raw}


async def test_every_kind_of_call_reaches_looker_with_the_same_head(
    spy: SpyLooker, make_proxy: MakeProxy
) -> None:
    """The same hostile call as every token kind (managed, sudo, passthrough sealed and raw) and
    every body kind (none, small, larger than the replay buffer, chunked), on raw sockets: Looker
    gets the same request line and the same headers each time (but for the session's
    Authorization, the framing and the request id), none of the hostile ones, and the body
    whole; the caller gets 200."""
    proxy = await make_proxy(
        spy,
        teams=("analytics",),
        team_settings=SPY_TEAMS,
        limits={"replay_buffer_bytes": REPLAY_BYTES},
    )
    tokens = await tokens_of_every_kind(proxy, spy)
    spy_host = spy.base_url.removeprefix("http://").encode()
    expected = [
        (b"Host", spy_host),
        *ORDINARY,
        (b"X-Forwarded-For", b"127.0.0.1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"proxy.test"),
    ]
    differences: dict[str, str] = {}
    sessions: dict[str, set[bytes]] = {}
    compared: list[str] = []
    for kind, token in tokens.items():
        for body_kind, body in BODIES.items():
            call = f"{kind}/{body_kind}"
            rid = f"hostile-{kind}-{body_kind}"
            request = hostile_call(token, rid, body, chunked=body_kind == "chunked")
            answer = await raw_exchange(proxy.base_url, request)
            if answer.status != 200:
                differences[call] = f"answered {answer.status}: {answer.body[:200]!r}"
                continue
            seen = [
                (i, s) for i, s in enumerate(spy.seen) if (b"X-Request-Id", rid.encode()) in s[2]
            ]
            if len(seen) != 1:
                differences[call] = f"reached Looker {len(seen)} times"
                continue
            index, (method, target, fields) = seen[0]
            auths = [v for n, v in fields if n.lower() == b"authorization"]
            head = [(n, v) for n, v in fields if n.lower() not in DIFFERS]
            got = (method, target, head, len(auths), spy.bodies[index])
            want = (
                "POST",
                SENT_TARGET,
                expected,
                1,
                body or b"",
            )
            if got != want:
                unexpected = [f for f in head if f not in expected]
                missing = [f for f in expected if f not in head]
                differences[call] = (
                    f"line {method} {target}; unexpected {unexpected}; missing {missing}; "
                    f"{len(auths)} Authorization; body intact: {spy.bodies[index] == (body or b'')}"
                )
                continue
            sessions.setdefault(kind, set()).add(auths[0])
            compared.append(call)
    assert differences == {}, "calls that reached Looker differently:\n" + "\n".join(
        f"{call}: {what}" for call, what in differences.items()
    )
    assert len(compared) == len(tokens) * len(BODIES) == 16
    every = {a for auths in sessions.values() for a in auths}
    assert all(len(a) == 1 for a in sessions.values()), "one session per token kind"
    assert len(every) == 4, "each token kind used its own session"
    for auth in every:
        looker_token = auth.removeprefix(b"token ").decode()
        assert looker_token.startswith("spy-looker-token-")
        assert spy.workspace[looker_token] == "dev", "every session was pinned"
    leaked = [
        (kind, f)
        for kind, token in tokens.items()
        for _, _, fields in spy.seen
        for f in fields
        if kind != "passthrough-raw" and token.encode() in f[1]
    ]
    assert leaked == [], "a proxy token reached Looker"

"""The front: plain calls take its fast path once the team's session is pinned, and reach Looker
exactly as calls relayed to the application do; pipelining, bursts, timeouts and stale pooled
connections are handled on that path too."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from aiohttp import web
from harness import Proxy, ProxyServer, access_lines, assert_every_call_pinned
from pytest_aiohttp import AiohttpServer
from reliability import raw_answers

from workspace_proxy import log
from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]
USER = "/api/4.0/user"


async def test_plain_calls_take_the_fast_path_once_the_session_is_pinned(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """The first call waits for the pin in the app; later ones are forwarded by the front."""
    token = await proxy.login("analytics")
    with access_lines() as lines:
        first = await proxy.get_json(USER, token)
        second = await proxy.get_json(USER, token)
        session = await proxy.get_json("/api/4.0/session", token)
    assert first == second
    assert session["workspace_id"] == "dev"
    assert [(x["route"], x["via"]) for x in lines] == [
        ("user", "app"),
        ("user", "front"),
        ("session", "front"),
    ]
    assert lines[1]["team"] == "analytics"
    assert lines[1]["session"] == lines[0]["session"]
    assert assert_every_call_pinned(looker) == 3


class Echo:
    """Looker's login and session, and a route that answers with what it received."""

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


HOSTILE_HEADERS = {
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


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_fast_and_relayed_calls_reach_looker_identically(
    echo: Echo, make_proxy: MakeProxy, method: str
) -> None:
    """The same call, relayed (cold: the app pins first) and fast (warm): Looker receives the very
    same request, and the caller the very same answer (hop-by-hop headers dropped both ways)."""
    proxy = await make_proxy(echo)  # duck-typed: only base_url is read
    token = await proxy.login("analytics")
    body = b'{"fields": ["orders.count"]}' if method == "POST" else None
    answers = []
    with access_lines() as lines:
        for _ in range(2):
            resp = await proxy.call(
                method, "/api/4.0/echo?a=1&b=%2F", token, headers=HOSTILE_HEADERS, data=body
            )
            assert resp.status == 200, await resp.text()
            answers.append((resp, await resp.json()))
    assert [x["via"] for x in lines] == ["app", "front"]
    (relayed, seen_relayed), (fast, seen_fast) = answers
    assert seen_fast == seen_relayed
    sent = {k.lower(): v for k, v in seen_fast["headers"]}
    assert sent["authorization"] == "token up-1"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-custom"] == "passed"
    assert sent["x-request-id"] == "caller-id-1"
    names = {k.lower() for k, _ in seen_fast["headers"]}
    for dropped in ("proxy-authorization", "x-authorization", "authorization_", "forwarded"):
        assert dropped not in names
    for dropped in ("x-named", "keep-alive", "te", "cookie", "x-original-url"):
        assert dropped not in names
    assert "x-http-method-override" not in names
    assert "x-workspace-proxy-peer" not in names
    assert seen_fast["target"] == "/api/4.0/echo?a=1&b=%2F"
    assert seen_fast["body"] == (body or b"").decode()
    for resp in (relayed, fast):
        assert resp.headers["X-Kept"] == "kept"
        assert "X-Hop" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert resp.headers["X-Request-Id"] == "caller-id-1"  # ours, not Looker's


async def test_pipelined_requests_are_answered_in_order(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Several requests in one write, fast and relayed mixed: one answer each, in order."""
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)  # pinned: the GETs below take the fast path
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


async def test_a_cold_burst_is_relayed_without_refusals(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """300 concurrent first calls: all relayed to the app at once (none refused), one login."""
    token = await proxy.login("analytics")
    resp = await asyncio.gather(*(proxy.call("GET", USER, token) for _ in range(300)))
    assert [r.status for r in resp] == [200] * 300
    assert (looker.logins, looker.session_patches) == (1, 1)
    assert assert_every_call_pinned(looker) == 300


async def test_looker_going_quiet_on_the_fast_path_is_a_504(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """looker.timeouts.read_s bounds a fast call's wait for Looker: Looker-shaped 504."""
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
    assert [(x["via"], x["outcome"]) for x in lines] == [("front", "upstream_timeout")]
    looker.faults.latency_s = 0.0
    assert (await proxy.call("GET", USER, token)).status == 200


async def test_a_stalled_small_body_on_the_fast_path_is_a_408(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
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


async def test_a_pooled_connection_looker_closed_is_replaced(
    aiohttp_server: AiohttpServer, make_proxy: MakeProxy
) -> None:
    """Looker closes idle keep-alive connections; the next fast call opens a new one."""
    echo = Echo()
    server = await aiohttp_server(echo.app, keepalive_timeout=0.2)
    echo.base_url = str(server.make_url("/")).rstrip("/")
    proxy = await make_proxy(echo)
    token = await proxy.login("analytics")
    with access_lines() as lines:
        for _ in range(3):
            resp = await proxy.call("GET", "/api/4.0/echo", token)
            assert resp.status == 200
            await resp.read()
            await asyncio.sleep(0.5)  # longer than Looker keeps an idle connection
    assert [x["via"] for x in lines] == ["app", "front", "front"]


async def test_garbage_after_a_pipelined_request_is_answered_after_it(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """A good request, then bytes that do not parse, in one write: the good one is answered
    first, then a Looker-shaped 400, then the connection closes."""
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
    good = f"GET {USER} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n\r\n"
    answers = await raw_answers(proxy.base_url, good.encode() + b"NOT HTTP AT ALL\r\n\r\n")
    assert [a.status for a in answers] == [200, 400]
    assert answers[1].looker_shaped
    assert answers[1].headers["Connection"] == "close"


async def test_answers_without_a_body_do_not_stall_the_connection(proxy: Proxy) -> None:
    """The app's answers to HEAD carry a Content-Length but no body: the next request on the
    same connection is answered at once (it used to wait for bytes that never come)."""
    token = await proxy.login("analytics")
    for path in ("/api/4.0/session", "/api/4.0/user", "/versions"):
        for _ in range(2):
            resp = await asyncio.wait_for(proxy.call("HEAD", path, token), 5)
            assert resp.status in (200, 404)
            assert await resp.read() == b""
    assert (await proxy.call("GET", USER, token)).status == 200


async def test_a_large_answer_streams_through_the_fast_path_intact(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """A 20 MB CSV on the fast path (its body bypasses the parser once the head is through)
    arrives byte for byte, and the connection serves the next call."""
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
    assert [x["via"] for x in lines] == ["front", "front"]
    assert lines[0]["bytes_out"] == size


async def test_an_early_answer_reaches_a_caller_still_sending_its_body(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A body announced over the limit is refused (413) before it is read; the caller keeps
    sending it and must still read the 413 (the front lingers instead of resetting)."""
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
        pass  # the front stops reading after the lingering time; the answer is already there
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"Connection: close" in answer


async def test_a_caller_that_stops_reading_frees_its_slot(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A caller that stops reading a large answer is cut after the idle timeout: the Looker
    connection and the team's concurrency slot it held are free again."""
    proxy = await make_proxy(looker, team_settings={"analytics": {"max_concurrency": 1}})
    server = proxy.client.server
    assert isinstance(server, ProxyServer)
    assert server.site is not None
    assert server.site.front is not None
    server.site.front.keepalive_s = 0.5
    token = await proxy.login("analytics")
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    created = await proxy.call("POST", "/api/4.0/queries", token, json=query)
    csv = f"/api/4.0/queries/{(await created.json())['id']}/run/csv?emulator_bytes=200000000"
    host, port = proxy.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {csv} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n\r\n".encode()
    )
    await reader.readexactly(1024)  # the answer has started; this caller reads no more
    statuses = []
    with access_lines() as lines:
        for _ in range(50):
            resp = await proxy.call("GET", USER, token)
            await resp.read()
            statuses.append(resp.status)
            if resp.status == 200:
                break
            await asyncio.sleep(0.1)
    writer.close()
    assert statuses[0] == 429, "the stalled download holds the team's only slot"
    assert statuses[-1] == 200, "the stalled caller's slot was never freed"
    assert ("front", "caller_stalled") in [(x["via"], x["outcome"]) for x in lines]


async def test_the_app_unreachable_is_a_502_with_an_access_line(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """If the relay to the application fails, the caller gets a Looker-shaped 502 and the
    access log still has the request (the app, which normally logs it, never saw it)."""
    server = proxy.client.server
    assert isinstance(server, ProxyServer)
    assert server.site is not None
    front = server.site.front
    assert front is not None
    socket_path = front.relay.backend.unix
    assert socket_path is not None
    os.unlink(socket_path)  # as if /tmp had been cleaned under the running proxy
    front.relay.close()  # and no kept-alive connection to the app is left
    with access_lines() as lines:
        resp = await proxy.call("GET", USER, "not-a-proxy-token")
        body = await resp.json()
    assert resp.status == 502
    assert set(body) == {"message", "documentation_url"}
    assert resp.headers["X-Request-Id"] == lines[0]["request_id"]
    assert [(x["via"], x["status"], x["outcome"]) for x in lines] == [("front", 502, "connect")]
    assert looker.audit == []


async def test_a_fresh_session_rejected_again_on_the_fast_path_is_a_503(
    echo: Echo, make_proxy: MakeProxy
) -> None:
    """Looker answers 401 even to a freshly pinned session: the fast path re-pins once, replays
    once, then answers 503 (as the app does) instead of looping."""
    proxy = await make_proxy(echo)
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/echo", token)  # pins (relayed)
    assert resp.status == 200
    await resp.read()
    with access_lines() as lines:
        resp = await proxy.call("GET", "/api/4.0/always_401", token)
        body = await resp.json()
    assert resp.status == 503
    assert "rejected a freshly pinned session" in body["message"]
    assert resp.headers["Retry-After"] == "5"
    assert [(x["via"], x["outcome"], x["replayed"]) for x in lines] == [("front", "rejected", True)]
    assert echo.logins == 2, "one re-pin, no loop"
    assert len(echo.rejected) == 2, "sent once, replayed once"


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
    """Looker by name: 30 concurrent fast calls, each on a new connection, cause one DNS lookup
    (the address is kept for 10 s), not one per connection."""
    port = looker.base_url.rsplit(":", 1)[1]
    proxy = await make_proxy(
        looker,
        looker={
            "base_url": f"http://localhost:{port}",
            "timeouts": {"connect_s": 2, "read_s": 30, "session_s": 5},
        },
    )
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)  # pinned by the app (its own client, its own lookups)
    loop = asyncio.get_running_loop()
    lookups: list[object] = []
    real = loop.getaddrinfo

    async def counted(host: object, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return await real(host, *args, **kwargs)  # type: ignore[arg-type]

    loop.getaddrinfo = counted  # type: ignore[method-assign]
    try:
        with access_lines() as lines:
            resp = await asyncio.gather(*(proxy.call("GET", USER, token) for _ in range(30)))
            for r in resp:
                await r.read()
    finally:
        del loop.getaddrinfo
    assert [r.status for r in resp] == [200] * 30
    assert {x["via"] for x in lines} == {"front"}
    assert lookups == ["localhost"]


async def test_a_connect_to_looker_that_hangs_is_a_504(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Looker stops accepting (its listen queue full, new connections hang): the fast path gives
    up after looker.timeouts.connect_s with a Looker-shaped 504."""
    proxy = await make_proxy(
        looker,
        looker={
            "base_url": looker.base_url,
            "timeouts": {"connect_s": 0.5, "read_s": 30, "session_s": 5},
        },
    )
    token = await proxy.login("analytics")
    await proxy.get_json(USER, token)
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
    await asyncio.sleep(0.1)
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
    assert [(x["via"], x["outcome"]) for x in lines] == [("front", "connect")]
    assert 0.4 < waited < 3.0


async def test_access_lines_are_written_in_batches_at_most_a_moment_late() -> None:
    """With access_batch_s (as `serve` sets it), lines reach the stream together, in one write,
    no later than that; flush() writes what is left at once (shutdown)."""
    stream = io.StringIO()
    log.configure("info", stream=stream, json=True, access_batch_s=0.05)
    try:
        log.access(request_id="a1", status=200)
        log.access(request_id="a2", status=200)
        assert stream.getvalue() == ""
        await asyncio.sleep(0.15)
        first = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
        log.access(request_id="a3", status=200)
        log.access.flush()
        every = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    finally:
        log.access.flush()
        log.access.stream, log.access.batch_s = None, None
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    assert first == ["a1", "a2"]
    assert every == ["a1", "a2", "a3"]

"""Forwarding hygiene against a scripted upstream that echoes what it received.

The upstream is a real aiohttp server speaking Looker's login and session API, plus a few
routes that reveal exactly what the proxy sent (headers, path, query, body)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from harness import Proxy, raw_http
from pytest_aiohttp import AiohttpServer
from yarl import URL

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(30)
MakeProxy = Callable[..., Awaitable[Proxy]]


class EchoLooker:
    """Just enough Looker (login, PATCH/GET session) plus revealing routes."""

    def __init__(self) -> None:
        self.logins = 0
        self.workspace: dict[str, str] = {}
        self.app = web.Application()
        self.app.router.add_post("/api/4.0/login", self.login)
        self.app.router.add_route("*", "/api/4.0/session", self.session)
        self.app.router.add_route("*", "/api/4.0/echo", self.echo)
        self.app.router.add_get("/api/4.0/forbidden", self.forbidden)
        self.app.router.add_get("/api/4.0/redirect", self.redirect)
        self.base_url = ""

    async def login(self, request: web.Request) -> web.Response:
        self.logins += 1
        token = f"upstream-token-{self.logins}"
        self.workspace[token] = "production"
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

    def _token(self, request: web.Request) -> str:
        return request.headers.get("Authorization", "").partition(" ")[2]

    async def session(self, request: web.Request) -> web.Response:
        token = self._token(request)
        if token not in self.workspace:
            return web.json_response({"message": "Requires authentication."}, status=401)
        if request.method == "PATCH":
            self.workspace[token] = (await request.json())["workspace_id"]
        return web.json_response({"workspace_id": self.workspace[token], "can": {}})

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "headers": [[k, v] for k, v in request.headers.items()],
                "path": request.raw_path,
                "workspace": self.workspace.get(self._token(request)),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            },
            headers={"Connection": "close, X-Secret-Hop", "X-Secret-Hop": "1", "X-Kept": "yes"},
        )

    async def forbidden(self, _: web.Request) -> web.Response:
        return web.json_response({"message": "Forbidden"}, status=403)

    async def redirect(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")


@pytest.fixture
async def echo(aiohttp_server: AiohttpServer) -> EchoLooker:
    upstream = EchoLooker()
    server = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/")).rstrip("/")
    return upstream


@pytest.fixture
async def echo_proxy(echo: EchoLooker, make_proxy: MakeProxy) -> Proxy:
    return await make_proxy(echo)  # duck-typed: only base_url is read


async def _echo(proxy: Proxy, **kwargs: Any) -> dict[str, Any]:
    token = await proxy.login("analytics")
    resp = await proxy.call("POST", "/api/4.0/echo?a=1&b=%2F", token, **kwargs)
    assert resp.status == 200, await resp.text()
    assert "X-Secret-Hop" not in resp.headers
    assert resp.headers["X-Kept"] == "yes"
    return dict(await resp.json())


async def test_caller_authorization_is_never_forwarded(echo_proxy: Proxy) -> None:
    """Every Authorization variant is dropped; exactly one, the pinned token, reaches Looker."""
    got = await _echo(
        echo_proxy,
        headers={
            "authorization_": "token stolen-1",
            "Authorization_": "token stolen-2",
            "Proxy-Authorization": "Basic c3RvbGVu",
            "X-Authorization": "token stolen-3",
        },
    )
    auth = [v for k, v in got["headers"] if k.lower().replace("_", "-") == "authorization"]
    assert auth == ["token upstream-token-1"]
    names = {k.lower() for k, _ in got["headers"]}
    assert "proxy-authorization" not in names
    assert "authorization_" not in names
    assert "x-authorization" not in names
    assert got["workspace"] == "dev"


async def test_duplicate_authorization_headers_are_refused(
    echo: EchoLooker, echo_proxy: Proxy
) -> None:
    """Two Authorization headers are ambiguous (which one would a front proxy check?): 400."""
    token = await echo_proxy.login("analytics")
    request = (
        f"GET /api/4.0/echo HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
        f"authorization: token other\r\nConnection: close\r\n\r\n"
    ).encode()
    status, raw = await raw_http(echo_proxy.base_url, request)
    assert status == 400
    assert b"exactly one Authorization header" in raw
    assert echo.logins == 0


async def test_hop_by_hop_and_spoofed_forwarding_headers_are_dropped(echo_proxy: Proxy) -> None:
    """Connection-named, hop-by-hop and caller-supplied X-Forwarded-* headers never reach Looker."""
    got = await _echo(
        echo_proxy,
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "websocket",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.example",
            "Forwarded": "for=6.6.6.6",
            "X-Custom": "passes",
        },
    )
    headers = {k.lower(): v for k, v in got["headers"]}
    for name in ("x-drop-me", "keep-alive", "te", "upgrade", "forwarded"):
        assert name not in headers
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-custom"] == "passes"
    assert headers["host"] == echo_proxy.config.looker.base_url.removeprefix("http://")


async def test_no_headers_are_invented(echo_proxy: Proxy) -> None:
    """Looker sees no Accept-Encoding, User-Agent or Content-Type the caller did not send."""
    token = await echo_proxy.login("analytics")
    request = (
        f"POST /api/4.0/echo HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
        f"Content-Length: 2\r\nConnection: close\r\n\r\nhi"
    ).encode()
    status, raw = await raw_http(echo_proxy.base_url, request)
    assert status == 200
    sent = json.loads(raw.split(b"\r\n\r\n", 1)[1])["headers"]
    names = {k.lower() for k, _ in sent}
    assert not names & {"accept-encoding", "user-agent", "content-type", "accept"}, names


async def test_path_query_and_body_arrive_unchanged(echo_proxy: Proxy) -> None:
    """The encoded query and a binary body reach Looker byte for byte."""
    body = bytes(range(256)) * 1000
    got = await _echo(echo_proxy, data=body, headers={"Content-Type": "application/octet-stream"})
    assert got["path"] == "/api/4.0/echo?a=1&b=%2F"
    assert got["body_len"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_upstream_403_is_passed_on_without_relogin(
    echo: EchoLooker, echo_proxy: Proxy
) -> None:
    """A 403 from Looker is the caller's answer; it never triggers a re-login."""
    token = await echo_proxy.login("analytics")
    for _ in range(3):
        resp = await echo_proxy.call("GET", "/api/4.0/forbidden", token)
        assert resp.status == 403
    assert echo.logins == 1


async def test_redirects_are_never_followed(echo: EchoLooker, echo_proxy: Proxy) -> None:
    """Looker's redirect is handed to the caller as is; the proxy never fetches the target."""
    token = await echo_proxy.login("analytics")
    resp = await echo_proxy.call("GET", "/api/4.0/redirect", token, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "http://169.254.169.254/latest/meta-data"


async def test_upstream_unreachable_mid_run_gives_502(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Looker vanishes after the pin: the caller gets a Looker-shaped 502, never a hang."""
    proxy = await make_proxy(looker)
    token = await proxy.login("analytics")
    assert (await proxy.call("GET", "/api/4.0/user", token)).status == 200
    assert looker.server is not None
    await looker.server.close()
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 502
    body = json.loads(await resp.text())
    assert body["message"] == "workspace-proxy: Looker is unavailable."


@pytest.mark.parametrize("declared", [100, 200_000])
async def test_a_stalled_request_body_gets_408(
    looker: LookerEmulator, make_proxy: MakeProxy, declared: int
) -> None:
    """A caller that stops sending its body (buffered or streamed) gets 408; the slot is freed."""
    proxy = await make_proxy(
        looker,
        limits={"body_idle_timeout_s": 0.3},
        team_settings={"finance": {"max_concurrency": 1}},
    )
    token = await proxy.login("finance")
    head = (
        f"POST /api/4.0/queries HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: token {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    url = URL(proxy.base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(head + b'{"model": "sa')  # ... and nothing more
        # aiohttp lingers before closing (to let the rest of a body drain), so read the answer
        # by its framing rather than until the connection closes.
        async with asyncio.timeout(10):
            answer = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", answer)[1])  # type: ignore[index]
            body = await reader.readexactly(length)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"Connection: close" in answer
    assert b"did not arrive in time" in body
    assert (await proxy.call("GET", "/api/4.0/user", token)).status == 200  # slot was freed

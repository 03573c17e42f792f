"""Hostile HTTP on a real socket: odd targets, path escapes, framing tricks, floods, spoofing.

Requests are sent byte for byte (``raw_exchange``/``raw_answers``) to the proxy served on
127.0.0.1. For each input the test asserts the status (and the Looker-shaped body where the proxy
itself answers), what reached Looker (the emulator's audit, a header spy, or a decoy server that
must see nothing), and that the proxy keeps serving afterwards. Every case is recorded in
docs/reliability.md (see reliability.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from harness import ENV, Proxy, ProxyServer, raw_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient, AiohttpServer
from reliability import (
    RawAnswer,
    audit_summary,
    install,
    raw_answers,
    raw_exchange,
    read_answer,
    record,
    status_of,
)
from spy import SpyLooker

from workspace_proxy.app import create_app
from workspace_proxy.auth import CallerAuth
from workspace_proxy.emulator import AuditEntry, LookerEmulator
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]

USER: Final = "/api/4.0/user"
TAIL: Final = b"Authorization: token {token}\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="session", autouse=True)
def _reliability_table(pytestconfig: pytest.Config) -> None:
    """Write docs/reliability.md at the end of a complete run (see reliability.py)."""
    install(pytestconfig)


# --- helpers -------------------------------------------------------------------------------------


async def served(proxy: Proxy, token: str) -> int:
    """The status a normal caller gets right now."""
    resp = await proxy.call("GET", USER, token)
    await resp.read()
    return resp.status


async def warm(proxy: Proxy) -> str:
    """A caller token of team analytics whose session is already pinned."""
    token = await proxy.login("analytics")
    assert await served(proxy, token) == 200
    return token


def since(looker: LookerEmulator, mark: int) -> list[AuditEntry]:
    return looker.audit[mark:]


class Decoy:
    """A server that must never be contacted: counts every request it gets."""

    def __init__(self) -> None:
        self.requests = 0
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.authority = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text="decoy")


@pytest.fixture
async def decoy(aiohttp_server: AiohttpServer) -> Decoy:
    found = Decoy()
    server = await aiohttp_server(found.app)
    found.authority = f"127.0.0.1:{server.port}"
    return found


# --- 1. targets, paths, headers, framing: one table ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    request: bytes
    """Sent as is; ``{token}`` becomes a valid proxy token of team analytics."""
    expected: str
    statuses: tuple[int, ...]
    forwards: bool = False
    """The call may reach Looker (then only under /api/4.0/ in the caller's team session)."""


def _get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n" + extra + TAIL


def _post(extra: bytes, body: bytes) -> bytes:
    head = b"POST /api/4.0/queries HTTP/1.1\r\nHost: proxy.test\r\n"
    return head + extra + b"Authorization: token {token}\r\n" + body


_NOT_FOUND = "404 Looker-shaped, nothing forwarded"
_PARSER_400 = "400 Looker-shaped from the HTTP parser, nothing forwarded"
_SMUGGLED = (
    b"GET /api/4.0/lookml_models HTTP/1.1\r\nHost: proxy.test\r\n"
    b"Authorization: token {token}\r\nConnection: close\r\n\r\n"
)

CASES: Final = [
    pytest.param(
        Case(
            "absolute-form target (GET http://evil.example/...)",
            _get(b"http://evil.example/api/4.0/user"),
            "4xx Looker-shaped: not a forward proxy; nothing forwarded",
            (400, 404),
        ),
    ),
    Case(
        "CONNECT evil.example:443",
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n" + TAIL,
        "4xx Looker-shaped: not an open proxy; nothing forwarded",
        (400, 404, 405),
    ),
    Case(
        "OPTIONS * (asterisk-form)",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n" + TAIL,
        "400 Looker-shaped: not origin-form; nothing forwarded",
        (400,),
    ),
    Case(
        "path ../ out of /api/4.0/",
        _get(b"/api/4.0/../../_emulator/audit"),
        _NOT_FOUND,
        (404,),
    ),
    Case(
        "path %2e%2e out of /api/4.0/",
        _get(b"/api/4.0/%2e%2e/%2E%2E/_emulator/audit"),
        _NOT_FOUND,
        (404,),
    ),
    Case("path ./ segment", _get(b"/api/4.0/./user"), _NOT_FOUND, (404,)),
    Case(
        "path with encoded slash %2f",
        _get(b"/api/4.0/user%2f..%2f..%2f_emulator%2faudit"),
        _NOT_FOUND,
        (404,),
    ),
    Case(
        "path //host/x (scheme-relative)",
        _get(b"//evil.example/api/4.0/user"),
        _NOT_FOUND,
        (404,),
    ),
    Case(
        "path with backslashes",
        _get(b"/api/4.0\\..\\_emulator\\audit"),
        "400 Looker-shaped: '\\' is not in the path grammar; nothing forwarded",
        (400,),
    ),
    Case(
        "path with encoded backslash %5c",
        _get(b"/api/4.0/%5c..%5cuser"),
        _NOT_FOUND,
        (404,),
    ),
    Case(
        "path with ;parameters",
        _get(b"/api/4.0/user/..;/x"),
        _NOT_FOUND,
        (404,),
    ),
    Case(
        "path to the emulator's admin API",
        _get(b"/_emulator/audit"),
        _NOT_FOUND,
        (404,),
    ),
    Case(
        "path double-encoded %252e%252e",
        _get(b"/api/4.0/%252e%252e/_emulator/audit"),
        "stays under /api/4.0/ as a literal segment (Looker answers 404)",
        (404,),
        forwards=True,
    ),
    Case(
        "path with raw bytes \\xff\\xfe",
        _get(b"/api/4.0/us\xff\xfeer"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "path with percent-encoded \\xff\\xfe",
        _get(b"/api/4.0/looks/%ff%fe"),
        "forwarded under /api/4.0/ as the caller's team (Looker answers 404)",
        (404,),
        forwards=True,
    ),
    Case(
        "CRLF injection: bare LF in a header value",
        _get(USER.encode(), b"X-A: a\nX-B: 1\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "CRLF injection: bare CR in a header value",
        _get(USER.encode(), b"X-A: a\rX-B: 1\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "obsolete line folding",
        _get(USER.encode(), b"X-A: a\r\n X-B: 1\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "NUL byte in a header value",
        _get(USER.encode(), b"X-A: a\x00b\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "non-UTF-8 byte in a header name",
        _get(USER.encode(), b"X-\xffA: 1\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "non-UTF-8 bytes in a header value",
        _get(USER.encode(), b"X-Bin: \xff\xfe\x80\r\n"),
        "served (200) as the caller's team, or 400 Looker-shaped (see the fidelity case)",
        (200, 400),
        forwards=True,
    ),
    Case(
        "non-UTF-8 bytes in Authorization",
        b"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token \xff\xfe\r\n"
        b"Connection: close\r\n\r\n",
        "401 (or 400) Looker-shaped, nothing forwarded",
        (400, 401),
    ),
    Case(
        "space before a header colon",
        _get(USER.encode(), b"X-A : 1\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "lower-case method",
        b"get /api/4.0/user HTTP/1.1\r\nHost: x\r\n" + TAIL,
        _PARSER_400,
        (400,),
    ),
    Case(
        "HTTP/1.1 without Host",
        b"GET /api/4.0/user HTTP/1.1\r\n" + TAIL,
        _PARSER_400,
        (400,),
    ),
    Case(
        "two Host headers",
        _get(USER.encode(), b"Host: evil.example\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "unknown HTTP version",
        b"GET /api/4.0/user HTTP/9.9\r\nHost: x\r\n" + TAIL,
        _PARSER_400,
        (400,),
    ),
    Case(
        "HTTP/2 preface on HTTP/1.1",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        _PARSER_400,
        (400,),
    ),
    Case(
        "request line over 8 KiB",
        _get(b"/api/4.0/user?q=" + b"a" * 9000),
        "414/431 Looker-shaped, nothing forwarded",
        (414, 431),
    ),
    Case(
        "header line over 8 KiB",
        _get(USER.encode(), b"X-Big: " + b"a" * 9000 + b"\r\n"),
        "414/431 Looker-shaped, nothing forwarded",
        (414, 431),
    ),
    Case(
        "200 headers (limit 128)",
        _get(USER.encode(), b"".join(b"X-H%d: 1\r\n" % i for i in range(200))),
        "414/431 Looker-shaped, nothing forwarded",
        (414, 431),
    ),
    Case(
        "two equal Content-Length headers",
        _post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"Connection: close\r\n\r\n{}"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "conflicting Content-Length headers",
        _post(b"Content-Length: 2\r\nContent-Length: 40\r\n", b"Connection: close\r\n\r\n{}"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "Content-Length: 2, 2 (list)",
        _post(b"Content-Length: 2, 2\r\n", b"Connection: close\r\n\r\n{}"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "Content-Length: -1",
        _post(b"Content-Length: -1\r\n", b"Connection: close\r\n\r\n{}"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "smuggling: Content-Length + Transfer-Encoding, second request behind",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"\r\n0\r\n\r\n" + _SMUGGLED),
        "400; neither request reaches Looker",
        (400,),
    ),
    Case(
        "smuggling: Transfer-Encoding + Content-Length, second request behind",
        _post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"\r\n0\r\n\r\n" + _SMUGGLED),
        "400; neither request reaches Looker",
        (400,),
    ),
    Case(
        "smuggling: obfuscated Transfer-Encoding: xchunked",
        _post(b"Transfer-Encoding: xchunked\r\n", b"\r\n0\r\n\r\n" + _SMUGGLED),
        "400; neither request reaches Looker",
        (400,),
    ),
    Case(
        "smuggling: Transfer-Encoding: chunked + identity",
        _post(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            b"\r\n0\r\n\r\n" + _SMUGGLED,
        ),
        "400; neither request reaches Looker",
        (400,),
    ),
    pytest.param(
        Case(
            "smuggling: HTTP/1.0 with Transfer-Encoding, second request behind",
            b"POST /api/4.0/queries HTTP/1.0\r\nHost: proxy.test\r\n"
            b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
            b"Authorization: token {token}\r\n\r\n0\r\n\r\n" + _SMUGGLED,
            "400 and close (faulty framing); the request behind never reaches Looker",
            (400,),
        ),
    ),
    Case(
        "chunk size that is not hex",
        _post(b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "chunks framed by bare LF",
        _post(b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n\r\n2\n{}\n0\n\n"),
        _PARSER_400,
        (400,),
    ),
    Case(
        "hostile X-Request-Id (not echoed)",
        _get(USER.encode(), b"X-Request-Id: ../<script>\r\n"),
        "served; the answer carries a fresh X-Request-Id",
        (200,),
        forwards=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_hostile_request(looker: LookerEmulator, proxy: Proxy, case: Case) -> None:
    """Each hostile request gets its defined status; nothing escapes /api/4.0/ or the team."""
    token = await warm(proxy)
    mark, attempts = len(looker.audit), looker.login_attempts
    answers = await raw_answers(proxy.base_url, case.request.replace(b"{token}", token.encode()))
    reached = since(looker, mark)
    after = await served(proxy, token)
    first = answers[0] if answers else RawAnswer(0, CIMultiDict(), b"")
    more = f" (+{len(answers) - 1} more answers)" if len(answers) > 1 else ""
    record(
        "hostile",
        case.name,
        case.expected,
        status=first.describe() + more,
        answer=first.message,
        looker=audit_summary(reached),
        afterwards=f"next caller: {after}",
    )
    assert first.status in case.statuses, first
    if first.status >= 400:
        assert first.looker_shaped, first  # every refusal, the parser's included
    assert len(answers) == 1, "a second request was read from the same bytes"
    assert looker.login_attempts == attempts
    if case.forwards:
        assert all(e.path.startswith("/api/4.0/") for e in reached), reached
        assert all(e.user_id in ("2", None) for e in reached), reached
    else:
        assert reached == [], reached
    if first.status == 200:
        assert first.headers["X-Request-Id"] != "../<script>"
    assert after == 200


# --- 2. no SSRF: only the configured Looker is ever contacted ------------------------------------


SSRF: Final[dict[str, Callable[[bytes], bytes]]] = {
    "Host: <decoy>": lambda d: _get(USER.encode()).replace(b"proxy.test", d),
    "absolute-form target at <decoy>": lambda d: _get(b"http://" + d + USER.encode()),
    "CONNECT <decoy>": lambda d: b"CONNECT " + d + b" HTTP/1.1\r\nHost: " + d + b"\r\n" + TAIL,
    "path //<decoy>/api/4.0/user": lambda d: _get(b"//" + d + USER.encode()),
    "X-Forwarded-Host / Forwarded: host=<decoy>": lambda d: _get(
        USER.encode(), b"X-Forwarded-Host: " + d + b"\r\nForwarded: host=" + d + b"\r\n"
    ),
    "X-Original-URL / X-Rewrite-URL: http://<decoy>/": lambda d: _get(
        USER.encode(),
        b"X-Original-URL: http://" + d + b"/\r\nX-Rewrite-URL: http://" + d + b"/\r\n",
    ),
}


async def test_only_the_configured_looker_is_ever_contacted(
    looker: LookerEmulator, proxy: Proxy, decoy: Decoy
) -> None:
    """Host, absolute-form, CONNECT, // or forwarding headers naming a decoy: it sees nothing."""
    token = await warm(proxy)
    for name, build in SSRF.items():
        mark = len(looker.audit)
        request = build(decoy.authority.encode()).replace(b"{token}", token.encode())
        answers = await raw_answers(proxy.base_url, request)
        reached = since(looker, mark)
        after = await served(proxy, token)
        record(
            "hostile",
            f"SSRF: {name}",
            "decoy server sees 0 requests; only the configured Looker is contacted",
            status=answers[0].describe(),
            answer=answers[0].message,
            looker=f"{audit_summary(reached)}; decoy: {decoy.requests} requests",
            afterwards=f"next caller: {after}",
        )
        assert decoy.requests == 0, name
        assert all(e.user_id in ("2", None) for e in reached), reached
        assert after == 200


# --- 3. headers that must never reach Looker -----------------------------------------------------


def _names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [k.decode("latin-1").lower() for k, _ in headers]


def _values_of(headers: list[tuple[bytes, bytes]], name: str) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k.decode("latin-1").lower() == name]


AUTH_VARIANTS: Final = {
    "authorization (lower case)": ("authorization", "accepted: header names are case-insensitive"),
    "AUTHORIZATION (upper case)": ("AUTHORIZATION", "accepted: header names are case-insensitive"),
    "Authorization_ (underscore suffix)": ("Authorization_", "401: not an Authorization header"),
    "Authorization-Token": ("Authorization-Token", "401: not an Authorization header"),
    "X-Authorization": ("X-Authorization", "401: not an Authorization header"),
    "Proxy-Authorization": ("Proxy-Authorization", "401: not an Authorization header"),
}


@pytest.mark.parametrize("variant", sorted(AUTH_VARIANTS))
async def test_authorization_variants_never_reach_looker(
    spy: SpyLooker, spy_proxy: Proxy, variant: str
) -> None:
    """Any spelling of Authorization: Looker sees one Authorization only, the pinned token."""
    name, expected = AUTH_VARIANTS[variant]
    token = await spy_proxy.login("analytics")
    request = (
        f"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\n{name}: token {token}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    alone = await raw_exchange(spy_proxy.base_url, request)
    both = await raw_exchange(
        spy_proxy.base_url,
        (
            f"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
            f"{name}_x: token {token}\r\n{name}: token stolen-{variant[:3]}\r\n"
            f"Connection: close\r\n\r\n"
        ).encode(),
    )
    forwarded = spy.forwarded()
    leaked = [h for _, _, headers in spy.seen for h in headers if token.encode() in h[1]]
    record(
        "hostile",
        f"Authorization variant: {variant}",
        expected + "; Looker never sees a caller credential",
        status=f"alone: {alone.status}; with a valid Authorization too: {both.status}",
        answer=alone.message,
        looker=f"{len(forwarded)} forwarded; proxy token in a Looker-bound header: {len(leaked)}",
        afterwards="-",
    )
    assert leaked == []
    for _, _, headers in forwarded:
        assert _values_of(headers, "authorization") == [f"token {spy.tokens()[0]}"]
        assert not any("stolen" in v.decode("latin-1") for _, v in headers)
    if name.lower() == "authorization":
        assert (alone.status, both.status) == (200, 400)  # the second is a duplicate
    else:
        assert (alone.status, both.status) == (401, 200)
        assert alone.looker_shaped


AUTH_SCHEMES: Final = {
    "token X": ("token {t}", 200),
    "Bearer X": ("Bearer {t}", 200),
    "TOKEN X (scheme case)": ("TOKEN {t}", 200),
    "Basic X": ("Basic {t}", 401),
    "X alone (no scheme)": ("{t}", 401),
    "token X, token X (comma list)": ("token {t}, token {t}", 401),
    "empty value": ("", 401),
    "token with a flipped last character": ("token {t}!", 401),
}


async def test_authorization_schemes_and_duplicates(looker: LookerEmulator, proxy: Proxy) -> None:
    """Only `token X`/`Bearer X` is accepted; two Authorization headers 400, the rest 401."""
    token = await warm(proxy)
    for name, (value, want) in AUTH_SCHEMES.items():
        mark = len(looker.audit)
        header = value.replace("{t}", token)
        if name.startswith("token with a flipped"):
            header = f"token {token[:-1]}{'A' if token[-1] != 'A' else 'B'}"
        answer = await raw_exchange(
            proxy.base_url,
            f"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n"
            f"Connection: close\r\n\r\n".encode(),
        )
        reached = since(looker, mark)
        record(
            "hostile",
            f"Authorization scheme: {name}",
            f"{want}" + (" Looker-shaped, nothing forwarded" if want != 200 else " as the team"),
            status=answer.describe(),
            answer=answer.message if want != 200 else "(Looker's answer)",
            looker=audit_summary(reached),
            afterwards="-",
        )
        assert answer.status == want, name
        if want == 200:
            assert [e.user_id for e in reached] == ["2"]
        else:
            assert answer.looker_shaped
            assert reached == []
    dups: list[RawAnswer] = []
    mark = len(looker.audit)
    for dup in (b"Authorization", b"authorization", b"AUTHORIZATION"):
        answer = await raw_exchange(
            proxy.base_url,
            b"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token "
            + token.encode()
            + b"\r\n"
            + dup
            + b": token "
            + token.encode()
            + b"\r\nConnection: close\r\n\r\n",
        )
        dups.append(answer)
    reached = since(looker, mark)
    after = await served(proxy, token)
    record(
        "hostile",
        "Authorization twice (same token; any case of the second name)",
        "400 Looker-shaped, nothing forwarded",
        status=", ".join(sorted({d.describe() for d in dups})),
        answer=", ".join(sorted({d.message for d in dups})),
        looker=audit_summary(reached),
        afterwards=f"next caller: {after}",
    )
    assert [d.status for d in dups] == [400] * 3
    assert {d.message for d in dups} == {"workspace-proxy: send exactly one Authorization header."}
    assert reached == []
    assert after == 200


SPOOFED: Final = (
    b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n"
    b"X-Forwarded-Proto: gopher\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\n"
    b"Forwarded: for=6.6.6.6;host=evil.example;proto=https\r\n"
)


async def test_spoofed_forwarding_headers_are_replaced(spy: SpyLooker, spy_proxy: Proxy) -> None:
    """Caller X-Forwarded-*/Forwarded are replaced by the proxy's own; %0d%0a stays encoded."""
    token = await spy_proxy.login("analytics")
    request = (
        b"GET /api/4.0/user?x=%0d%0aX-Injected:%201 HTTP/1.1\r\nHost: proxy.test\r\n"
        + SPOOFED
        + TAIL
    )
    answer = await raw_exchange(spy_proxy.base_url, request.replace(b"{token}", token.encode()))
    (_, path, headers) = spy.forwarded()[-1]
    got = {name: _values_of(headers, name) for name in sorted(set(_names(headers)))}
    record(
        "hostile",
        "spoofed X-Forwarded-* / Forwarded headers",
        "replaced by the proxy's own (peer 127.0.0.1, scheme http, caller's Host)",
        status=answer.describe(),
        answer="(Looker's answer)",
        looker=", ".join(
            f"{n}: {got.get(n, ['-'])[0]}"
            for n in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")
        )
        + f"; {len([n for n in got if n.startswith('x-forwarded-')])} X-Forwarded-* headers",
        afterwards="-",
    )
    record(
        "hostile",
        "encoded CRLF in the query (%0d%0a)",
        "forwarded still encoded; no header injected upstream",
        status=answer.describe(),
        answer="(Looker's answer)",
        looker=f"path {path}; injected header present: {'x-injected' in got}",
        afterwards="-",
    )
    assert answer.status == 200
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    assert got["x-forwarded-host"] == ["proxy.test"]
    assert "forwarded" not in got
    assert "x-forwarded-port" not in got
    assert "x-forwarded-prefix" not in got
    assert "x-injected" not in got
    assert path == "/api/4.0/user?x=%0d%0aX-Injected:%201"


async def test_non_utf8_header_bytes_are_never_silently_altered(
    spy: SpyLooker, spy_proxy: Proxy
) -> None:
    """Non-UTF-8 header bytes reach Looker unchanged or are refused (400), never altered."""
    token = await spy_proxy.login("analytics")
    mark = len(spy.seen)
    request = _get(USER.encode(), b"X-Bin: a\xffb\r\n").replace(b"{token}", token.encode())
    answer = await raw_exchange(spy_proxy.base_url, request)
    got = [v for _, _, headers in spy.seen[mark:] for k, v in headers if k.lower() == b"x-bin"]
    record(
        "hostile",
        "non-UTF-8 header value: fidelity (X-Bin: a\\xffb)",
        "reaches Looker byte for byte, or 400 Looker-shaped and not forwarded",
        status=answer.describe(),
        answer=answer.message if answer.status != 200 else "(Looker's answer)",
        looker=f"X-Bin arrived as {got!r}" if got else "nothing",
        afterwards="-",
    )
    refused = answer.status == 400 and answer.looker_shaped and not got
    assert refused or got == [b"a\xffb"], got


async def test_trace_is_never_forwarded(spy: SpyLooker, spy_proxy: Proxy) -> None:
    """TRACE is refused: Looker's echo would hand the injected team token to the caller."""
    token = await spy_proxy.login("analytics")
    mark = len(spy.seen)
    request = f"TRACE /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
    answer = await raw_exchange(
        spy_proxy.base_url, (request + "Connection: close\r\n\r\n").encode()
    )
    leaked = any(t.encode() in answer.body for t in spy.tokens())
    traced = [s for s in spy.seen[mark:] if s[0] == "TRACE"]
    record(
        "hostile",
        "TRACE /api/4.0/user",
        "4xx Looker-shaped; never forwarded (Looker's echo would carry the team's token)",
        status=answer.describe(),
        answer="echo of the forwarded request" if traced else answer.message,
        looker=f"{len(traced)} TRACE forwarded; team's Looker token in the answer: {leaked}",
        afterwards="-",
    )
    assert not leaked
    assert traced == []
    assert 400 <= answer.status < 500
    assert answer.looker_shaped


def test_property_no_spelling_of_authorization_reaches_looker() -> None:
    """Property: no Authorization-like header spelling gets a proxy token to Looker."""
    spellings: set[str] = set()
    statuses: set[int] = set()
    leaks: list[str] = []
    authorizations: set[str] = set()

    @settings(
        database=None,
        deadline=None,
        derandomize=True,
        max_examples=40,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        name=st.tuples(
            st.sampled_from(["", "x-", "proxy-", "X_", "looker-"]),
            st.lists(st.booleans(), min_size=13, max_size=13),
            st.sampled_from(["", "_", "-", "_x", "s"]),
        ).map(
            lambda p: (
                p[0]
                + "".join(
                    c.upper() if up else c for c, up in zip("authorization", p[1], strict=True)
                )
                + p[2]
            )
        ),
        scheme=st.sampled_from(["token", "Bearer", "BEARER", "Basic"]),
    )
    def check(name: str, scheme: str) -> None:
        seen, leaked, upstream = asyncio.run(_authorization_example(name, scheme))
        statuses.update(seen)
        leaks.extend(leaked)
        authorizations.update(upstream)
        spellings.add(name.lower().replace("_", "-"))
        assert leaked == []
        assert seen <= {200, 400, 401}
        assert upstream <= {"exactly one: the pinned token"}

    check()
    record(
        "hostile",
        "Authorization spellings (hypothesis, 40 derandomized examples)",
        "Looker sees exactly one Authorization (the pinned token), never the proxy token",
        status=", ".join(str(s) for s in sorted(statuses)),
        answer="-",
        looker=f"{len(spellings)} distinct spellings; Authorization upstream: "
        + f"{', '.join(sorted(authorizations))}; proxy token seen upstream: {len(leaks)} times",
        afterwards="-",
    )
    assert leaks == []


async def _authorization_example(name: str, scheme: str) -> tuple[set[int], list[str], set[str]]:
    """(statuses, headers that carried the proxy token to Looker, Authorization seen upstream)."""
    spy = SpyLooker()
    statuses: set[int] = set()
    async with TestServer(spy.app, host="127.0.0.1") as upstream:
        spy.base_url = str(upstream.make_url("/")).rstrip("/")
        config = parse_config(raw_config(spy.base_url), env=ENV)
        async with ProxyServer(create_app(config), host="127.0.0.1") as server:
            url = str(server.make_url("/")).rstrip("/")
            token = CallerAuth(config).issue("analytics", "analytics-caller").access_token
            value = f"{scheme} {token.reveal()}"
            for extra in ("", f"Authorization: token {token.reveal()}\r\n"):
                request = f"GET {USER} HTTP/1.1\r\nHost: x\r\n{extra}{name}: {value}\r\n"
                answer = await raw_exchange(url, (request + "Connection: close\r\n\r\n").encode())
                statuses.add(answer.status)
    secret = token.reveal().encode()
    leaked = [k.decode() for _, _, headers in spy.seen for k, v in headers if secret in v]
    authorizations = {
        "exactly one: the pinned token"
        if _values_of(headers, "authorization") == [f"token {spy.tokens()[0]}"]
        else f"other: {len(_values_of(headers, 'authorization'))} values"
        for _, _, headers in spy.forwarded()
    }
    return statuses, leaked, authorizations


# --- 4. request bodies over the limit ------------------------------------------------------------

LIMIT: Final = 1000


def _chunked(total: int, piece: int = 256) -> bytes:
    out, left = b"", total
    while left > 0:
        n = min(piece, left)
        out += b"%x\r\n" % n + b"a" * n + b"\r\n"
        left -= n
    return out + b"0\r\n\r\n"


BODIES: Final = [
    pytest.param(
        "Content-Length over the limit", b"Content-Length: 5000\r\n", b"a" * 5000, 413, id="cl"
    ),
    pytest.param(
        "Content-Length over the limit, body never sent",
        b"Content-Length: 999999999\r\n",
        b"",
        413,
        id="cl-unsent",
    ),
    pytest.param(
        "chunked body over the limit",
        b"Transfer-Encoding: chunked\r\n",
        _chunked(4 * LIMIT),
        413,
        id="chunked",
    ),
    pytest.param(
        "Content-Length exactly at the limit",
        b"Content-Length: %d\r\n" % LIMIT,
        b"a" * LIMIT,
        400,
        id="cl-at-limit",
    ),
    pytest.param(
        "chunked body under the limit",
        b"Transfer-Encoding: chunked\r\n",
        _chunked(LIMIT // 2),
        400,
        id="chunked-under",
    ),
]


@pytest.mark.parametrize(("name", "framing", "body", "want"), BODIES)
async def test_request_body_limit(
    looker: LookerEmulator, make_proxy: MakeProxy, name: str, framing: bytes, body: bytes, want: int
) -> None:
    """Bodies over max_request_body_bytes get a Looker-shaped 413; smaller ones are forwarded."""
    proxy = await make_proxy(
        looker, limits={"max_request_body_bytes": LIMIT, "replay_buffer_bytes": 100}
    )
    token = await warm(proxy)
    mark = len(looker.audit)
    request = (
        b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\nAuthorization: token "
        + token.encode()
        + b"\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n"
        + body
    )
    answer = await raw_exchange(proxy.base_url, request)
    reached = since(looker, mark)
    after = await served(proxy, token)
    record(
        "hostile",
        f"body: {name} ({LIMIT} bytes)",
        f"{want}" + (" Looker-shaped; Looker never sees a complete request" if want == 413 else ""),
        status=answer.describe(),
        answer=answer.message,
        looker=audit_summary(reached),
        afterwards=f"next caller: {after}",
    )
    assert answer.status == want, answer
    assert answer.looker_shaped
    if want == 413:
        assert answer.message == f"Request body larger than {LIMIT} bytes."
        assert not [e for e in reached if 200 <= e.status < 300 or e.status == 400], reached
    else:
        assert [(e.path, e.user_id) for e in reached] == [("/api/4.0/queries", "2")]
    assert after == 200


# --- 5. slow and idle clients --------------------------------------------------------------------


async def test_stalled_request_line_is_held_without_blocking_anyone(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Half a request line, then silence: held unanswered, others served, the rest served."""
    token = await proxy.login("analytics")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.client.port)
    try:
        writer.write(b"GET /api/4.0/us")
        await writer.drain()
        others = [await served(proxy, token) for _ in range(3)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)  # bounded: held, not answered
        writer.write(
            f"er HTTP/1.1\r\nHost: x\r\n{TAIL.decode()}".replace("{token}", token).encode()
        )
        await writer.drain()
        async with asyncio.timeout(10):
            late = await read_answer(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    record(
        "hostile",
        "slow client: half a request line, then silence",
        "held open without an answer (no 408); others served; finishing it is served",
        status=f"nothing within 0.3 s; after finishing the line: {late.status}",
        answer="-",
        looker=audit_summary(looker.audit),
        afterwards=f"other callers meanwhile: {sorted(set(others))}",
    )
    assert others == [200, 200, 200]
    assert late.status == 200


async def test_stalled_client_is_dropped_at_the_keepalive_timeout(
    looker: LookerEmulator, aiohttp_client: AiohttpClient
) -> None:
    """A stalled half request is closed silently at keepalive_timeout (serve: aiohttp's 3630 s)."""
    config = parse_config(raw_config(looker.base_url), env=ENV)
    server = ProxyServer(create_app(config), host="127.0.0.1")
    await server.start_server(keepalive_s=0.5)
    await aiohttp_client(server)  # closes the server at teardown
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /api/4.0/us")
        await writer.drain()
        async with asyncio.timeout(10):  # bounded: must not hang
            got = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    record(
        "hostile",
        "slow client past keepalive_timeout (0.5 s here)",
        "connection closed silently at the timeout; never forwarded",
        status=status_of(0) if not got else got[:12].decode("latin-1"),
        answer="-",
        looker=audit_summary(looker.audit),
        afterwards="-",
    )
    assert got == b""
    assert looker.audit == []


async def test_flood_of_idle_connections_does_not_starve_callers(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """500 idle sockets (and 100 half-sent requests) are open: a normal caller is still served."""
    token = await proxy.login("analytics")
    sockets: list[asyncio.StreamWriter] = []
    try:
        for i in range(600):
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.client.port)
            if i >= 500:
                writer.write(b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\nContent-Le")
            sockets.append(writer)
        statuses = [await served(proxy, token) for _ in range(5)]
    finally:
        for writer in sockets:
            writer.close()
    record(
        "hostile",
        "flood: 500 idle connections + 100 half-sent requests",
        "a normal caller is still served",
        status=f"normal caller: {sorted(set(statuses))}",
        answer="-",
        looker=audit_summary(e for e in looker.audit if e.path == USER),
        afterwards="-",
    )
    assert statuses == [200] * 5


# --- 6. login endpoint abuse ---------------------------------------------------------------------


async def test_login_abuse_never_reaches_looker(looker: LookerEmulator, proxy: Proxy) -> None:
    """Wrong, missing or oversized caller credentials on /login: 404/413, no Looker call."""
    form = "application/x-www-form-urlencoded"
    tries = {
        "wrong secret": ("client_id=analytics-caller&client_secret=nope", 404),
        "other team's id, this team's secret": (
            "client_id=finance-caller&client_secret=analytics-caller-secret",
            404,
        ),
        "no credentials": ("", 404),
        "login body over 64 KiB": ("client_id=" + "a" * 70_000, 413),
    }
    chunked = b"".join(b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n" for _ in range(24))
    answer = await raw_exchange(
        proxy.base_url,
        b"POST /api/4.0/login HTTP/1.1\r\nHost: x\r\nContent-Type: " + form.encode()
        + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked + b"0\r\n\r\n",
    )  # fmt: skip
    record(
        "hostile",
        "proxy login: chunked body of 1.5 MiB",
        "413 Looker-shaped (aiohttp's client_max_size); never reaches Looker",
        status=answer.describe(),
        answer=answer.message,
        looker=audit_summary(looker.audit),
        afterwards="-",
    )
    assert answer.status == 413
    assert answer.looker_shaped
    for name, (body, want) in tries.items():
        answer = await raw_exchange(
            proxy.base_url,
            f"POST /api/4.0/login HTTP/1.1\r\nHost: x\r\nContent-Type: {form}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode(),
        )
        record(
            "hostile",
            f"proxy login: {name}",
            f"{want} Looker-shaped; never reaches Looker",
            status=answer.describe(),
            answer=answer.message,
            looker=audit_summary(looker.audit),
            afterwards="-",
        )
        assert answer.status == want, name
        assert answer.looker_shaped
    assert looker.audit == []
    assert await served(proxy, await proxy.login("analytics")) == 200

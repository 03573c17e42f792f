"""Attacks on the pin, sent byte for byte on raw sockets (issue 17's findings, as regressions).

Every case runs as a ``plain`` call and as a ``non-ascii`` one (the same request with a non-ASCII
header value): when issue 17 was found the proxy had two paths (a fast one and a relay to a
second HTTP server) and these sent a call down each; since issue 16 there is one path, and the
two variants stay as a guard that no header can make a difference. For each, the test asserts
what the caller got,
what reached Looker (the emulator's audit, which records each target exactly as it arrived) and
that the team's session is still where it was pinned. Cases are recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer
from harness import ENV, Proxy, ProxyProcess, ProxyServer, raw_config, raw_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import (
    audit_summary,
    install,
    raw_answers,
    raw_exchange,
    read_answer,
    record,
)
from spy import SpyLooker

from workspace_proxy.app import create_app
from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator
from workspace_proxy.errors import BadRequest
from workspace_proxy.routes import Action, classify, parse_target, upstream_target
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]
ADMIN: Final = next(u for u in DEFAULT_USERS if u.is_admin)
BRANCH: Final = {"project": "sales", "name": "feature-x"}
OPS: Final = {
    # A production team whose Looker user is an admin, without allow_sudo: sudo must be refused.
    "workspace": "production",
    "looker_client_id": "admin-client-id",
    "looker_client_secret": {"env": "ADMIN_LOOKER_SECRET"},
    "callers": [{"client_id": "ops-caller", "client_secret": {"env": "OPS_CALLER_SECRET"}}],
}
SECRETS: Final = {"ADMIN_LOOKER_SECRET": "admin-client-secret", "OPS_CALLER_SECRET": "ops-secret"}
WORKSPACE: Final = {"finance": "production", "analytics": "dev", "ops": "production"}
RELAY: Final = "X-Note: caf\u00e9\r\n".encode()
"""A non-ASCII (UTF-8) header value (before issue 16 it sent a call down another path)."""
PATHS: Final = {"plain": b"", "non-ascii": RELAY}
MIB: Final = 1024 * 1024


@pytest.fixture(scope="session", autouse=True)
def _reliability_table(pytestconfig: pytest.Config) -> None:
    """Write docs/reliability.md at the end of a complete run (see reliability.py)."""
    install(pytestconfig)


@dataclass
class Pinned:
    """The proxy with three warm teams: finance (production), analytics (dev, branch pinned),
    ops (production, a Looker admin, sudo not allowed)."""

    proxy: Proxy
    tokens: dict[str, str]


async def _login(proxy: Proxy, team: str) -> str:
    secret = "ops-secret" if team == "ops" else f"{team}-caller-secret"
    resp = await proxy.client.post(
        "/api/4.0/login", data={"client_id": f"{team}-caller", "client_secret": secret}
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


@pytest.fixture
async def pinned(looker: LookerEmulator, make_proxy: MakeProxy) -> Pinned:
    looker.git.create(ADMIN, "sales", "feature-x", None)
    proxy = await make_proxy(
        looker,
        teams=("analytics", "finance"),
        team_settings={"analytics": {"git_branch": BRANCH}, "ops": OPS},
        env_overrides=SECRETS,
    )
    tokens = {team: await _login(proxy, team) for team in WORKSPACE}
    for token in tokens.values():
        assert (await _session_of(proxy, token))["workspace_id"] in ("dev", "production")
    return Pinned(proxy, tokens)


async def _session_of(proxy: Proxy, token: str) -> dict[str, Any]:
    return dict(await proxy.get_json("/api/4.0/session", token))


def _request(method: str, target: bytes, token: str, body: bytes, extra: bytes = b"") -> bytes:
    head = (
        method.encode() + b" " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n"
        b"Authorization: token " + token.encode() + b"\r\n" + extra
    )
    if body or method in ("POST", "PUT", "PATCH"):
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"Connection: close\r\n\r\n" + body


# --- critical: a '#' in the target ----------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    team: str
    method: str
    target: bytes
    body: bytes
    effect: str
    """What reached Looker before the fix."""


FRAGMENTS: Final = (
    [
        Fragment("finance", "PATCH", t, b'{"workspace_id":"dev"}', "team session moved to dev")
        for t in (b"/api/4.0/session#x", b"/api/4.0/session#?a=b", b"/api/3.1/session#")
    ]
    + [
        Fragment("ops", "POST", t, b"", "raw sudo token for user 2 without allow_sudo")
        for t in (b"/api/4.0/login/2#/x", b"/api/4.0/login/2#/a?x")
    ]
    + [
        Fragment(
            "analytics",
            "PUT",
            b"/api/4.0/projects/sales/git_branch#x",
            b'{"name":"master"}',
            "pinned branch switched",
        ),
        Fragment(
            "finance", "DELETE", b"/api/4.0/logout#x", b"", "team's Looker session logged out"
        ),
    ]
)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", FRAGMENTS, ids=lambda c: f"{c.method} {c.target.decode()}")
async def test_a_fragment_in_the_target_is_refused_before_any_policy(
    looker: LookerEmulator, pinned: Pinned, case: Fragment, path: str
) -> None:
    """`#` anywhere in the target: 400 Looker-shaped, nothing reaches Looker, the pin holds."""
    proxy, token = pinned.proxy, pinned.tokens[case.team]
    mark, logins = len(looker.audit), looker.logins
    answer = await raw_exchange(
        proxy.base_url, _request(case.method, case.target, token, case.body, PATHS[path])
    )
    reached = looker.audit[mark:]
    session = await _session_of(proxy, token)
    branch = await proxy.get_json("/api/4.0/projects/sales/git_branch", pinned.tokens["analytics"])
    record(
        "attack",
        f"{case.method} {case.target.decode()} as {case.team} ({path})",
        f"400 Looker-shaped, nothing forwarded (was: {case.effect})",
        status=answer.describe(),
        answer=answer.message,
        looker=audit_summary(e for e in reached if not e.path.endswith("/session")),
        afterwards=f"session in {session['workspace_id']}, analytics on {branch['name']}",
    )
    assert answer.status == 400, answer
    assert answer.looker_shaped
    assert "fragment" in answer.message
    assert [(e.method, e.target) for e in reached if e.method != "GET"] == []
    assert session["workspace_id"] == WORKSPACE[case.team]
    assert branch["name"] == "feature-x"
    assert looker.logins == logins, "the team's session was ended and had to be re-pinned"


# --- the differential property: what Looker receives is what the policy classified ----------------

_PIECES: Final = [
    "session",
    "SESSION",
    "%73ession",
    "session.json",
    "login",
    "login/2",
    "logout",
    "projects/sales/git_branch",
    "user",
    "versions",
    "queries",
    "2",
    "",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%252f",
    "%23",
    "%3f",
    ";x=1",
    ";",
    "#",
    "#x",
    "#?a=b",
    "?",
    "?a=b",
    "?a=b#c",
    "%",
    "%zz",
    "\\",
    "@",
    ":",
    "~",
    "é",
    "\u2215",
    "\x00",
    "\t",
    "\x7f",
    " ",
    "[1]",
    "|",
]
_PREFIXES: Final = ["/api/4.0/", "/api/3.1/", "//api/4.0/", "/api/4.0//", "/API/4.0/", "/", ""]
_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_PROTECTED: Final = ("session", "login", "logout", "git_branch")


_ACTED: Final = {
    "PATCH session": re.compile(r"/api/[^/]+/session"),
    "sudo": re.compile(r"/api/[^/]+/login/[^/]+"),
    "logout": re.compile(r"/api/([^/]+/)?logout"),
    "branch switch": re.compile(r"/api/[^/]+/projects/[^/]+/git_branch"),
}
_ACTED_METHODS: Final = {
    "PATCH session": ("PATCH",),
    "sudo": ("POST",),
    "logout": ("DELETE",),
    "branch switch": ("PUT", "POST"),
}


def _looker_acted_on(method: str, decoded: str) -> str | None:
    """The pin-breaking endpoint Looker (the emulator, through yarl) routed a call to, if any
    (read generously: any case, repeated slashes, a trailing slash or ``.json``)."""
    path = re.sub("/+", "/", decoded.lower()).rstrip("/").removesuffix(".json")
    for name, pattern in _ACTED.items():
        if method in _ACTED_METHODS[name] and pattern.fullmatch(path):
            return name
    return None


@dataclass
class Differential:
    examples: int = 0
    refused: int = 0
    forwarded: int = 0
    mismatches: list[str] | None = None


async def _one_target(
    looker: LookerEmulator, url: str, token: str, method: str, target: bytes, extra: bytes
) -> tuple[bool, list[str]]:
    """(forwarded?, problems) for one request sent byte for byte."""
    mark = len(looker.audit)
    body = b'{"workspace_id":"dev","name":"master"}' if method in ("PATCH", "PUT", "POST") else b""
    await raw_http(url, _request(method, target, token, body, extra))  # (HEAD: read to EOF)
    reached = looker.audit[mark:]
    if not reached:
        return False, []
    problems = []
    # llhttp reads the request line on whitespace boundaries (RFC 9112 3 allows it): spaces
    # around the target are separators, not part of it; a space inside splits the line.
    seen = target.strip(b" ")
    try:
        parsed = parse_target(seen.decode("latin-1"))
    except BadRequest:
        return True, [f"{method} {target!r}: not origin-form, yet forwarded: {reached}"]
    route = classify(method, parsed.path, ("4.0", "3.1"))
    expected = upstream_target("", route, parsed)
    for entry in reached:
        if route.action not in (Action.FORWARD, Action.VERSIONS, Action.PATCH_SESSION):
            # (BRANCH_SWITCH included: analytics pins a branch and may not switch it.)
            problems.append(f"{method} {target!r}: {route.action} reached Looker: {entry}")
        wanted = "GET" if route.action is Action.PATCH_SESSION else method
        if (entry.method, entry.target) != (wanted, expected):
            problems.append(f"{method} {target!r}: Looker got {entry.target!r}, not {expected!r}")
        try:
            back = classify(entry.method, parse_target(entry.target).path, ("4.0", "3.1"))
        except BadRequest:
            problems.append(f"{method} {target!r}: Looker got {entry.target!r}, not origin-form")
        else:
            if back.action is not route.action and route.action is not Action.PATCH_SESSION:
                problems.append(f"{method} {target!r}: Looker's target is a {back.action}")
        acted = _looker_acted_on(entry.method, entry.path)
        if acted is not None:
            problems.append(f"{method} {target!r}: Looker acted on {acted} ({entry.path!r})")
        if entry.workspace not in (None, "dev"):
            problems.append(f"{method} {target!r}: analytics' call ran in {entry.workspace}")
    return True, problems


def test_property_the_path_looker_receives_is_the_path_classified() -> None:
    """Property: for any target, on either path, the proxy refuses it or Looker receives exactly
    the classified path and parsed query, never a pin-breaking endpoint."""
    stats = Differential(mismatches=[])
    loop = asyncio.new_event_loop()
    looker = LookerEmulator()
    looker.git.create(ADMIN, "sales", "feature-x", None)

    async def start() -> tuple[TestServer, ProxyServer, str, str]:
        emulator = await _served(looker.app)
        base = f"http://127.0.0.1:{emulator.port}"
        raw = raw_config(base, teams=("analytics",))
        raw["teams"]["analytics"]["git_branch"] = BRANCH
        config = parse_config(raw, env=ENV)
        proxy = ProxyServer(create_app(config), host="127.0.0.1")
        await proxy.start_server()
        url = f"http://127.0.0.1:{proxy.port}"
        form = b"client_id=analytics-caller&client_secret=analytics-caller-secret"
        answer = await raw_exchange(
            url,
            b"POST /api/4.0/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/x-www-form-urlencoded\r\nContent-Length: %d\r\nConnection: close\r\n"
            b"\r\n" % len(form) + form,
        )
        token = str(json.loads(answer.body)["access_token"])
        warm = await raw_exchange(url, _request("GET", b"/api/4.0/user", token, b""))
        assert warm.status == 200
        return emulator, proxy, url, token

    emulator, proxy, url, token = loop.run_until_complete(start())
    logins = looker.logins
    try:

        @settings(
            database=None,
            deadline=None,
            derandomize=True,
            max_examples=1000,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            method=st.sampled_from(_METHODS),
            prefix=st.sampled_from(_PREFIXES),
            pieces=st.lists(
                st.one_of(st.sampled_from(_PIECES), st.text(max_size=3)), min_size=1, max_size=5
            ),
            joiner=st.sampled_from(["/", "", "/", "?"]),
            path=st.sampled_from(list(PATHS)),
        )
        def check(method: str, prefix: str, pieces: list[str], joiner: str, path: str) -> None:
            raw = prefix + joiner.join(pieces)
            target = "".join(c for c in raw if c not in "\r\n").encode()
            if not target.strip():
                target = b"/"
            forwarded, problems = loop.run_until_complete(
                _one_target(looker, url, token, method, target, PATHS[path])
            )
            stats.examples += 1
            stats.forwarded += forwarded
            stats.refused += not forwarded
            assert stats.mismatches is not None
            stats.mismatches.extend(problems)
            assert problems == []

        check()
    finally:
        loop.run_until_complete(proxy.close())
        loop.run_until_complete(emulator.close())
        loop.close()
    record(
        "attack",
        "request targets drawn by hypothesis (1,000 examples, both ways of calling)",
        "refused, or Looker receives exactly the classified path and parsed query",
        status="each refused or forwarded (both outcomes over 20 times)"
        if stats.forwarded > 20 and stats.refused > 20
        else f"{stats.refused} refused, {stats.forwarded} forwarded",
        answer="-",
        looker=f"{len(stats.mismatches or [])} differences between what was classified and sent",
        afterwards=f"team re-logins: {looker.logins - logins}",
    )
    assert stats.examples >= 1000
    assert stats.forwarded > 20  # both outcomes were exercised
    assert stats.refused > 20
    assert looker.logins == logins


async def _served(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def test_every_fragment_case_fails_closed_in_the_pure_parser() -> None:
    """The grammar alone refuses every table row, so no path can classify them differently."""
    for case in FRAGMENTS:
        with pytest.raises(BadRequest, match="fragment"):
            parse_target(case.target.decode())


# --- H1: what one connection may hold queued is bounded, headers included -------------------------


async def _process_token(looker: LookerEmulator, proc: ProxyProcess) -> tuple[str, int]:
    """A caller token of analytics and a saved query id, through the proxy process."""
    async with aiohttp.ClientSession() as http:
        form = {"client_id": "analytics-caller", "client_secret": "analytics-caller-secret"}
        async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
            token = str((await resp.json())["access_token"])
        query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
        headers = {"Authorization": f"token {token}"}
        async with http.post(f"{proc.url}/api/4.0/queries", json=query, headers=headers) as r:
            return token, int((await r.json())["id"])


async def test_pipelined_heads_behind_an_unread_answer_are_bounded(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """An unread download followed by pipelined requests with 100 headers of 8,000 bytes each:
    the proxy stops reading that connection instead of holding what it sends (RSS stays flat)."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    try:
        token, qid = await _process_token(looker, proc)
        download = (
            f"GET /api/4.0/queries/{qid}/run/csv?emulator_bytes={256 * MIB} HTTP/1.1\r\n"
            f"Host: x\r\nAuthorization: token {token}\r\n\r\n"
        ).encode()
        pad = b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"p" * 8000) for i in range(100))
        head = b"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token %s\r\n%s\r\n" % (
            token.encode(),
            pad,
        )
        baseline = proc.rss_bytes()
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.transport.set_write_buffer_limits(high=0)
        writer.write(download)
        sent = 0
        for _ in range(200):  # 160 MB if the proxy took it all
            writer.write(head)
            try:
                await asyncio.wait_for(writer.drain(), 3)
            except TimeoutError:
                break  # the proxy stopped reading: what we wrote stays in the kernel
            sent += 1
        held = proc.rss_bytes() - baseline
        writer.transport.abort()
        record(
            "attack",
            "H1: unread download + pipelined GETs with 100 headers of 8,000 bytes",
            "the connection stops being read; proxy RSS grows by less than 32 MiB",
            status="stopped reading within 100 of 200 requests" if sent < 100 else f"read {sent}",
            answer="-",
            looker="-",
            afterwards="RSS growth < 32 MiB" if held < 32 * MIB else f"RSS +{held // MIB} MiB",
        )
        assert sent < 100, f"the proxy read {sent} requests of 800 kB behind an unread answer"
        assert held < 32 * MIB, f"RSS grew by {held / MIB:.0f} MiB"
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{proc.url}/api/4.0/user", headers={"Authorization": f"token {token}"}
            ) as resp,
        ):
            assert resp.status == 200
        del reader
    finally:
        await proc.kill()


# --- M3/M4: every request body has an idle and an overall deadline --------------------------------


def _stall_cases(token: str) -> dict[str, bytes]:
    """Heads whose bodies never (fully) arrive, by path."""
    auth = b"Authorization: token " + token.encode() + b"\r\n"
    return {
        "login": b"POST /api/4.0/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
        b"application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nclient_id=",
        "POST Content-Length": b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        "POST chunked": b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
    }


@pytest.mark.parametrize("case", ["login", "POST Content-Length", "POST chunked"])
async def test_a_stalled_body_is_answered_408_and_closed(
    looker: LookerEmulator, make_proxy: MakeProxy, case: str
) -> None:
    """A body that stops arriving: 408 at limits.body_idle_timeout_s, then the connection
    closes, on every path — an unauthenticated login included."""
    proxy = await make_proxy(looker, limits={"body_idle_timeout_s": 0.3, "body_timeout_s": 30})
    token = await _login(proxy, "analytics")
    await _session_of(proxy, token)
    request = _stall_cases(token)[case]
    reader, writer = await asyncio.open_connection(proxy.client.host, proxy.client.port)
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            answer = await read_answer(reader)
            rest = await reader.read()
    finally:
        writer.close()
    record(
        "attack",
        f"M3: a body that never arrives ({case})",
        "408 Looker-shaped at body_idle_timeout_s, then closed",
        status=answer.describe(),
        answer=answer.message,
        looker="-",
        afterwards="closed" if rest == b"" else "open",
    )
    assert answer.status == 408, answer
    assert answer.looker_shaped
    assert rest == b""


@pytest.mark.parametrize("path", ["content-length", "chunked"])
async def test_a_trickled_body_meets_the_overall_deadline(
    looker: LookerEmulator, make_proxy: MakeProxy, path: str
) -> None:
    """A body trickled a byte at a time (never idle) is cut at limits.body_timeout_s with 408,
    and the team's concurrency slot is free again."""
    proxy = await make_proxy(
        looker,
        limits={"body_idle_timeout_s": 5, "body_timeout_s": 0.6},
        team_settings={"analytics": {"max_concurrency": 1}},
    )
    token = await _login(proxy, "analytics")
    await _session_of(proxy, token)
    framing = (
        b"Content-Length: 1000\r\n\r\n"
        if path == "content-length"
        else b"Transfer-Encoding: chunked\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(proxy.client.host, proxy.client.port)
    writer.write(
        b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\nAuthorization: token "
        + token.encode()
        + b"\r\nContent-Type: application/json\r\n"
        + framing
    )
    answered = asyncio.ensure_future(read_answer(reader))
    sent = 0
    try:
        async with asyncio.timeout(10):
            while not answered.done() and sent < 400:
                writer.write(b"x" if path == "content-length" else b"1\r\nx\r\n")
                sent += 1
                await asyncio.wait([answered], timeout=0.05)
            answer = await answered
    finally:
        writer.close()
    again = await proxy.call("GET", "/api/4.0/user", token)
    record(
        "attack",
        f"M4: a body trickled forever ({path})",
        "408 at limits.body_timeout_s; the team's slot is free again",
        status=answer.describe(),
        answer=answer.message,
        looker="-",
        afterwards=f"next call: {again.status}",
    )
    assert answer.status == 408, answer
    assert sent < 100, "the deadline did not cut the trickle"
    assert again.status == 200


# --- M5: HTTP/1.0 without Host --------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_http_1_0_without_host_is_served(pinned: Pinned, path: str) -> None:
    """HTTP/1.0 may omit Host (Looker's host is the proxy's business): served, with an id."""
    token = pinned.tokens["analytics"]
    request = (
        b"GET /api/4.0/user HTTP/1.0\r\nAuthorization: token "
        + token.encode()
        + b"\r\n"
        + PATHS[path]
        + b"\r\n"
    )
    answer = await raw_exchange(pinned.proxy.base_url, request)
    record(
        "attack",
        f"M5: HTTP/1.0 without Host ({path})",
        "served (200) with an X-Request-Id",
        status=answer.describe(),
        answer=answer.message,
        looker="-",
        afterwards="-",
    )
    assert answer.status == 200, answer
    assert "X-Request-Id" in answer.headers
    assert json.loads(answer.body)["id"] == "2"


# --- M6: 100 Continue only for the request being answered, after the decision ---------------------


async def test_100_continue_never_lands_inside_an_earlier_answer(
    looker: LookerEmulator, pinned: Pinned
) -> None:
    """A pipelined POST with Expect: 100-continue behind a large download: the download's body
    arrives whole; the interim answer only comes once it is that request's turn."""
    proxy, token = pinned.proxy, pinned.tokens["analytics"]
    query = await proxy.call(
        "POST", "/api/4.0/queries", token, json={"model": "sales", "view": "orders"}
    )
    qid = (await query.json())["id"]
    size = 4 * MIB
    auth = b"Authorization: token " + token.encode() + b"\r\n"
    download = (
        b"GET /api/4.0/queries/%s/run/csv?emulator_bytes=%d HTTP/1.1\r\nHost: x\r\n%s\r\n"
        % (
            str(qid).encode(),
            size,
            auth,
        )
    )
    body = b'{"model":"sales","view":"orders"}'
    post = (
        b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    )
    reader, writer = await asyncio.open_connection(proxy.client.host, proxy.client.port)
    try:
        writer.write(download + post)
        first = await _read_raw_response(reader)
        writer.write(body)
        rest = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    record(
        "attack",
        "M6: Expect: 100-continue pipelined behind a 4 MiB download",
        "the download arrives intact; 100 Continue only after it",
        status=first.split(b"\r\n", 1)[0].decode(),
        answer="-",
        looker="-",
        afterwards=rest.split(b"\r\n", 1)[0].decode(),
    )
    assert b"100 Continue" not in first
    _, _, payload = first.partition(b"\r\n\r\n")
    assert len(payload) == size
    assert rest.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), rest[:80]


@pytest.mark.parametrize("path", PATHS)
async def test_100_continue_is_not_sent_for_a_refused_request(pinned: Pinned, path: str) -> None:
    """A request the policy refuses (no credentials; a body over the limit) gets its final
    answer without a 100 Continue first, so the caller never uploads a body that is refused."""
    cases = {
        "no credentials": b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\n",
        "a switch of a pinned branch": b"PUT /api/4.0/projects/sales/git_branch HTTP/1.1\r\n"
        + b"Host: x\r\nAuthorization: token "
        + pinned.tokens["analytics"].encode()
        + b"\r\n",
    }
    for name, head in cases.items():
        request = (
            head
            + PATHS[path]
            + b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + b"Content-Length: 22\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection(
            pinned.proxy.client.host, pinned.proxy.client.port
        )
        try:
            writer.write(request)
            status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        finally:
            writer.close()
        record(
            "attack",
            f"M6: Expect: 100-continue on a refused request: {name} ({path})",
            "the refusal comes first; no 100 Continue",
            status=status_line.decode().strip(),
            answer="-",
            looker="-",
            afterwards="-",
        )
        assert b" 100 " not in status_line, (name, status_line)


async def _read_raw_response(reader: asyncio.StreamReader) -> bytes:
    """One response exactly as it came (interim answers included), framed by Content-Length or
    chunks; chunked bodies are returned decoded after the head."""
    raw = b""
    while True:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        raw += head
        if not head.startswith(b"HTTP/1.1 1"):
            break
    fields = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if b"content-length" in fields:
        return raw + await asyncio.wait_for(reader.readexactly(int(fields[b"content-length"])), 10)
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        raw += await asyncio.wait_for(reader.readexactly(size), 10)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")
    return raw


# --- L2, L3: chunked bodies -----------------------------------------------------------------------


async def test_a_malformed_chunked_body_is_refused_without_a_traceback(
    pinned: Pinned, caplog: pytest.LogCaptureFixture
) -> None:
    """`2\\n{}` and a bare LF after chunk data: 400 Looker-shaped, and nothing logged at error
    level by the proxy or by asyncio (no 'Fatal error on transport')."""
    token = pinned.tokens["analytics"]
    caplog.set_level(logging.WARNING)
    with structlog.testing.capture_logs() as events:
        answers = []
        for body in (b"2\n{}\r\n0\r\n\r\n", b"2\r\n{}\n0\r\n\r\n"):
            request = (
                b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\nAuthorization: token "
                + token.encode()
                + b"\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
                + body
            )
            answers.append(await raw_exchange(pinned.proxy.base_url, request))
        assert await _session_of(pinned.proxy, token)
    errors = [e for e in events if e.get("log_level") in ("error", "critical")]
    fatal = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    record(
        "attack",
        "L2: malformed chunked bodies (2\\n{} and a bare LF)",
        "400 Looker-shaped; no traceback logged",
        status=", ".join(a.describe() for a in answers),
        answer=answers[0].message,
        looker="-",
        afterwards=f"{len(errors) + len(fatal)} error lines logged",
    )
    assert [a.status for a in answers] == [400, 400]
    assert all(a.looker_shaped for a in answers)
    assert errors == []
    assert fatal == []


async def test_chunked_trailers_are_never_headers(spy: SpyLooker, spy_proxy: Proxy) -> None:
    """An Authorization sent only as a trailer does not authenticate; other trailers are not
    forwarded to Looker. Each request is pipelined behind another, so it is parsed whole,
    trailers included, before its turn comes."""
    token = await spy_proxy.login("analytics")
    await (await spy_proxy.call("GET", "/api/4.0/user", token)).read()
    auth = b"Authorization: token " + token.encode() + b"\r\n"
    ahead = b"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    chunked = (
        b"POST /api/4.0/queries HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
    )
    only_trailer = chunked + b"\r\n2\r\n{}\r\n0\r\n" + auth + b"\r\n"
    with_trailer = chunked + auth + b"\r\n2\r\n{}\r\n0\r\nX-Trailer-Secret: leaked\r\n\r\n"
    mark = len(spy.seen)
    unauthenticated = await raw_answers(spy_proxy.base_url, ahead + only_trailer)
    forwarded = await raw_answers(spy_proxy.base_url, ahead + with_trailer)
    names = [k.lower() for _, _, headers in spy.seen[mark:] for k, _ in headers]
    statuses = [a.status for a in unauthenticated + forwarded]
    record(
        "attack",
        "L3: chunked trailers (Authorization only as a trailer; another trailer)",
        "401; trailers never reach Looker as headers",
        status=", ".join(str(s) for s in statuses),
        answer=unauthenticated[-1].message,
        looker=f"{len(spy.seen) - mark} calls; trailer upstream: {b'x-trailer-secret' in names}",
        afterwards="-",
    )
    assert statuses == [200, 401, 200, 200]
    assert b"x-trailer-secret" not in names


# --- L4, L5: headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
async def test_the_headers_the_proxy_adds_count_in_the_limit(
    looker: LookerEmulator, pinned: Pinned, path: str
) -> None:
    """A request inside limits.max_headers (128) that would exceed it once the proxy adds its
    own headers is a Looker-shaped 431 from the proxy, never Looker's plain-text 400."""
    token = pinned.tokens["analytics"]
    extra = PATHS[path]
    base = b"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token " + token.encode()
    fixed = 3 + (1 if extra else 0)  # Host, Authorization, Connection (and X-Note)
    statuses = {}
    for total in (122, 127):
        pad = b"".join(b"X-Pad-%03d: p\r\n" % i for i in range(total - fixed))
        answer = await raw_exchange(
            pinned.proxy.base_url, base + b"\r\n" + extra + pad + b"Connection: close\r\n\r\n"
        )
        statuses[total] = answer
    record(
        "attack",
        f"L4: 122 and 127 header lines ({path})",
        "122: served; 127 (inside max_headers, over it with the proxy's own): 431 Looker-shaped",
        status=", ".join(f"{n}: {a.status}" for n, a in statuses.items()),
        answer=statuses[127].message,
        looker="-",
        afterwards="-",
    )
    assert statuses[122].status == 200, statuses[122]
    assert statuses[127].status == 431, statuses[127]
    assert statuses[127].looker_shaped


CLIENT_IP_HEADERS: Final = (
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "X-Original-Method",
    "X-Override-URL",
    "Via",
    "Max-Forwards",
    "CF-Connecting-IP",
    "X-Cluster-Client-IP",
    "Fastly-Client-IP",
    "X-Original-Host",
    "X-Host",
    "X-Forwarded",
)


@pytest.mark.parametrize("path", PATHS)
async def test_client_ip_and_rerouting_headers_never_reach_looker(
    spy: SpyLooker, spy_proxy: Proxy, path: str
) -> None:
    """Caller-supplied client-IP and re-routing headers are dropped like X-Forwarded-*."""
    token = await spy_proxy.login("analytics")
    await (await spy_proxy.call("GET", "/api/4.0/user", token)).read()
    sent = b"".join(f"{name}: 203.0.113.9\r\n".encode() for name in CLIENT_IP_HEADERS)
    mark = len(spy.seen)
    answer = await raw_exchange(
        spy_proxy.base_url,
        b"GET /api/4.0/user HTTP/1.1\r\nHost: x\r\nAuthorization: token "
        + token.encode()
        + b"\r\n"
        + PATHS[path]
        + sent
        + b"Connection: close\r\n\r\n",
    )
    received = {k.decode().lower() for _, _, headers in spy.seen[mark:] for k, _ in headers}
    leaked = sorted(n for n in CLIENT_IP_HEADERS if n.lower() in received)
    record(
        "attack",
        f"L5: client-IP and re-routing headers ({path})",
        "dropped before Looker",
        status=answer.describe(),
        answer="-",
        looker=f"reached Looker: {', '.join(leaked) or 'none'}",
        afterwards="-",
    )
    assert answer.status == 200, answer
    assert leaked == []


# --- L6: HTTP versions ----------------------------------------------------------------------------


async def test_other_http_versions_are_answered_at_once(pinned: Pinned) -> None:
    """HTTP/2.0 on an HTTP/1 connection: 505; an HTTP/0.9 line: 400 — both at once, not after
    the idle timeout, and nothing reaches Looker."""
    token = pinned.tokens["analytics"].encode()
    cases = {
        "HTTP/2.0": b"GET /api/4.0/user HTTP/2.0\r\nHost: x\r\nAuthorization: token "
        + token
        + b"\r\n\r\n",
        "HTTP/0.9 line": b"GET /api/4.0/user\r\n",
        "HTTP/0.9 line and a blank line": b"GET /api/4.0/user\r\n\r\n",
    }
    for name, request in cases.items():
        answer = await raw_exchange(pinned.proxy.base_url, request, wait_s=3)
        record(
            "attack",
            f"L6: {name}",
            "505 (HTTP/2.0) or 400 (HTTP/0.9) at once, Looker-shaped",
            status=answer.describe(),
            answer=answer.message,
            looker="-",
            afterwards="-",
        )
        assert answer.status == (505 if name == "HTTP/2.0" else 400), (name, answer)
        assert answer.looker_shaped

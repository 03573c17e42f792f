"""Attacks on the pin, sent byte for byte on raw sockets (issue 17's findings, as regressions).

Every case runs on both kinds of call the proxy has: ``fast`` (a warm managed session, a plain
request the front forwards itself) and ``relayed`` (the same request with a non-ASCII header
value, which the front hands to the application). For each, the test asserts what the caller got,
what reached Looker (the emulator's audit, which records each target exactly as it arrived) and
that the team's session is still where it was pinned. Cases are recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from harness import ENV, Proxy, ProxyServer, raw_config, raw_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability import audit_summary, install, raw_exchange, record

from workspace_proxy.app import create_app
from workspace_proxy.config import parse_config
from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator
from workspace_proxy.errors import BadRequest
from workspace_proxy.routes import Action, classify, parse_target, upstream_target

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
"""A non-ASCII (UTF-8) header value: the front relays such a call to the application."""
PATHS: Final = {"fast": b"", "relayed": RELAY}


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


# --- critical: a '#' in the target ---------------------------------------------------------------


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
    try:
        parsed = parse_target(target.decode("latin-1"))
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
        f"request targets drawn by hypothesis ({stats.examples} derandomized examples, both paths)",
        "refused, or Looker receives exactly the classified path and parsed query",
        status=f"{stats.refused} not forwarded, {stats.forwarded} forwarded",
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

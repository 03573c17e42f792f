"""The fault matrix: Looker misbehaving at every stage, and what callers see.

Each scenario defines the caller-visible outcome and asserts it, proves that zero calls ran in the
wrong workspace (``assert_every_call_pinned``), that the proxy recovers without a restart, and
that it does not hammer Looker while Looker is failing (login attempts counted over a burst).
Some scenarios also exist in test_sessions.py; here they run under one configuration built for
counting and every outcome is recorded in docs/reliability.md (see reliability.py).

Configuration: ``retry.deadline_s: 0`` (a pin flight makes exactly one attempt, so attempts can
be counted), small timeouts (2 s per session call, 2 s read silence while forwarding), and fake
clocks for the proxy (backoff, session lifetime) and the emulator (token expiry), so time only
moves when a test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import pytest
from harness import FakeClock, Proxy, assert_every_call_pinned, forwarded
from pytest_aiohttp import AiohttpClient, AiohttpServer
from reliability import audit_summary, install, record, serve_proxy, short

from workspace_proxy.emulator import AuditEntry, LookerEmulator
from workspace_proxy.fixes import PERMANENT_FIRST_S

pytestmark = pytest.mark.timeout(60)
MakeLooker = Callable[..., Awaitable[LookerEmulator]]

USER: Final = "/api/4.0/user"
A, B = "analytics", "finance"
MATRIX: Final = {
    "retry": {"interval_s": 0.1, "deadline_s": 0},
    "timeouts": {"connect_s": 2, "read_s": 2, "session_s": 2},
}
LATER: Final = 60.0
"""Seconds the proxy clock jumps to leave any backoff in these scenarios."""
_NO_SESSION: Final = (
    "workspace-proxy could not obtain a Looker session pinned to the team's workspace: "
)


@pytest.fixture(scope="session", autouse=True)
def _reliability_table(pytestconfig: pytest.Config) -> None:
    """Write docs/reliability.md at the end of a complete run (see reliability.py)."""
    install(pytestconfig)


@dataclass
class Stack:
    looker: LookerEmulator
    proxy: Proxy
    clock: FakeClock
    """The proxy's clock (backoff, session deadlines)."""
    looker_clock: FakeClock
    """The emulator's clock (token expiry)."""


@pytest.fixture
async def stack(make_looker: MakeLooker, aiohttp_client: AiohttpClient) -> Stack:
    looker_clock, clock = FakeClock(), FakeClock()
    looker = await make_looker(clock=looker_clock)
    proxy = await serve_proxy(aiohttp_client, looker.base_url, clock=clock, looker=MATRIX)
    return Stack(looker, proxy, clock, looker_clock)


@dataclass(frozen=True, slots=True)
class Seen:
    status: int
    retry_after: str
    message: str


async def call(proxy: Proxy, token: str, path: str = USER) -> Seen:
    resp = await proxy.call("GET", path, token)
    text = await resp.text()
    message = ""
    if text.startswith("{"):
        message = str(json.loads(text).get("message", ""))
    return Seen(resp.status, resp.headers.get("Retry-After", ""), message)


async def burst(proxy: Proxy, token: str, n: int = 20) -> list[Seen]:
    """``n`` concurrent calls."""
    return list(await asyncio.gather(*(call(proxy, token) for _ in range(n))))


def statuses(seen: list[Seen]) -> str:
    """``20x 503 Retry-After 1`` (stable order)."""
    counts = Counter((s.status, s.retry_after) for s in seen)
    return ", ".join(
        f"{n}x {status}" + (f" Retry-After {ra}" if ra else "")
        for (status, ra), n in sorted(counts.items())
    )


def pinned(looker: LookerEmulator) -> str:
    return f"{assert_every_call_pinned(looker)} calls checked, all pinned"


# --- Looker refuses or fails the team's login ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"), [(500, None), (502, None), (503, 5), (429, 7)], ids=str
)
async def test_login_failing(stack: Stack, status: int, retry_after: int | None) -> None:
    """Login 5xx/429: 503 with Retry-After >= Looker's, one attempt per burst; recovers."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    looker.faults.login_failures = 1000
    looker.faults.login_failure_status = status
    looker.faults.login_retry_after = retry_after
    first = await burst(proxy, token)
    attempts = looker.login_attempts
    second = await burst(proxy, token)
    extra = looker.login_attempts - attempts
    nothing = forwarded(looker)
    looker.faults.reset()
    stack.clock.advance(LATER)
    after = await call(proxy, token)
    hint = f", Retry-After {retry_after}" if retry_after else ""
    record(
        "fault",
        f"login answers {status}{hint}",
        "503 + Retry-After (>= Looker's), nothing forwarded; 1 attempt per burst; recovers",
        status=statuses(first),
        answer=short(first[0].message),
        looker=f"login attempts: {attempts} for 20 calls, then {extra} for 20 more; "
        + f"forwarded: {audit_summary(nothing)}",
        afterwards=f"recovered: {after.status}; {pinned(looker)}",
    )
    want = str(max(1, retry_after or 0))
    assert {(s.status, s.retry_after) for s in first + second} == {(503, want)}
    assert short(first[0].message) == (
        f"Looker answered the team's login with HTTP {status}. Nothing was forwarded; retry later."
    )
    assert (attempts, extra) == (1, 0)
    assert nothing == []
    assert after.status == 200


class Blackhole:
    """A TCP listener that accepts and at once drops every connection, counting them."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._drop, "127.0.0.1", port)

    async def _drop(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def blackhole() -> AsyncIterator[Blackhole]:
    hole = Blackhole()
    yield hole
    if hole.server is not None and hole.server.is_serving():
        await hole.stop()


@pytest.mark.parametrize("down", ["refusing connections", "dropping connections"])
async def test_looker_down_at_start(
    aiohttp_client: AiohttpClient,
    aiohttp_server: AiohttpServer,
    unused_tcp_port: int,
    blackhole: Blackhole,
    down: str,
) -> None:
    """Looker down at start: 503 at once, one attempt per burst; recovers once it is up."""
    port = unused_tcp_port
    if down == "dropping connections":
        await blackhole.start(port)
    clock = FakeClock()
    proxy = await serve_proxy(
        aiohttp_client, f"http://127.0.0.1:{port}", clock=clock, looker=MATRIX
    )
    token = await proxy.login(A)
    first = await burst(proxy, token)
    tried = blackhole.connections
    second = await burst(proxy, token)
    extra = blackhole.connections - tried
    if blackhole.server is not None:
        await blackhole.stop()
    looker = LookerEmulator()
    await aiohttp_server(looker.app, port=port)
    clock.advance(LATER)
    after = await call(proxy, token)
    counted = down == "dropping connections"
    record(
        "fault",
        f"Looker down at start ({down})",
        "503 + Retry-After at once; 1 connection attempt per burst; recovers when Looker is up",
        status=statuses(first),
        answer=short(first[0].message),
        looker=(
            f"connections: {tried} for 20 calls, then {extra} for 20 more"
            if counted
            else "connection refused (not countable)"
        ),
        afterwards=f"recovered: {after.status}; {pinned(looker)}",
    )
    assert {(s.status, s.retry_after) for s in first + second} == {(503, "1")}
    assert short(first[0].message).startswith("Looker is unreachable for login")
    if counted:
        assert (tried, extra) == (1, 0)
    assert after.status == 200
    assert looker.logins == 1


async def test_looker_down_mid_run_then_restarted(
    make_looker: MakeLooker, aiohttp_client: AiohttpClient, aiohttp_server: AiohttpServer
) -> None:
    """Looker gone mid-run: pinned team 502, cold team 503; back again, both are served."""
    old = await make_looker()
    clock = FakeClock()
    proxy = await serve_proxy(aiohttp_client, old.base_url, clock=clock, looker=MATRIX)
    a, b = await proxy.login(A), await proxy.login(B)
    assert (await call(proxy, a)).status == 200
    assert old.server is not None
    port = old.server.port
    await old.server.close()
    pinned_team = await burst(proxy, a, 5)
    cold_team = await burst(proxy, b, 5)
    new = LookerEmulator()
    await aiohttp_server(new.app, port=port)
    clock.advance(LATER)
    after = [await call(proxy, t) for t in (a, b)]
    record(
        "fault",
        "Looker down mid-run, back restarted",
        "pinned team 502, cold team 503 (never hang); after restart both re-pin and are served",
        status=f"pinned team: {statuses(pinned_team)}; cold team: {statuses(cold_team)}",
        answer=f"{pinned_team[0].message} / {short(cold_team[0].message)}",
        looker=f"new Looker: {new.logins} logins",
        afterwards=f"recovered: {[s.status for s in after]}; "
        + f"{assert_every_call_pinned(old) + assert_every_call_pinned(new)} calls, all pinned",
    )
    assert {s.status for s in pinned_team} == {502}
    assert pinned_team[0].message == "workspace-proxy: Looker is unavailable."
    assert {(s.status, s.retry_after) for s in cold_team} == {(503, "1")}
    assert [s.status for s in after] == [200, 200]
    assert new.logins == 2


# --- timeouts at each stage ----------------------------------------------------------------------


async def test_login_times_out(stack: Stack) -> None:
    """Login hangs: every waiting caller gets 503 after session_s (one attempt); recovers."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    looker.faults.login_failures = 1
    looker.faults.login_timeout = True
    first = await burst(proxy, token, 10)
    attempts = looker.login_attempts
    nothing = forwarded(looker)
    stack.clock.advance(LATER)
    after = await call(proxy, token)
    record(
        "fault",
        "login hangs (timeouts.session_s 2 s)",
        "503 after the timeout for every waiting caller; 1 attempt; recovers",
        status=statuses(first),
        answer=short(first[0].message),
        looker=f"login attempts: {attempts} for 10 calls; forwarded: {audit_summary(nothing)}",
        afterwards=f"recovered: {after.status}; {pinned(looker)}",
    )
    assert {(s.status, s.retry_after) for s in first} == {(503, "1")}
    assert short(first[0].message).startswith("login to Looker timed out")
    assert attempts == 1
    assert nothing == []
    assert after.status == 200


async def test_patch_session_times_out(stack: Stack) -> None:
    """PATCH /session hangs: 503 after session_s, unpinned session logged out; recovers."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    hold = looker.faults.hold_session_patch = asyncio.Event()
    first = await burst(proxy, token, 10)
    logouts = [e for e in looker.audit if e.path.endswith("/logout")]
    nothing = forwarded(looker)
    hold.set()
    looker.faults.hold_session_patch = None
    stack.clock.advance(LATER)
    after = await call(proxy, token)
    record(
        "fault",
        "PATCH /session hangs (timeouts.session_s 2 s)",
        "503; the unpinned session is logged out, never used; recovers",
        status=statuses(first),
        answer=short(first[0].message),
        looker=f"logins: {looker.login_attempts - 1} before recovery; orphan logouts: "
        + f"{audit_summary(logouts)}; forwarded: {audit_summary(nothing)}",
        afterwards=f"recovered: {after.status}; {pinned(looker)}",
    )
    assert {(s.status, s.retry_after) for s in first} == {(503, "1")}
    assert short(first[0].message).startswith("PATCH /session to Looker timed out")
    assert [(e.method, e.status) for e in logouts] == [("DELETE", 204)]
    assert nothing == []
    assert after.status == 200


async def test_forwarded_call_times_out(stack: Stack) -> None:
    """A forwarded call slower than read_s: 504 Looker-shaped, session kept, next served."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    assert (await call(proxy, token)).status == 200
    logins = looker.logins
    looker.faults.latency_s = 3.0
    slow = await call(proxy, token)
    looker.faults.latency_s = 0.0
    after = await call(proxy, token)
    record(
        "fault",
        "forwarded call slower than timeouts.read_s (2 s)",
        "504 Looker-shaped; the session is kept (no re-login); next call served",
        status=str(slow.status),
        answer=slow.message,
        looker=f"new logins: {looker.logins - logins}",
        afterwards=f"next call: {after.status}",
    )
    assert slow.status == 504
    assert slow.message == "workspace-proxy: Looker did not answer in time."
    assert after.status == 200
    assert looker.logins == logins
    assert_every_call_pinned(looker)


# --- the pin fails -------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "422", "wrong workspace"])
async def test_patch_session_failing(stack: Stack, fault: str) -> None:
    """PATCH /session 500/422/other workspace: 503, nothing forwarded, orphan logged out."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    if fault == "wrong workspace":
        looker.faults.patch_session_wrong_workspace = "production"
    else:
        looker.faults.patch_session_failures = 1000
        looker.faults.patch_session_status = int(fault)
    first = await burst(proxy, token)
    attempts = looker.login_attempts
    second = await burst(proxy, token)
    extra = looker.login_attempts - attempts
    verify = [e for e in forwarded(looker) if (e.method, e.path) == ("GET", "/api/4.0/session")]
    callers = [e for e in forwarded(looker) if e not in verify]
    logouts = [e for e in looker.audit if e.path.endswith("/logout")]
    looker.faults.reset()
    stack.clock.advance(LATER)
    after = await call(proxy, token)
    record(
        "fault",
        f"PATCH /session answers {fault}",
        "503, no caller call forwarded, unpinned session logged out; 1 attempt per burst",
        status=statuses(first),
        answer=short(first[0].message),
        looker=f"login attempts: {attempts}, then {extra}; caller calls: {audit_summary(callers)};"
        + f" logouts: {audit_summary(logouts)}",
        afterwards=f"recovered: {after.status}; "
        + f"{len([e for e in forwarded(looker) if e not in verify])} caller calls, all pinned",
    )
    # A 422 is a configuration error (the user may not use the workspace): the next attempt
    # is fixes.PERMANENT_FIRST_S away, and the 503 says what to fix.
    want = str(round(PERMANENT_FIRST_S)) if fault == "422" else "1"
    assert {(s.status, s.retry_after) for s in first + second} == {(503, want)}
    if fault == "422":
        assert "This is a configuration error" in first[0].message
        assert "develop permission" in first[0].message
    expected = {
        "500": "Looker answered PATCH /session with HTTP 500",
        "422": "Looker answered PATCH /session with HTTP 422",
        "wrong workspace": "Looker reports workspace 'production' after PATCH /session to 'dev'",
    }[fault]
    assert short(first[0].message).startswith(expected)
    assert (attempts, extra) == (1, 0)
    assert callers == []
    assert [(e.user_id, e.workspace) for e in logouts] == [("2", "production")]
    assert after.status == 200
    for entry in forwarded(looker):
        assert entry in verify or entry.workspace == "dev", entry


# --- the session dies under the proxy ------------------------------------------------------------


async def test_tokens_revoked_mid_run(stack: Stack) -> None:
    """All tokens revoked: 20 concurrent calls all 200 via one re-login per team + replay."""
    looker, proxy = stack.looker, stack.proxy
    a, b = await proxy.login(A), await proxy.login(B)
    assert [(await call(proxy, t)).status for t in (a, b)] == [200, 200]
    looker.revoke_all_tokens()
    seen = list(await asyncio.gather(*(call(proxy, t) for t in [a, b] * 10)))
    record(
        "fault",
        "all tokens revoked mid-run (burst of 20, both teams)",
        "every call 200 via one re-login per team and a replay",
        status=statuses(seen),
        answer="-",
        looker=f"re-logins: {looker.logins - 2}",
        afterwards=pinned(looker),
    )
    assert [s.status for s in seen] == [200] * 20
    assert looker.logins == 4


def count_401(entries: list[AuditEntry]) -> int:
    return sum(e.status == 401 for e in entries)


async def test_tokens_expire_earlier_than_announced(stack: Stack) -> None:
    """Tokens die at 30 s though expires_in says 3600 s: every call 200 via re-login."""
    looker, proxy = stack.looker, stack.proxy
    looker.faults.token_ttl_override = 30
    token = await proxy.login(A)
    seen: list[Seen] = []
    for _ in range(3):
        seen.append(await call(proxy, token))
        seen.append(await call(proxy, token))
        stack.looker_clock.advance(31)  # the token is dead at Looker; the proxy cannot know
    record(
        "fault",
        "tokens die after 30 s though expires_in says 3600 s",
        "every call 200: a 401 triggers one re-login and a replay",
        status=statuses(seen),
        answer="-",
        looker=f"logins: {looker.logins}; {count_401(looker.audit)} calls answered 401",
        afterwards=pinned(looker),
    )
    assert [s.status for s in seen] == [200] * 6
    assert looker.logins == 3


async def test_looker_restart_loses_every_session(stack: Stack) -> None:
    """Looker restarts (all sessions gone): each team's next call re-pins and is served."""
    looker, proxy = stack.looker, stack.proxy
    a, b = await proxy.login(A), await proxy.login(B)
    before = [(await call(proxy, t)).status for t in (a, b)]
    logins = looker.logins
    looker.restart()
    after = [(await call(proxy, t)).status for t in (a, b, a, b)]
    record(
        "fault",
        "Looker restarts (every session gone)",
        "next calls 200 after one re-pin per team",
        status=", ".join(map(str, after)),
        answer="-",
        looker=f"logins: {logins} before the restart, {looker.logins - logins} after",
        afterwards=pinned(looker),
    )
    assert before == [200, 200]
    assert after == [200] * 4
    assert looker.logins == 4


async def test_refresh_failing_keeps_the_valid_session(stack: Stack) -> None:
    """A failed background refresh keeps the valid session serving; 503 once unusable."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    assert (await call(proxy, token)).status == 200
    looker.faults.login_failures = 1000
    looker.login_started.clear()
    stack.clock.advance(3600 - 200)  # past refresh_at (300 s before expiry), still usable
    during = [await call(proxy, token)]
    await asyncio.wait_for(looker.login_started.wait(), 10)
    during += [await call(proxy, token) for _ in range(5)]
    attempts = looker.login_attempts - 1
    stack.clock.advance(200)  # the session is no longer handed out
    expired = await call(proxy, token)
    looker.faults.reset()
    stack.clock.advance(LATER)
    after = await call(proxy, token)
    record(
        "fault",
        "background refresh fails while the session is still valid",
        "callers keep 200 on the old session; 503 only once it is unusable; recovers",
        status=f"{statuses(during)}; after expiry: {expired.status}",
        answer=short(expired.message),
        looker=f"refresh attempts while valid: {attempts}",
        afterwards=f"recovered: {after.status}; {pinned(looker)}",
    )
    assert [s.status for s in during] == [200] * 6
    assert attempts == 1
    assert expired.status == 503
    assert after.status == 200


# --- the answer breaks ---------------------------------------------------------------------------


async def test_connection_reset_mid_response(stack: Stack) -> None:
    """Looker drops the connection mid-body: the caller's stream breaks, never hangs."""
    looker, proxy = stack.looker, stack.proxy
    token = await proxy.login(A)
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    created = await proxy.call("POST", "/api/4.0/queries", token, json=query)
    qid = (await created.json())["id"]
    looker.faults.reset_after_bytes = 64 * 1024
    resp = await proxy.call(
        "GET", f"/api/4.0/queries/{qid}/run/csv?emulator_bytes={1024 * 1024}", token
    )
    outcome = "complete body"
    try:
        async with asyncio.timeout(10):  # bounded: a hang fails here
            await resp.read()
    except aiohttp.ClientPayloadError:
        outcome = "stream broken (ClientPayloadError)"
    finally:
        resp.release()
    after = await call(proxy, token)
    record(
        "fault",
        "Looker resets the connection mid-response",
        "headers 200, then the caller's stream breaks; never a hang or a short success",
        status=f"{resp.status}, then {outcome}",
        answer="-",
        looker=audit_summary(e for e in looker.audit if "/run/" in e.path),
        afterwards=f"next call: {after.status}; {pinned(looker)}",
    )
    assert resp.status == 200
    assert outcome == "stream broken (ClientPayloadError)"
    assert after.status == 200


async def test_failed_requests_never_leak_concurrency_slots(
    make_looker: MakeLooker, aiohttp_client: AiohttpClient
) -> None:
    """Requests ending in 413, 403, 400, a broken stream or 503 leak no concurrency slot."""
    looker = await make_looker()
    proxy = await serve_proxy(
        aiohttp_client,
        looker.base_url,
        looker=MATRIX,
        teams={A: {"max_concurrency": 2}},
        limits={"max_request_body_bytes": 200_000, "replay_buffer_bytes": 1000},
    )
    token = await proxy.login(A)
    query = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    qid = (await (await proxy.call("POST", "/api/4.0/queries", token, json=query)).json())["id"]
    outcomes: list[str] = []
    for _ in range(3):
        big = await proxy.call("POST", "/api/4.0/queries", token, data=b"x" * 300_000)
        other = await proxy.call(
            "PATCH", "/api/4.0/session", token, json={"workspace_id": "production"}
        )
        bad = await proxy.call("PATCH", "/api/4.0/session", token, data=b"{not json")
        looker.faults.reset_after_bytes = 1024
        broken = await proxy.call(
            "GET", f"/api/4.0/queries/{qid}/run/csv?emulator_bytes=65536", token
        )
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await broken.read()
        broken.release()
        looker.revoke_all_tokens()
        streamed = await proxy.call(
            "POST", "/api/4.0/queries", token, data=b'{"a":' + b" " * 5000 + b"1}"
        )
        outcomes += [str(r.status) for r in (big, other, bad, streamed)] + ["broken stream"]
    looker.faults.latency_s = 0.3
    both = await asyncio.gather(call(proxy, token), call(proxy, token))
    record(
        "fault",
        "15 failed requests (413, 403, 400, broken stream, 401 not replayable), limit 2",
        "no concurrency slot leaks: two concurrent calls afterwards are both served",
        status=", ".join(f"{n}x {o}" for o, n in sorted(Counter(outcomes).items())),
        answer="-",
        looker=pinned(looker),
        afterwards=f"two concurrent calls: {[s.status for s in both]}",
    )
    assert sorted(Counter(outcomes).items()) == [
        ("400", 3), ("403", 3), ("413", 3), ("503", 3), ("broken stream", 3)
    ]  # fmt: skip
    assert [s.status for s in both] == [200, 200]

"""Upstream session life: expiry, refresh, revocation, failing login/PATCH — the pin always holds.

Each test uses the real proxy app and the real emulator with scripted faults; the emulator's audit
proves that zero calls ran in the wrong workspace.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import FakeClock, Proxy, assert_every_call_pinned, assert_pin_before_use, forwarded

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]
MakeLooker = Callable[..., Awaitable[LookerEmulator]]


async def _status(proxy: Proxy, token: str, path: str = "/api/4.0/user") -> int:
    resp = await proxy.call("GET", path, token)
    await resp.read()
    return resp.status


async def test_short_token_lifetime_under_load(
    make_looker: MakeLooker, make_proxy: MakeProxy
) -> None:
    """Tokens live 2 s, 3 s of steady load: refreshed ahead of expiry, every call 200, pinned."""
    looker = await make_looker(token_ttl=2)
    proxy = await make_proxy(looker)
    tokens = {team: await proxy.login(team) for team in ("analytics", "finance")}
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + 3.0

    async def worker(team: str) -> None:
        while time.monotonic() < deadline:
            statuses[await _status(proxy, tokens[team])] += 1

    await asyncio.gather(*(worker(t) for t in ("analytics", "finance") for _ in range(8)))
    assert set(statuses) == {200}, statuses
    assert looker.logins >= 4, "sessions must have been renewed"
    for _ in range(100):  # a refresh may be between its login and its PATCH right now
        if looker.logins == looker.session_patches:
            break
        await asyncio.sleep(0.02)
    assert looker.logins == looker.session_patches
    assert assert_every_call_pinned(looker) == statuses[200]
    assert_pin_before_use(looker)


async def test_revoked_tokens_are_replaced_and_the_call_replayed(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """All Looker tokens revoked: concurrent calls get 200 via one re-login and a replay."""
    token = await proxy.login("analytics")
    assert await _status(proxy, token) == 200
    looker.revoke_all_tokens()
    statuses = await asyncio.gather(*(_status(proxy, token) for _ in range(20)))
    assert statuses == [200] * 20
    assert looker.logins == 2, "one re-login for all the concurrent 401s"
    assert assert_every_call_pinned(looker) >= 21
    assert_pin_before_use(looker)


async def test_replay_resends_a_small_body(looker: LookerEmulator, proxy: Proxy) -> None:
    """A POST with a small JSON body is replayed intact after a 401."""
    token = await proxy.login("analytics")
    assert await _status(proxy, token) == 200
    looker.revoke_all_tokens()
    body = {"model": "sales", "view": "orders", "fields": ["orders.count"]}
    resp = await proxy.call("POST", "/api/4.0/queries", token, json=body)
    assert resp.status == 200
    assert (await resp.json())["fields"] == ["orders.count"]
    statuses = [e.status for e in looker.audit if e.path.endswith("/queries")]
    assert statuses == [401, 200]


async def test_large_streamed_body_is_not_replayed(looker: LookerEmulator, proxy: Proxy) -> None:
    """A body too large to buffer is not replayed: 503 with Retry-After; the next try works."""
    token = await proxy.login("analytics")
    assert await _status(proxy, token) == 200
    looker.revoke_all_tokens()
    big = b'{"model": "sales", "view": "orders", "fields": [' + b'"a",' * 40_000 + b'"b"]}'
    resp = await proxy.call(
        "POST", "/api/4.0/queries", token, data=big, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "documentation_url" in await resp.json()
    resp = await proxy.call(
        "POST", "/api/4.0/queries", token, data=big, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200
    await resp.read()
    assert looker.logins == 2


async def test_401_for_an_already_replaced_session_does_not_log_in_again(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """A late 401 of an old session after the team re-pinned: no extra login."""
    token = await proxy.login("analytics")
    assert await _status(proxy, token) == 200
    looker.faults.latency_s = 0.3
    slow = asyncio.ensure_future(_status(proxy, token, "/api/4.0/looks/1"))  # under session 1
    await looker.arrived("/looks/1")
    looker.revoke_all_tokens()
    looker.faults.latency_s = 0.0
    assert await _status(proxy, token) == 200  # 401 -> re-login (session 2) -> replay
    assert await slow == 200  # its 401 refers to session 1: reuse session 2
    assert looker.logins == 2


async def test_upstream_4xx_other_than_401_never_triggers_relogin(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Looker refusing a call (here 422: git checkout in production) is the caller's answer."""
    token = await proxy.login("finance")
    resp = await proxy.call(
        "PUT", "/api/4.0/projects/sales/git_branch", token, json={"name": "feature"}
    )
    assert resp.status == 422
    assert await _status(proxy, token) == 200
    assert looker.logins == 1


async def test_patch_failure_is_retried_then_succeeds(looker: LookerEmulator, proxy: Proxy) -> None:
    """PATCH /session failing once: the proxy retries and the call succeeds, pinned."""
    token = await proxy.login("analytics")
    looker.faults.patch_session_failures = 1
    assert await _status(proxy, token) == 200
    assert looker.logins == 2
    assert looker.session_patches == 2
    assert_every_call_pinned(looker)
    # the unpinned session of the failed attempt was logged out, never used
    logouts = [e for e in looker.audit if e.path.endswith("logout")]
    assert len(logouts) == 1
    assert logouts[0].workspace == "production"


@pytest.mark.parametrize("status", [500, 422, 429])
async def test_patch_failing_fails_closed(
    make_looker: MakeLooker, make_proxy: MakeProxy, status: int
) -> None:
    """PATCH keeps failing: 503 + Retry-After, Looker-shaped, and nothing forwarded."""
    looker = await make_looker()
    proxy = await make_proxy(looker)
    token = await proxy.login("analytics")
    looker.faults.patch_session_failures = 1000
    looker.faults.patch_session_status = status
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert f"HTTP {status}" in body["message"]
    assert "Nothing was forwarded" in body["message"]
    assert forwarded(looker) == []


async def test_patch_answering_wrong_workspace_fails_closed(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """PATCH answering 200 but leaving the session in production: 503, nothing forwarded."""
    token = await proxy.login("analytics")
    looker.faults.patch_session_wrong_workspace = "production"
    looker.faults.patch_session_failures = 0
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 503
    assert "production" in (await resp.json())["message"]
    assert forwarded(looker) == [] or all(
        e.path.endswith("/session") and e.method == "GET" for e in forwarded(looker)
    )


async def test_login_rate_limited_honours_retry_after_and_does_not_hammer(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Login 429 with Retry-After: 503 carrying it; further calls answer at once without Looker."""
    clock = FakeClock()
    proxy = await make_proxy(looker, clock=clock)
    token = await proxy.login("analytics")
    looker.faults.login_failures = 1
    looker.faults.login_failure_status = 429
    looker.faults.login_retry_after = 7
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 7
    attempts = looker.login_attempts
    for _ in range(5):
        assert await _status(proxy, token) == 503
    assert looker.login_attempts == attempts, "no login while backing off"
    clock.now += 8
    assert await _status(proxy, token) == 200
    assert_every_call_pinned(looker)


async def test_failing_login_of_one_team_does_not_affect_another(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """analytics' Looker credentials are wrong: analytics gets 503, finance is served."""
    proxy = await make_proxy(looker, env_overrides={"ANALYTICS_LOOKER_SECRET": "not-the-secret"})
    bad, good = await proxy.login("analytics"), await proxy.login("finance")
    resp = await proxy.call("GET", "/api/4.0/user", bad)
    assert resp.status == 503
    assert "HTTP 404" in (await resp.json())["message"]
    assert await _status(proxy, good) == 200
    assert assert_every_call_pinned(looker) == 1


async def test_looker_restart_loses_all_sessions_and_the_proxy_recovers(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Looker restarts (all sessions gone): the next calls re-pin and succeed."""
    tokens = {team: await proxy.login(team) for team in ("analytics", "finance")}
    for token in tokens.values():
        assert await _status(proxy, token) == 200
    looker.restart()
    for token in tokens.values():
        assert await _status(proxy, token) == 200
    assert looker.logins == 4
    assert_every_call_pinned(looker)


async def test_tokens_dying_earlier_than_announced(
    make_looker: MakeLooker, make_proxy: MakeProxy
) -> None:
    """Looker says 3600 s but tokens die after 0.3 s: 401s absorbed, every call 200 and pinned."""
    clock = FakeClock()
    looker = await make_looker(clock=clock)
    looker.faults.token_ttl_override = 0.3
    proxy = await make_proxy(looker)
    token = await proxy.login("analytics")
    statuses = []
    for _ in range(4):
        statuses.append(await _status(proxy, token))
        clock.now += 0.35  # Looker's time: the session just died, the proxy thinks it lives
    assert statuses == [200] * 4
    assert looker.logins == 4
    assert_every_call_pinned(looker)


async def test_looker_down_at_start_then_up(
    make_proxy: MakeProxy, aiohttp_server: Any, unused_tcp_port: int
) -> None:
    """Looker unreachable: 503 at once (fail closed); once it is up the proxy recovers alone."""
    clock = FakeClock()
    looker = LookerEmulator()
    looker.base_url = f"http://127.0.0.1:{unused_tcp_port}"
    proxy = await make_proxy(looker, clock=clock)
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 503
    assert "unreachable" in (await resp.json())["message"]
    await aiohttp_server(looker.app, port=unused_tcp_port)
    clock.now += 60
    assert await _status(proxy, token) == 200
    assert_every_call_pinned(looker)

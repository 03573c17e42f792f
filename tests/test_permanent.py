"""Pin failures that are configuration errors (``fixes``): credentials Looker refuses, a project
or branch that does not exist, a workspace the Looker user may not use. Each is answered with a
503 that says what to fix and a long Retry-After, logged as ``pin_failed`` with ``permanent:
true``, shown by /readyz as ``failing``, and attempted again 30 s later, then after twice as long
each time up to 5 minutes, so a fix made at Looker is picked up. Transient failures keep their
fast retries (tests/test_recovery.py).

Managed and passthrough teams alike; the emulator on a real socket, the proxy's clock a
FakeClock moved by hand."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Final

import pytest
import structlog
from conftest import MakeLooker, MakeProxy
from harness import FakeClock, Proxy, forwarded
from pytest_aiohttp import AiohttpClient

from workspace_proxy.app import Proxy as ProxyApp
from workspace_proxy.app import create_admin_app
from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator
from workspace_proxy.fixes import PERMANENT_FIRST_S, PERMANENT_MAX_S, permanent_wait

pytestmark = pytest.mark.timeout(60)
USER: Final = "/api/4.0/user"
MARKETING: Final = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}


async def readyz(proxy: Proxy, aiohttp_client: AiohttpClient) -> tuple[int, dict[str, Any]]:
    """GET /readyz of the proxy's admin app."""
    app: ProxyApp = proxy.client.server.app  # type: ignore[attr-defined]
    admin = await aiohttp_client(
        create_admin_app(teams=app.teams, draining=app.draining, metrics=app.metrics)
    )
    resp = await admin.get("/readyz")
    return resp.status, await resp.json()


async def failing(proxy: Proxy, token: str) -> tuple[int, str, str]:
    """(status, Retry-After, message) of a call."""
    resp = await proxy.call("GET", USER, token)
    body = await resp.json()
    return resp.status, resp.headers.get("Retry-After", ""), body["message"]


def test_permanent_waits_double_from_30_s_to_5_minutes() -> None:
    """30, 60, 120, 240, then 300 s between attempts for a team whose configuration is wrong."""
    assert [permanent_wait(n) for n in range(1, 8)] == [30, 60, 120, 240, 300, 300, 300]
    assert (PERMANENT_FIRST_S, PERMANENT_MAX_S) == (30, 300)


async def test_refused_credentials_say_what_to_fix_and_are_attempted_minutes_apart(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """Wrong Looker secret: 503 naming the keys to fix, Retry-After 30; no attempt until it is
    due, whatever the callers do; then 60, 120, 240, 300, 300 s apart; pin_failed says
    permanent; /readyz says failing, with the fix."""
    clock = FakeClock()
    proxy = await make_proxy(
        looker, clock=clock, env_overrides={"ANALYTICS_LOOKER_SECRET": "not-the-secret"}
    )
    token = await proxy.login("analytics")
    waits = []
    with structlog.testing.capture_logs() as logs:
        for _ in range(6):
            attempts = looker.login_attempts
            status, retry_after, message = await failing(proxy, token)
            assert status == 503
            assert looker.login_attempts == attempts + 1
            waits.append(int(retry_after))
            clock.advance(int(retry_after) - 1)
            for _ in range(3):  # callers retrying meanwhile: answered at once, Looker untouched
                assert (await failing(proxy, token))[:2] == (503, "1")
            assert looker.login_attempts == attempts + 1
            clock.advance(1)
        status, retry_after, message = await failing(proxy, token)  # the 7th attempt
    assert waits == [30, 60, 120, 240, 300, 300]
    assert (status, retry_after) == (503, "300")
    assert "This is a configuration error, not an outage" in message
    assert "teams.analytics.looker_client_id and teams.analytics.looker_client_secret" in message
    assert "HTTP 404" in message
    events = [e for e in logs if e["event"] == "pin_failed"]
    assert len(events) == 7
    assert all(e["permanent"] is True and e["kind"] == "rejected" for e in events)
    assert [e["retry_in_s"] for e in events] == [*waits, 300]
    assert "looker_client_secret" in events[0]["fix"]
    code, body = await readyz(proxy, aiohttp_client)
    team = body["teams"]["analytics"]
    assert (code, team["ready"], team["state"]) == (503, False, "failing")
    assert "looker_client_secret" in team["fix"]
    assert team["next_attempt_in_s"] == 300
    assert forwarded(looker) == []


async def test_a_branch_created_at_looker_is_picked_up_by_the_next_attempt(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """A pinned branch that does not exist: failing, with the fix; once the branch exists at
    Looker, the next attempt (30 s later) pins it and the team is served, ok in /readyz."""
    clock = FakeClock()
    branch = {"project": "sales", "name": "feature-x"}
    proxy = await make_proxy(
        looker, clock=clock, team_settings={"analytics": {"git_branch": branch}}
    )
    token = await proxy.login("analytics")
    status, retry_after, message = await failing(proxy, token)
    assert (status, retry_after) == (503, "30")
    assert "project 'sales' or its branch 'feature-x' does not exist at Looker" in message
    assert "teams.analytics.git_branch" in message
    assert (await readyz(proxy, aiohttp_client))[1]["teams"]["analytics"]["state"] == "failing"
    user = looker.user("2")
    assert user is not None
    looker.git.create(user, "sales", "feature-x", None)  # fixed at Looker
    clock.advance(29)
    assert (await failing(proxy, token))[0] == 503  # not due yet
    clock.advance(1)
    resp = await proxy.call("GET", USER, token)
    assert resp.status == 200
    code, body = await readyz(proxy, aiohttp_client)
    team = body["teams"]["analytics"]
    assert (code, team["state"], team["verified_workspace"], team["branch"]) == (
        200,
        "ok",
        "dev",
        "sales/feature-x",
    )
    assert (team["last_error"], team["fix"]) == (None, None)


async def test_an_unknown_project_is_a_configuration_error(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A branch of a project Looker does not have: the same 503, naming git_branch."""
    branch = {"project": "no_such_project", "name": "main"}
    proxy = await make_proxy(looker, team_settings={"analytics": {"git_branch": branch}})
    token = await proxy.login("analytics")
    status, retry_after, message = await failing(proxy, token)
    assert (status, retry_after) == (503, "30")
    assert "project 'no_such_project' or its branch 'main' does not exist" in message


async def test_a_workspace_the_looker_user_may_not_use_is_a_configuration_error(
    make_looker: MakeLooker, make_proxy: MakeProxy
) -> None:
    """A Looker user without the develop permission (PATCH /session to dev: 422): the 503
    says to give it the permission or pin the team to production."""
    users = [replace(u, can_develop=False) if u.id == "2" else u for u in DEFAULT_USERS]
    looker = await make_looker(users=users)
    proxy = await make_proxy(looker)
    token = await proxy.login("analytics")
    status, retry_after, message = await failing(proxy, token)
    assert (status, retry_after) == (503, "30")
    assert "Looker answered PATCH /session with HTTP 422" in message
    assert "may not use the 'dev' workspace: give it the develop permission" in message
    assert [e.workspace for e in looker.audit if e.path.endswith("logout")] == ["production"]


async def test_an_outage_is_not_a_configuration_error(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """Login 500: retry soon (Retry-After 1), no fix, pin_failed permanent false, backing_off."""
    proxy = await make_proxy(looker, clock=FakeClock())
    token = await proxy.login("analytics")
    looker.faults.login_failures = 1000
    with structlog.testing.capture_logs() as logs:
        status, retry_after, message = await failing(proxy, token)
    assert (status, retry_after) == (503, "1")
    assert "retry later" in message
    assert "configuration error" not in message
    events = [(e["permanent"], e["fix"]) for e in logs if e["event"] == "pin_failed"]
    assert len(events) > 1, "attempts within the call's deadline"
    assert set(events) == {(False, None)}
    team = (await readyz(proxy, aiohttp_client))[1]["teams"]["analytics"]
    assert (team["state"], team["fix"]) == ("backing_off", None)


# --- passthrough ---------------------------------------------------------------------------------


async def passthrough_proxy(
    looker: LookerEmulator, make_proxy: MakeProxy, clock: FakeClock, **team: Any
) -> Proxy:
    """analytics (managed) and bi: passthrough for the emulator's marketing user, in dev."""
    settings = {"mode": "passthrough", "workspace": "dev"}
    settings |= {"looker_client_ids": ["marketing-client-id"], **team}
    return await make_proxy(
        looker, clock=clock, teams=("analytics",), team_settings={"bi": settings}
    )


async def test_passthrough_unknown_branch_is_a_configuration_error_not_retry_later(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """A passthrough login whose branch does not exist: 503 saying what to fix, Retry-After
    30 (not 1), pin_failed permanent; the caller's next logins are answered at once without a
    Looker login until the next attempt is due; /readyz lists the team as failing (without
    making the instance unready); once the branch exists, the next login is served."""
    clock = FakeClock()
    proxy = await passthrough_proxy(
        looker, make_proxy, clock, git_branch={"project": "sales", "name": "release"}
    )
    code, body = await readyz(proxy, aiohttp_client)
    assert body["teams"]["bi"]["mode"] == "passthrough"
    assert body["teams"]["bi"]["state"] == "idle"
    with structlog.testing.capture_logs() as logs:
        resp = await proxy.client.post("/api/4.0/login", data=MARKETING)
        message = (await resp.json())["message"]
        assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
        attempts = looker.login_attempts
        clock.advance(10)
        again = await proxy.client.post("/api/4.0/login", data=MARKETING)
        assert (again.status, again.headers["Retry-After"]) == (503, "20")
        assert looker.login_attempts == attempts, "no Looker login while the error stands"
    assert "branch 'release' does not exist at Looker" in message
    assert "teams.bi.git_branch" in message
    [event] = [e for e in logs if e["event"] == "pin_failed"]
    assert (event["team"], event["permanent"], event["kind"]) == ("bi", True, "branch_404")
    code, body = await readyz(proxy, aiohttp_client)
    bi = body["teams"]["bi"]
    assert (code, bi["state"], bi["ready"], bi["branch"]) == (
        200,
        "failing",
        False,
        "sales/release",
    )
    assert "does not exist" in bi["fix"]
    user = looker.user("4")
    assert user is not None
    looker.git.create(user, "sales", "release", None)
    clock.advance(20)
    resp = await proxy.client.post("/api/4.0/login", data=MARKETING)
    assert resp.status == 200
    bi = (await readyz(proxy, aiohttp_client))[1]["teams"]["bi"]
    assert (bi["state"], bi["verified_workspace"], bi["generation"]) == ("ok", "dev", 1)


async def test_passthrough_raw_token_with_an_unknown_branch_gets_the_fix(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """A raw Looker token of a passthrough user, first seen: the same 503 with the fix."""
    clock = FakeClock()
    proxy = await passthrough_proxy(
        looker, make_proxy, clock, git_branch={"project": "sales", "name": "release"}
    )
    async with proxy.client.session.post(looker.url("/api/4.0/login"), data=MARKETING) as resp:
        raw = (await resp.json())["access_token"]
    status, retry_after, message = await failing(proxy, raw)
    assert (status, retry_after) == (503, "30")
    assert "teams.bi.git_branch" in message
    assert (await readyz(proxy, aiohttp_client))[1]["teams"]["bi"]["state"] == "failing"


async def test_a_looker_user_in_no_team_gets_the_same_403_at_login_as_with_its_token(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """With passthrough teams, a Looker user in none of them: 403 at login (its Looker session
    ended at once), as its raw token gets; wrong credentials stay Looker's 404."""
    proxy = await passthrough_proxy(looker, make_proxy, FakeClock())
    finance = {"client_id": "finance-client-id", "client_secret": "finance-client-secret"}
    with structlog.testing.capture_logs() as logs:
        resp = await proxy.client.post("/api/4.0/login", data=finance)
        login_message = (await resp.json())["message"]
        assert resp.status == 403
        wrong = await proxy.client.post("/api/4.0/login", data={**finance, "client_secret": "x"})
        assert wrong.status == 404
    refused = [(e["caller"], e["reason"]) for e in logs if e["event"] == "login_refused"]
    assert refused == [
        ("finance-client-id", "looker_user_in_no_team"),
        ("finance-client-id", "unknown_caller"),
    ]
    assert [e.workspace for e in looker.audit if e.path.endswith("logout")] == ["production"]
    async with proxy.client.session.post(looker.url("/api/4.0/login"), data=finance) as resp:
        raw = (await resp.json())["access_token"]
    token_answer = await proxy.call("GET", USER, raw)
    assert token_answer.status == 403
    assert (await token_answer.json())["message"] == login_message
    assert "not configured for any passthrough team" in login_message

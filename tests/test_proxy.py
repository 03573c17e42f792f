"""The pinning proxy end to end: real proxy app, real emulator, real sockets.

The emulator's audit is the witness: it records the workspace of every call's session at the
moment of the call.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from harness import (
    TEAMS,
    Proxy,
    assert_every_call_pinned,
    assert_pin_before_use,
    forwarded,
)

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)


async def test_caller_login_answers_like_looker_with_a_proxy_token(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """POST /login with proxy credentials answers Looker's AccessToken shape, not Looker's token."""
    resp = await proxy.client.post(
        "/api/4.0/login",
        data={"client_id": "analytics-caller", "client_secret": "analytics-caller-secret"},
    )
    assert resp.status == 200
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 60
    assert body["access_token"].startswith("wp1.")
    assert looker.login_attempts == 0, "the caller's login must not reach Looker"


async def test_caller_login_with_query_parameters_and_api_31(proxy: Proxy) -> None:
    """Credentials as query parameters work, on the 3.1 prefix too."""
    resp = await proxy.client.post(
        "/api/3.1/login",
        params={"client_id": "finance-caller", "client_secret": "finance-caller-secret"},
    )
    assert resp.status == 200
    assert "access_token" in await resp.json()


@pytest.mark.parametrize(
    "form",
    [
        {"client_id": "analytics-caller", "client_secret": "wrong"},
        {"client_id": "nobody", "client_secret": "analytics-caller-secret"},
        {"client_id": "analytics-client-id", "client_secret": "analytics-client-secret"},
        {},
    ],
)
async def test_bad_caller_credentials_get_lookers_404(
    looker: LookerEmulator, proxy: Proxy, form: dict[str, str]
) -> None:
    """Wrong, unknown, Looker-side or missing credentials: 404 Not found, as Looker answers."""
    resp = await proxy.client.post("/api/4.0/login", data=form)
    assert resp.status == 404
    body = await resp.json()
    assert body["message"] == "Not found"
    assert "documentation_url" in body
    assert looker.login_attempts == 0


@pytest.mark.parametrize(
    "authorization",
    [None, "token nope", "Bearer wp1.e30.AAAA", "Basic YTpi", "token", ""],
)
async def test_missing_or_bad_proxy_token_gets_401(
    looker: LookerEmulator, proxy: Proxy, authorization: str | None
) -> None:
    """Missing or invalid tokens: 401 Requires authentication., and nothing reaches Looker."""
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = await proxy.client.get("/api/4.0/user", headers=headers)
    assert resp.status == 401
    assert (await resp.json())["message"] == "Requires authentication."
    assert looker.audit == []


async def test_bearer_and_token_schemes_both_work(looker: LookerEmulator, proxy: Proxy) -> None:
    """Callers may send their proxy token as `token X` or `Bearer X`."""
    token = await proxy.login("analytics")
    for scheme in ("token", "Bearer", "bearer"):
        resp = await proxy.client.get(
            "/api/4.0/user", headers={"Authorization": f"{scheme} {token}"}
        )
        assert resp.status == 200, scheme


async def test_each_team_runs_in_its_own_workspace(looker: LookerEmulator, proxy: Proxy) -> None:
    """analytics' calls run in dev, finance's in production, each under its own Looker user."""
    for team in ("analytics", "finance"):
        token = await proxy.login(team)
        me = await proxy.get_json("/api/4.0/user", token)
        assert str(me["id"]) == TEAMS[team][1]
        session = await proxy.get_json("/api/4.0/session", token)
        assert session["workspace_id"] == TEAMS[team][0]
    assert assert_every_call_pinned(looker) == 4
    assert_pin_before_use(looker)


async def test_two_teams_under_concurrent_load_stay_pinned(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """200 concurrent mixed calls of two teams: each in its team's workspace; one login each."""
    tokens = {team: await proxy.login(team) for team in ("analytics", "finance")}
    paths = ["/api/4.0/user", "/api/4.0/lookml_models", "/api/4.0/looks/1", "/api/3.1/session"]

    async def one(i: int) -> tuple[str, int]:
        team = "analytics" if i % 2 else "finance"
        resp = await proxy.call("GET", paths[i % len(paths)], tokens[team])
        await resp.read()
        return team, resp.status

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert Counter(status for _, status in results) == {200: 200}
    assert assert_every_call_pinned(looker) == 200
    assert looker.logins == 2
    assert looker.session_patches == 2
    assert_pin_before_use(looker)


async def test_cold_start_is_single_flight_per_team(looker: LookerEmulator, proxy: Proxy) -> None:
    """100 concurrent cold requests per team cause exactly one login and one PATCH per team."""
    tokens = {team: await proxy.login(team) for team in ("analytics", "finance")}
    looker.faults.hold_login = asyncio.Event()

    async def one(team: str) -> int:
        resp = await proxy.call("GET", "/api/4.0/user", tokens[team])
        await resp.read()
        return resp.status

    calls = asyncio.gather(*(one(t) for t in ("analytics", "finance") for _ in range(100)))
    await looker.login_started.wait()
    looker.faults.hold_login.set()
    statuses = await calls
    assert statuses == [200] * 200
    assert looker.logins == 2
    assert looker.session_patches == 2
    per_user = Counter(e.user_id for e in looker.audit if e.path.endswith("/session"))
    assert per_user == {"2": 1, "3": 1}
    assert assert_every_call_pinned(looker) == 200


async def test_requests_arriving_during_the_pin_wait_for_it(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """While PATCH /session is in flight nothing is forwarded; afterwards all run pinned."""
    token = await proxy.login("analytics")
    looker.faults.hold_session_patch = asyncio.Event()
    first = asyncio.ensure_future(proxy.call("GET", "/api/4.0/user", token))
    await looker.session_patch_started.wait()
    later = [asyncio.ensure_future(proxy.call("GET", "/api/4.0/user", token)) for _ in range(20)]
    done, _ = await asyncio.wait([first, *later], timeout=0.5)
    assert done == set(), "a request was answered before the session was pinned"
    assert forwarded(looker) == []
    looker.faults.hold_session_patch.set()
    responses = await asyncio.gather(first, *later)
    assert [r.status for r in responses] == [200] * 21
    assert assert_every_call_pinned(looker) == 21
    assert (looker.logins, looker.session_patches) == (1, 1)


async def test_caller_patch_to_other_workspace_is_refused(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """PATCH /session to another workspace: 403 with a clear message; Looker never sees it."""
    token = await proxy.login("analytics")
    resp = await proxy.call("PATCH", "/api/4.0/session", token, json={"workspace_id": "production"})
    assert resp.status == 403
    body = await resp.json()
    assert "'dev'" in body["message"]
    assert "production" in body["message"]
    assert "documentation_url" in body
    assert looker.session_patches == 0
    # the team's session is still pinned to dev afterwards
    session = await proxy.get_json("/api/4.0/session", token)
    assert session["workspace_id"] == "dev"
    assert looker.session_patches == 1  # only the proxy's own pin


async def test_caller_patch_to_own_workspace_answers_with_pinned_session(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """PATCH /session to the team's own workspace answers the pinned session without a PATCH."""
    token = await proxy.login("analytics")
    resp = await proxy.call("PATCH", "/api/4.0/session", token, json={"workspace_id": "dev"})
    assert resp.status == 200
    assert (await resp.json())["workspace_id"] == "dev"
    assert looker.session_patches == 1


async def test_patch_to_own_workspace_does_not_corrupt_the_next_call(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """The GET that answers an own-workspace PATCH carries no body length; the pooled upstream
    connection stays in sync, so the following calls (any team) are answered normally."""
    tokens = {t: await proxy.login(t) for t in ("analytics", "finance")}
    for _ in range(3):
        resp = await proxy.call(
            "PATCH", "/api/4.0/session", tokens["analytics"], json={"workspace_id": "dev"}
        )
        assert resp.status == 200
        for team in ("analytics", "finance"):
            resp = await proxy.call("GET", "/api/4.0/user", tokens[team])
            assert resp.status == 200, await resp.text()
    assert assert_every_call_pinned(looker) == 9


async def test_caller_patch_with_invalid_workspace_gets_422(proxy: Proxy) -> None:
    """An invalid workspace id gets Looker's 422 ValidationError shape."""
    token = await proxy.login("analytics")
    resp = await proxy.call("PATCH", "/api/4.0/session", token, json={"workspace_id": "staging"})
    assert resp.status == 422
    body = await resp.json()
    assert body["errors"][0]["field"] == "workspace_id"


async def test_caller_patch_with_broken_json_gets_400(proxy: Proxy) -> None:
    """A PATCH /session body that is not JSON gets a Looker-shaped 400."""
    token = await proxy.login("analytics")
    resp = await proxy.call("PATCH", "/api/4.0/session", token, data=b"{nope")
    assert resp.status == 400
    assert "JSON" in (await resp.json())["message"]


async def test_sudo_is_refused(looker: LookerEmulator, proxy: Proxy) -> None:
    """POST /login/{id} would start an unpinned session: refused with 403, never forwarded."""
    token = await proxy.login("analytics")
    resp = await proxy.call("POST", "/api/4.0/login/3", token)
    assert resp.status == 403
    assert "sudo" in (await resp.json())["message"]
    assert looker.audit == []


@pytest.mark.parametrize("path", ["/api/logout", "/api/4.0/logout", "//api/logout"])
async def test_logout_ends_only_the_callers_proxy_token(
    looker: LookerEmulator, proxy: Proxy, path: str
) -> None:
    """Logout: 204, the caller's token stops working, the team's Looker session lives on."""
    mine, other = await proxy.login("analytics"), await proxy.login("analytics")
    assert (await proxy.call("GET", "/api/4.0/user", mine)).status == 200
    resp = await proxy.call("DELETE", path, mine)
    assert resp.status == 204
    assert (await proxy.call("GET", "/api/4.0/user", mine)).status == 401
    assert (await proxy.call("GET", "/api/4.0/user", other)).status == 200
    assert looker.logins == 1
    assert not any(e.path.endswith("logout") for e in looker.audit)


async def test_versions_is_public(looker: LookerEmulator, proxy: Proxy) -> None:
    """GET /versions is forwarded without credentials and without logging in to Looker."""
    for path in ("/versions", "/api/4.0/versions"):
        resp = await proxy.client.get(path)
        assert resp.status == 200
        assert "looker_release_version" in await resp.json()
    assert looker.login_attempts == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/9.9/user",
        "/user",
        "/api/4.0/../../etc/passwd",
        "/api/4.0/%2e%2e/%2e%2e/_emulator/audit",
        "/api/4.0/queries%2F1",
        "/_emulator/audit",
    ],
)
async def test_paths_outside_the_api_are_not_found(
    looker: LookerEmulator, proxy: Proxy, path: str
) -> None:
    """Unknown versions and paths that would escape /api/<v>/ are 404 and never forwarded."""
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", path, token)
    assert resp.status == 404
    assert looker.audit == []


async def test_query_run_streams_csv_in_the_right_workspace(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """A query created and run through the proxy runs in the team's workspace."""
    token = await proxy.login("analytics")
    resp = await proxy.call(
        "POST",
        "/api/4.0/queries",
        token,
        json={"model": "sales", "view": "orders", "fields": ["orders.count"], "limit": "10"},
    )
    assert resp.status == 200, await resp.text()
    query = await resp.json()
    resp = await proxy.call("GET", f"/api/4.0/queries/{query['id']}/run/csv", token)
    assert resp.status == 200
    text = await resp.text()
    assert "dev" in text
    assert assert_every_call_pinned(looker) == 2


async def test_request_body_is_forwarded_intact(looker: LookerEmulator, proxy: Proxy) -> None:
    """A JSON body above the replay buffer streams upstream unchanged."""
    token = await proxy.login("analytics")
    fields = [f"orders.field_{i}" for i in range(20_000)]  # ~400 KB
    resp = await proxy.call(
        "POST",
        "/api/4.0/queries",
        token,
        data=json.dumps({"model": "sales", "view": "orders", "fields": fields}),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["fields"] == fields


async def test_upstream_errors_pass_through(looker: LookerEmulator, proxy: Proxy) -> None:
    """Looker's own 404 reaches the caller unchanged (status and body)."""
    token = await proxy.login("finance")
    resp = await proxy.call("GET", "/api/4.0/looks/999999", token)
    assert resp.status == 404
    assert (await resp.json())["message"] == "Not found"


async def test_request_id_is_echoed_or_generated(proxy: Proxy) -> None:
    """X-Request-Id from the caller is echoed; without one a new id is generated."""
    resp = await proxy.client.get("/versions", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await proxy.client.get("/versions")
    assert len(resp.headers["X-Request-Id"]) == 32


async def test_forwarded_calls_are_all_audited(looker: LookerEmulator, proxy: Proxy) -> None:
    """Sanity of the witness: each forwarded call appears once in the audit."""
    token = await proxy.login("finance")
    for _ in range(3):
        await proxy.get_json("/api/4.0/user", token)
    assert len(forwarded(looker)) == 3

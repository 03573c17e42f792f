"""Passthrough mode: callers use their own Looker credentials; every session is pinned first.

A login through the proxy answers a sealed proxy token (``wp2.``): the caller never holds a
Looker token, so it cannot move its session behind the proxy's back (issue 17, M7)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import looker_sdk
import pytest
import structlog
from harness import Proxy, assert_every_call_pinned
from looker_sdk import models40

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(30)
MakeProxy = Callable[..., Awaitable[Proxy]]
PASSTHROUGH = {
    "mode": "passthrough",
    "workspace": "dev",
    "looker_client_ids": ["marketing-client-id"],
}
MARKETING = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}


@pytest.fixture
async def pt_proxy(looker: LookerEmulator, make_proxy: MakeProxy) -> Proxy:
    """analytics is managed (dev), bi is passthrough (dev) for the Looker user marketing."""
    return await make_proxy(looker, teams=("analytics",), team_settings={"bi": PASSTHROUGH})


async def _looker_login(proxy: Proxy) -> dict[str, Any]:
    resp = await proxy.client.post("/api/4.0/login", data=MARKETING)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def _direct_login(looker: LookerEmulator, form: dict[str, str]) -> str:
    """A login straight to Looker, bypassing the proxy (a session in production)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{looker.base_url}/api/4.0/login", data=form) as resp,
    ):
        return str((await resp.json())["access_token"])


def _looker_token_of(looker: LookerEmulator, sealed: str) -> str:
    """The Looker token behind a sealed token: the only one the emulator issued since."""
    (issued,) = looker.issued_tokens()
    assert issued != sealed
    return issued


async def test_login_answers_a_sealed_proxy_token_never_lookers_own(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """Login, PATCH, then the answer: a proxy token (exactly Looker's keys) that is none of the
    tokens Looker issued; calls with it run in dev."""
    body = await _looker_login(pt_proxy)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    sealed = body["access_token"]
    assert sealed not in looker.issued_tokens(), "the caller was handed Looker's own token"
    assert sealed.startswith("wp2.")
    assert body["token_type"] == "Bearer"
    assert 60 < body["expires_in"] <= 3600
    assert looker.workspace_of(_looker_token_of(looker, sealed)) == "dev"
    assert [(e.method, e.path.rsplit("/", 1)[-1]) for e in looker.audit] == [
        ("POST", "login"),
        ("PATCH", "session"),
    ]
    session = await pt_proxy.get_json("/api/4.0/session", sealed)
    assert session["workspace_id"] == "dev"
    assert (await pt_proxy.get_json("/api/4.0/looks/1", sealed))["title"] == "Revenue (dev)"
    assert assert_every_call_pinned(looker) == 2


async def test_a_sealed_token_cannot_move_the_session_at_looker(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """Holding only the sealed token, the caller cannot PATCH its session at Looker directly:
    Looker does not know the token (401), and the session stays in dev."""
    sealed = (await _looker_login(pt_proxy))["access_token"]
    async with (
        aiohttp.ClientSession() as http,
        http.patch(
            f"{looker.base_url}/api/4.0/session",
            json={"workspace_id": "production"},
            headers={"Authorization": f"token {sealed}"},
        ) as resp,
    ):
        assert resp.status == 401
    assert looker.workspace_of(_looker_token_of(looker, sealed)) == "dev"
    assert (await pt_proxy.get_json("/api/4.0/session", sealed))["workspace_id"] == "dev"


async def test_wrong_looker_credentials_get_lookers_404(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """Looker refuses the caller's own credentials: 404 Not found, as from Looker."""
    resp = await pt_proxy.client.post(
        "/api/4.0/login", data={**MARKETING, "client_secret": "wrong"}
    )
    assert resp.status == 404
    assert (await resp.json())["message"] == "Not found"


async def test_unseen_token_is_pinned_on_first_sight(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """A token from a direct Looker login (production) is identified and pinned before use."""
    token = await _direct_login(looker, MARKETING)
    assert looker.workspace_of(token) == "production"
    mark = len(looker.audit)
    calls = await asyncio.gather(
        *(pt_proxy.call("GET", "/api/4.0/looks/1", token) for _ in range(5))
    )
    titles = {(await r.json())["title"] for r in calls}
    assert titles == {"Revenue (dev)"}
    seen = [(e.method, e.path.rsplit("/", 1)[-1], e.workspace) for e in looker.audit[mark:]]
    assert seen[:2] == [("GET", "user", "production"), ("PATCH", "session", "production")]
    assert seen[2:] == [("GET", "1", "dev")] * 5, "identified and pinned once, then forwarded"


async def test_token_of_an_unconfigured_user_is_refused(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """A Looker token whose user belongs to no passthrough team: 403, nothing forwarded."""
    form = {"client_id": "finance-client-id", "client_secret": "finance-client-secret"}
    token = await _direct_login(looker, form)
    resp = await pt_proxy.call("GET", "/api/4.0/looks/1", token)
    assert resp.status == 403
    assert "not configured" in (await resp.json())["message"]
    assert looker.audit_paths("/looks/1") == []
    assert looker.workspace_of(token) == "production"


async def test_switching_workspace_is_refused_and_logout_ends_the_looker_session(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """Same policy as managed mode; DELETE /api/logout ends the Looker session behind the sealed
    token and revokes the sealed token itself (refused without asking Looker)."""
    sealed = (await _looker_login(pt_proxy))["access_token"]
    own = _looker_token_of(looker, sealed)
    resp = await pt_proxy.call(
        "PATCH", "/api/4.0/session", sealed, json={"workspace_id": "production"}
    )
    assert resp.status == 403
    for _ in range(2):  # the second is decided from memory (decision.Policy.memo)
        resp = await pt_proxy.call("GET", "/api/4.0/user", sealed)
        assert resp.status == 200
    resp = await pt_proxy.call("DELETE", "/api/logout", sealed)
    assert resp.status == 204
    assert looker.workspace_of(own) is None, "the Looker session ended"
    mark = len(looker.audit)
    resp = await pt_proxy.call("GET", "/api/4.0/user", sealed)
    assert resp.status == 401, "the same call as before the logout is decided afresh"
    assert (await resp.json())["message"] == "Requires authentication."
    assert looker.audit[mark:] == [], "a logged-out sealed token never reaches Looker"
    assert looker.session_patches == 1


async def test_revoked_token_is_the_callers_401(looker: LookerEmulator, pt_proxy: Proxy) -> None:
    """Looker rejecting the session behind a sealed token is passed on as 401 (the caller logs
    in again)."""
    sealed = (await _looker_login(pt_proxy))["access_token"]
    looker.revoke_all_tokens()
    resp = await pt_proxy.call("GET", "/api/4.0/user", sealed)
    assert resp.status == 401
    assert looker.logins == 1, "the proxy never logs in for a passthrough caller"


async def test_managed_and_passthrough_teams_side_by_side(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """A managed caller and a passthrough caller in one proxy each run pinned."""
    managed = await pt_proxy.login("analytics")
    own = (await _looker_login(pt_proxy))["access_token"]
    assert (await pt_proxy.get_json("/api/4.0/user", managed))["id"] == "2"
    assert (await pt_proxy.get_json("/api/4.0/user", own))["id"] == "4"
    assert assert_every_call_pinned(looker) == 2


async def test_no_looker_or_sealed_token_is_ever_logged(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """Login, calls, a token pinned on first sight, a Looker 401, logout: no log line holds a
    Looker token or a sealed token."""
    with structlog.testing.capture_logs() as events:
        sealed = (await _looker_login(pt_proxy))["access_token"]
        await pt_proxy.get_json("/api/4.0/user", sealed)
        raw = await _direct_login(looker, MARKETING)
        await pt_proxy.get_json("/api/4.0/user", raw)
        assert (await pt_proxy.call("DELETE", "/api/logout", sealed)).status == 204
        assert (await pt_proxy.call("GET", "/api/4.0/user", sealed)).status == 401
        looker.revoke_all_tokens()
        assert (await pt_proxy.call("GET", "/api/4.0/user", raw)).status == 401
    lines = [repr(e) for e in events]
    assert any("passthrough_login" in line for line in lines), "logs were captured"
    secrets = [sealed, *looker.issued_tokens()]
    assert len(secrets) == 3
    for secret in secrets:
        assert not [line for line in lines if secret in line]


async def test_stock_sdk_in_passthrough_mode(
    looker: LookerEmulator, pt_proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock looker-sdk with its own Looker credentials, through the proxy: always dev."""
    monkeypatch.setenv("LOOKERSDK_BASE_URL", pt_proxy.base_url)
    monkeypatch.setenv("LOOKERSDK_CLIENT_ID", MARKETING["client_id"])
    monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", MARKETING["client_secret"])
    monkeypatch.setenv("LOOKERSDK_VERIFY_SSL", "false")
    sdk = looker_sdk.init40()

    def story() -> list[str]:
        first = sdk.session().workspace_id
        try:
            sdk.update_session(models40.WriteApiSession(workspace_id="production"))
            refused = "not refused"
        except looker_sdk.error.SDKError as exc:
            refused = "refused" if "pins team 'bi'" in str(exc) else str(exc)
        sdk.auth.logout()
        return [first, refused, sdk.session().workspace_id]

    assert await asyncio.to_thread(story) == ["dev", "refused", "dev"]
    assert looker.logins == 2
    assert assert_every_call_pinned(looker) == 2
    held = sdk.auth.token.access_token
    assert held.startswith("wp2.")
    assert held not in looker.issued_tokens(), "the SDK never held a Looker token"


async def test_passthrough_sudo_answers_a_sealed_token_pinned_in_dev(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A passthrough admin's sudo login is forwarded and pinned, and answered with a sealed
    token acting as the other user, never Looker's sudo token."""
    admins = {**PASSTHROUGH, "looker_client_ids": ["admin-client-id"], "allow_sudo": True}
    proxy = await make_proxy(looker, teams=("analytics",), team_settings={"padmins": admins})
    form = {"client_id": "admin-client-id", "client_secret": "admin-client-secret"}
    resp = await proxy.client.post("/api/4.0/login", data=form)
    admin = (await resp.json())["access_token"]
    resp = await proxy.call("POST", "/api/4.0/login/3", admin)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    sudo = body["access_token"]
    assert sudo.startswith("wp2.")
    assert sudo not in looker.issued_tokens()
    assert (await proxy.get_json("/api/4.0/user", sudo))["id"] == "3"
    assert (await proxy.get_json("/api/4.0/session", sudo))["workspace_id"] == "dev"
    assert len(looker.issued_tokens()) == 2
    assert {looker.workspace_of(t) for t in looker.issued_tokens()} == {"dev"}

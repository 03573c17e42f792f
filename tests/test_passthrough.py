"""Passthrough mode: callers use their own Looker credentials; every session is pinned first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import looker_sdk
import pytest
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


async def test_login_is_forwarded_and_the_session_pinned_before_the_token_is_returned(
    looker: LookerEmulator, pt_proxy: Proxy
) -> None:
    """The caller gets Looker's own token, already in dev: login, PATCH, then the answer."""
    body = await _looker_login(pt_proxy)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert looker.workspace_of(body["access_token"]) == "dev"
    assert [(e.method, e.path.rsplit("/", 1)[-1]) for e in looker.audit] == [
        ("POST", "login"),
        ("PATCH", "session"),
    ]
    session = await pt_proxy.get_json("/api/4.0/session", body["access_token"])
    assert session["workspace_id"] == "dev"
    assert assert_every_call_pinned(looker) == 1


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
    """Same policy as managed mode; DELETE /api/logout revokes the caller's own Looker token."""
    token = (await _looker_login(pt_proxy))["access_token"]
    resp = await pt_proxy.call(
        "PATCH", "/api/4.0/session", token, json={"workspace_id": "production"}
    )
    assert resp.status == 403
    resp = await pt_proxy.call("DELETE", "/api/logout", token)
    assert resp.status == 204
    assert looker.workspace_of(token) is None, "the Looker session ended"
    resp = await pt_proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 401
    assert looker.session_patches == 1


async def test_revoked_token_is_the_callers_401(looker: LookerEmulator, pt_proxy: Proxy) -> None:
    """Looker rejecting a passthrough token is passed on as 401 (the caller logs in again)."""
    token = (await _looker_login(pt_proxy))["access_token"]
    looker.revoke_all_tokens()
    resp = await pt_proxy.call("GET", "/api/4.0/user", token)
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

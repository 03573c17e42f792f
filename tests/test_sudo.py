"""Sudo (POST /login/{user_id}): refused by default; with allow_sudo the sudo session is pinned."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import looker_sdk
import pytest
from harness import ENV, Proxy, raw_config

from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.errors import ConfigError
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(30)
MakeProxy = Callable[..., Awaitable[Proxy]]
ADMINS = {
    "workspace": "dev",
    "allow_sudo": True,
    "looker_client_id": "admin-client-id",
    "looker_client_secret": {"env": "ADMIN_LOOKER_SECRET"},
    "callers": [{"client_id": "admins-caller", "client_secret": {"env": "ADMINS_CALLER_SECRET"}}],
}
SECRETS = {"ADMIN_LOOKER_SECRET": "admin-client-secret", "ADMINS_CALLER_SECRET": "admins-secret"}


@pytest.fixture
async def sudo_proxy(looker: LookerEmulator, make_proxy: MakeProxy) -> Proxy:
    """Team admins (dev, Looker admin user 1) may sudo; analytics (dev) may not."""
    return await make_proxy(
        looker, teams=("analytics",), team_settings={"admins": ADMINS}, env_overrides=SECRETS
    )


async def _admins_token(proxy: Proxy) -> str:
    resp = await proxy.client.post(
        "/api/4.0/login", data={"client_id": "admins-caller", "client_secret": "admins-secret"}
    )
    assert resp.status == 200
    return str((await resp.json())["access_token"])


async def test_sudo_session_is_pinned_before_the_token_is_returned(
    looker: LookerEmulator, sudo_proxy: Proxy
) -> None:
    """The answer is a proxy token acting as user 3, whose Looker session is already in dev."""
    token = await _admins_token(sudo_proxy)
    resp = await sudo_proxy.call("POST", "/api/4.0/login/3", token)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["access_token"].startswith("wp1.")
    sudo = body["access_token"]
    me = await sudo_proxy.get_json("/api/4.0/user", sudo)
    assert me["id"] == "3"
    assert (await sudo_proxy.get_json("/api/4.0/session", sudo))["workspace_id"] == "dev"
    steps = [(e.method, e.path.rsplit("/", 1)[-1], e.user_id, e.workspace) for e in looker.audit]
    assert steps == [
        ("POST", "login", None, None),  # the team's own login
        ("PATCH", "session", "1", "production"),  # ... pinned
        ("POST", "3", "1", "dev"),  # sudo with the pinned admin session
        ("PATCH", "session", "3", "production"),  # the sudo session pinned
        ("GET", "user", "3", "dev"),
        ("GET", "session", "3", "dev"),
    ]
    # the admin's own proxy token still acts as the admin
    assert (await sudo_proxy.get_json("/api/4.0/user", token))["id"] == "1"


async def test_sudo_session_is_renewed_after_revocation(
    looker: LookerEmulator, sudo_proxy: Proxy
) -> None:
    """Looker revokes everything: the sudo session is re-made (via a re-pinned admin) and pinned."""
    token = await _admins_token(sudo_proxy)
    sudo = (await (await sudo_proxy.call("POST", "/api/4.0/login/3", token)).json())["access_token"]
    assert (await sudo_proxy.get_json("/api/4.0/user", sudo))["id"] == "3"
    looker.revoke_all_tokens()
    assert (await sudo_proxy.get_json("/api/4.0/looks/1", sudo))["title"] == "Revenue (dev)"
    assert [e.workspace for e in looker.audit_paths("/looks/1")] == [None, "dev"]


async def test_sudo_not_allowed_and_looker_refusal(
    looker: LookerEmulator, sudo_proxy: Proxy, make_proxy: MakeProxy
) -> None:
    """Without allow_sudo: 403 from the proxy. A non-admin team user: Looker's 403, reported."""
    token = await sudo_proxy.login("analytics")
    resp = await sudo_proxy.call("POST", "/api/4.0/login/3", token)
    assert resp.status == 403
    assert "allow_sudo" in (await resp.json())["message"]
    assert looker.audit_paths("/login/3") == []
    proxy = await make_proxy(
        looker, teams=("analytics",), team_settings={"analytics": {"allow_sudo": True}}
    )
    token = await proxy.login("analytics")
    resp = await proxy.call("POST", "/api/4.0/login/3", token)
    assert resp.status == 503
    assert "HTTP 403" in (await resp.json())["message"]


async def test_stock_sdk_login_user(
    looker: LookerEmulator, sudo_proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """looker_sdk's auth.login_user(3): calls run as user 3 in dev; logout returns to the admin."""
    monkeypatch.setenv("LOOKERSDK_BASE_URL", sudo_proxy.base_url)
    monkeypatch.setenv("LOOKERSDK_CLIENT_ID", "admins-caller")
    monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", "admins-secret")
    monkeypatch.setenv("LOOKERSDK_VERIFY_SSL", "false")
    sdk = looker_sdk.init40()

    def story() -> list[Any]:
        sdk.auth.login_user("3")
        as_three = [sdk.me().id, sdk.session().workspace_id]
        sdk.auth.logout()
        return [*as_three, sdk.me().id]

    assert await asyncio.to_thread(story) == ["3", "dev", "1"]


def test_sudo_with_a_pinned_branch_is_a_config_error() -> None:
    """allow_sudo and git_branch together are refused (branches belong to each Looker user)."""
    raw = raw_config("https://looker.example.com", teams=("analytics",))
    raw["teams"]["analytics"].update(
        allow_sudo=True, git_branch={"project": "sales", "name": "feature-x"}
    )
    with pytest.raises(ConfigError, match="allow_sudo: cannot be combined with git_branch"):
        parse_config(raw, env=ENV)

"""The stock looker-sdk, unchanged, pointed at the proxy with proxy-issued credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import looker_sdk
import pytest
from harness import Proxy, assert_every_call_pinned, assert_pin_before_use
from looker_sdk import error as sdk_error
from looker_sdk import models40

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sdk_for(monkeypatch: pytest.MonkeyPatch) -> Callable[[Proxy, str], Any]:
    def make(proxy: Proxy, team: str) -> Any:
        monkeypatch.setenv("LOOKERSDK_BASE_URL", proxy.base_url)
        monkeypatch.setenv("LOOKERSDK_CLIENT_ID", f"{team}-caller")
        monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", f"{team}-caller-secret")
        monkeypatch.setenv("LOOKERSDK_VERIFY_SSL", "false")
        monkeypatch.setenv("LOOKERSDK_TIMEOUT", "20")
        return looker_sdk.init40()

    return make


async def test_stock_sdk_session_me_models_query_logout(
    looker: LookerEmulator, proxy: Proxy, sdk_for: Callable[[Proxy, str], Any]
) -> None:
    """me, session, models, a query and logout through the proxy, all in the team's workspace."""
    sdk = sdk_for(proxy, "analytics")

    def story() -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["me"] = sdk.me().id
        out["workspace"] = sdk.session().workspace_id
        out["models"] = [m.name for m in sdk.all_lookml_models()]
        query = sdk.create_query(
            models40.WriteQuery(model="sales", view="orders", fields=["orders.count"])
        )
        out["csv"] = sdk.run_query(query.id, "csv")
        sdk.auth.logout()  # DELETE /api/logout: ends the proxy token only
        out["after_logout"] = sdk.session().workspace_id  # the SDK logs in again, lazily
        return out

    out = await asyncio.to_thread(story)
    assert out["me"] == "2"
    assert out["workspace"] == "dev"
    assert out["after_logout"] == "dev"
    assert "dev" in out["csv"]
    assert looker.logins == 1, "the SDK's two logins never reach Looker"
    assert assert_every_call_pinned(looker) == 6
    assert_pin_before_use(looker)


async def test_stock_sdk_cannot_switch_the_workspace(
    looker: LookerEmulator, proxy: Proxy, sdk_for: Callable[[Proxy, str], Any]
) -> None:
    """update_session(production) raises the SDK's error with the proxy's message; still dev."""
    sdk = sdk_for(proxy, "analytics")

    def story() -> tuple[str, str]:
        try:
            sdk.update_session(models40.WriteApiSession(workspace_id="production"))
        except sdk_error.SDKError as exc:
            return str(exc), sdk.session().workspace_id
        raise AssertionError("update_session(production) must be refused")

    message, workspace = await asyncio.to_thread(story)
    assert "pins team 'analytics'" in message
    assert workspace == "dev"
    assert looker.session_patches == 1


async def test_stock_sdk_with_wrong_credentials_fails_like_looker(
    proxy: Proxy, sdk_for: Callable[[Proxy, str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong proxy credentials: the SDK reports Looker's 404 'Not found' on login."""
    sdk = sdk_for(proxy, "analytics")
    monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", "wrong")
    with pytest.raises(sdk_error.SDKError, match="Not found"):
        await asyncio.to_thread(sdk.me)


async def test_stock_sdk_renews_its_proxy_token(
    looker: LookerEmulator,
    make_proxy: Callable[..., Awaitable[Proxy]],
    sdk_for: Callable[[Proxy, str], Any],
) -> None:
    """A proxy token lifetime of 120 s is renewed by the SDK's own logic without Looker noticing."""
    proxy = await make_proxy(looker, caller_token_ttl_s=120)
    sdk = sdk_for(proxy, "finance")

    def story() -> list[str]:
        first = sdk.session().workspace_id
        sdk.auth.token.expires_at = sdk.auth.token.expires_at.replace(year=2000)  # force renewal
        return [first, sdk.session().workspace_id]

    assert await asyncio.to_thread(story) == ["production", "production"]
    assert looker.logins == 1

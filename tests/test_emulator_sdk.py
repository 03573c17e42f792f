"""The stock Python looker_sdk against the emulator: what a real client sees.

The SDK is synchronous (requests); each call runs in a worker thread while the emulator
serves on the test's event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import looker_sdk
import pytest
from harness import FakeClock
from looker_sdk import error, models40
from looker_sdk.sdk.api40.methods import Looker40SDK

from workspace_proxy.emulator import LookerEmulator

MakeLooker = Callable[..., Awaitable[LookerEmulator]]
T = TypeVar("T")


@pytest.fixture(name="sdk_for")
def _sdk_for(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Looker40SDK]:
    """Factory: a stock SDK configured only through LOOKERSDK_* variables."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def make(looker: LookerEmulator, who: str = "analytics", *, suffix: str = "") -> Looker40SDK:
        monkeypatch.setenv("LOOKERSDK_BASE_URL", looker.base_url + suffix)
        monkeypatch.setenv("LOOKERSDK_CLIENT_ID", f"{who}-client-id")
        monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", f"{who}-client-secret")
        monkeypatch.setenv("LOOKERSDK_VERIFY_SSL", "false")
        return looker_sdk.init40()

    return make


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Run one blocking SDK call off the event loop."""
    return await asyncio.to_thread(fn, *args)


async def test_sdk_logs_in_lazily_with_a_form_body(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """The SDK logs in on its first call, not before, then its Bearer token is accepted."""
    sdk = sdk_for(looker)
    assert looker.login_attempts == 0
    me = await run(sdk.me)
    assert (me.id, me.display_name) == ("2", "Analytics")
    await run(sdk.me)
    assert looker.logins == 1
    assert [(e.method, e.path, e.status) for e in looker.audit] == [
        ("POST", "/api/4.0/login", 200),
        ("GET", "/api/4.0/user", 200),
        ("GET", "/api/4.0/user", 200),
    ]


async def test_sdk_switches_workspace_and_sees_different_content(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """update_session(dev) switches the session; looks, models, branch and rows follow it."""
    sdk = sdk_for(looker)
    assert (await run(sdk.session)).workspace_id == "production"
    assert (await run(sdk.look, "1")).title == "Revenue"
    assert (await run(sdk.git_branch, "sales")).name == "main"

    updated = await run(sdk.update_session, models40.WriteApiSession(workspace_id="dev"))
    assert updated.workspace_id == "dev"
    assert (await run(sdk.session)).workspace_id == "dev"
    assert (await run(sdk.look, "1")).title == "Revenue (dev)"
    assert (await run(sdk.git_branch, "sales")).name == "dev-analytics"
    models = await run(sdk.all_lookml_models)
    assert [m.name for m in models] == ["sales", "sandbox"]

    query = models40.WriteQuery(model="sandbox", view="experiments", fields=["experiments.id"])
    created = await run(sdk.create_query, query)
    assert created.id is not None
    rows = json.loads(await run(sdk.run_query, created.id, "json"))
    assert rows[0] == {"_workspace": "dev", "experiments.id": "experiments.id 0"}
    csv = await run(sdk.run_query, created.id, "csv")
    assert isinstance(csv, str)
    assert csv.splitlines()[1].startswith("dev,")
    assert looker.logins == 1


async def test_sdk_renews_short_tokens_and_lands_in_production(
    make_looker: MakeLooker, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """With expires_in <= 10 the SDK logs in before every call, losing dev mode each time."""
    looker = await make_looker(token_ttl=5)
    sdk = sdk_for(looker)
    await run(sdk.update_session, models40.WriteApiSession(workspace_id="dev"))
    assert (await run(sdk.session)).workspace_id == "production"
    assert (await run(sdk.look, "1")).title == "Revenue"
    assert looker.logins == 3
    assert len({e.token_fingerprint for e in looker.audit if e.token_fingerprint}) == 3


async def test_sdk_does_not_retry_a_401(
    make_looker: MakeLooker, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """A token Looker expires early gives the SDK a 401 error; it does not log in again."""
    clock = FakeClock()
    looker = await make_looker(clock=clock)
    sdk = sdk_for(looker)
    await run(sdk.me)
    clock.now += 3600
    with pytest.raises(error.SDKError, match="Requires authentication"):
        await run(sdk.me)
    assert looker.logins == 1
    assert looker.audit[-1].status == 401


async def test_sdk_logout_uses_the_unversioned_path(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """auth.logout() sends DELETE /api/logout; the next call logs in again, in production."""
    sdk = sdk_for(looker)
    await run(sdk.update_session, models40.WriteApiSession(workspace_id="dev"))
    old_token = sdk.auth.token.access_token
    assert looker.workspace_of(old_token) == "dev"
    await run(sdk.auth.logout)
    assert (looker.audit[-1].method, looker.audit[-1].path, looker.audit[-1].status) == (
        "DELETE",
        "/api/logout",
        204,
    )
    assert looker.workspace_of(old_token) is None
    assert (await run(sdk.session)).workspace_id == "production"
    assert looker.logins == 2


async def test_sdk_with_trailing_slash_base_url(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """A base_url ending in "/" makes the SDK send //api/4.0/login and //api/logout; both work."""
    sdk = sdk_for(looker, suffix="/")
    assert (await run(sdk.me)).id == "2"
    await run(sdk.auth.logout)
    assert [(e.path, e.status) for e in looker.audit] == [
        ("//api/4.0/login", 200),
        ("/api/4.0/user", 200),
        ("//api/logout", 204),
    ]


async def test_sdk_parses_error_bodies(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """A 404 reaches the SDK as SDKError("Not found") with the plain docs URL, no lookup."""
    sdk = sdk_for(looker)
    with pytest.raises(error.SDKError) as raised:
        await run(sdk.look, "99")
    assert raised.value.message == "Not found"
    assert raised.value.documentation_url == "https://cloud.google.com/looker/docs/"
    assert raised.value.error_doc_url == ""


async def test_sdk_bad_credentials(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong credentials make the SDK's login fail with the emulator's 404 body."""
    sdk = sdk_for(looker)
    monkeypatch.setenv("LOOKERSDK_CLIENT_SECRET", "wrong")
    with pytest.raises(error.SDKError, match="Not found"):
        await run(sdk.me)
    assert (looker.login_attempts, looker.logins) == (1, 0)


async def test_sdk_sudo_as_another_user(
    looker: LookerEmulator, sdk_for: Callable[..., Looker40SDK]
) -> None:
    """auth.login_user() as admin acts as that user; its session names the admin as sudo user."""
    sdk = sdk_for(looker, "admin")
    await run(sdk.auth.login_user, "3")
    assert (await run(sdk.me)).display_name == "Finance"
    assert (await run(sdk.session)).sudo_user_id == "1"
    await run(sdk.auth.logout)
    assert (await run(sdk.me)).display_name == "Admin"

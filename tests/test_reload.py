"""Config reload (SIGHUP): atomic swap, unchanged teams keep their session, bad configs rejected."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from harness import ENV, Proxy, ProxyProcess, assert_every_call_pinned, raw_config

from workspace_proxy.app import reload
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]


async def _status(proxy: Proxy, token: str, path: str = "/api/4.0/user") -> int:
    resp = await proxy.call("GET", path, token)
    await resp.read()
    return resp.status


async def test_reload_keeps_unchanged_teams_and_repins_changed_ones(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """finance unchanged keeps its session; marketing added; analytics removed -> 401."""
    proxy = await make_proxy(looker, teams=("analytics", "finance"))
    tokens = {t: await proxy.login(t) for t in ("analytics", "finance")}
    for token in tokens.values():
        assert await _status(proxy, token) == 200
    assert looker.logins == 2
    new = parse_config(raw_config(looker.base_url, teams=("finance", "marketing")), env=ENV)
    await reload(proxy.client.app, new)
    assert await _status(proxy, tokens["finance"]) == 200
    assert looker.logins == 2, "finance kept its pinned session"
    assert await _status(proxy, tokens["analytics"]) == 401
    marketing = await proxy.login("marketing")
    session = await proxy.get_json("/api/4.0/session", marketing)
    assert session["workspace_id"] == "dev"
    assert looker.logins == 3
    assert_every_call_pinned(looker)


async def test_reload_with_a_changed_workspace_repins(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A team whose workspace changes gets a new session pinned to the new workspace."""
    proxy = await make_proxy(looker, teams=("marketing",))
    token = await proxy.login("marketing")
    assert (await proxy.get_json("/api/4.0/session", token))["workspace_id"] == "dev"
    raw = raw_config(looker.base_url, teams=("marketing",))
    raw["teams"]["marketing"]["workspace"] = "production"
    await reload(proxy.client.app, parse_config(raw, env=ENV))
    assert (await proxy.get_json("/api/4.0/session", token))["workspace_id"] == "production"
    assert (looker.logins, looker.session_patches) == (2, 2)


async def test_in_flight_request_of_a_removed_team_finishes(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A request in flight when its team is removed completes on the session it holds."""
    proxy = await make_proxy(looker, teams=("analytics", "finance"))
    token = await proxy.login("analytics")
    assert await _status(proxy, token) == 200
    looker.faults.latency_s = 0.5
    slow = asyncio.ensure_future(_status(proxy, token, "/api/4.0/looks/1"))
    await looker.arrived("/looks/1")
    await reload(
        proxy.client.app, parse_config(raw_config(looker.base_url, teams=("finance",)), env=ENV)
    )
    assert await slow == 200
    looker.faults.latency_s = 0
    assert await _status(proxy, token) == 401
    assert_every_call_pinned(looker)


async def test_sighup_reloads_a_valid_config_and_rejects_an_invalid_one(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """SIGHUP: an invalid file is logged with every problem and ignored; a valid one is applied."""
    proc = await ProxyProcess.start(raw_config(looker.base_url, teams=("analytics",)), tmp_path)
    path = tmp_path / "proxy.yaml"
    try:
        async with aiohttp.ClientSession() as http:
            form = {"client_id": "analytics-caller", "client_secret": "analytics-caller-secret"}
            async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}"}
            async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200

            path.write_text("looker: {base_url: nope}\nteams: {}\n")
            proc.proc.send_signal(signal.SIGHUP)
            await proc.wait_for_event("config_reload_rejected")
            async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200, "still serving on the old config"

            path.write_text(yaml.safe_dump(raw_config(looker.base_url, teams=("finance",))))
            proc.proc.send_signal(signal.SIGHUP)
            await proc.wait_for_event("config_reloaded")
            async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 401, "analytics was removed"
            form = {"client_id": "finance-caller", "client_secret": "finance-caller-secret"}
            async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                assert resp.status == 200
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    rejected = next(e for e in proc.events() if e["event"] == "config_reload_rejected")
    assert any("looker.base_url" in p for p in rejected["problems"])
    assert any("token_signing_key: required" in p for p in rejected["problems"])

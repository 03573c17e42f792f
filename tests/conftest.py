"""Shared fixtures: a real Looker emulator on a real socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import ENV, Proxy, ProxyServer, raw_config, timing
from pytest_aiohttp import AiohttpClient, AiohttpServer
from spy import SpyLooker

from workspace_proxy.app import create_app
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.validation import parse_config

# --- emulator fixtures ---
MakeLooker = Callable[..., Awaitable[LookerEmulator]]


@pytest.fixture(name="make_looker")
def _make_looker(aiohttp_server: AiohttpServer) -> MakeLooker:
    """Factory: `await make_looker(token_ttl=..., users=..., clock=...)` serves a new emulator.

    The result has `base_url` ("http://127.0.0.1:<port>", no trailing slash) and `server` set;
    servers stop at teardown."""

    async def make(**kwargs: Any) -> LookerEmulator:
        emu = LookerEmulator(**kwargs)
        emu.server = await aiohttp_server(emu.app)
        emu.base_url = str(emu.server.make_url("/")).rstrip("/")
        return emu

    return make


@pytest.fixture(name="looker")
async def _looker(make_looker: MakeLooker) -> LookerEmulator:
    """A served `LookerEmulator()` with the default users; see `make_looker`."""
    return await make_looker()


# --- end emulator fixtures ---


# --- proxy fixtures ---
MakeProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture(name="make_proxy")
def _make_proxy(aiohttp_client: AiohttpClient) -> MakeProxy:
    """Factory: `await make_proxy(looker, clock=..., env_overrides=..., teams=(names),
    team_settings={team: {key: value}}, **top_level_config_keys)`.

    Serves the real proxy app, configured for the emulator's users (see harness.TEAMS), on a
    real socket; returns a `harness.Proxy`."""

    async def make(
        looker: LookerEmulator,
        /,
        *,
        clock: Callable[[], float] | None = None,
        env_overrides: dict[str, str] | None = None,
        teams: tuple[str, ...] = ("analytics", "finance"),
        team_settings: dict[str, dict[str, Any]] | None = None,
        **overrides: Any,
    ) -> Proxy:
        raw = raw_config(looker.base_url, teams=teams, **overrides)
        for team, settings in (team_settings or {}).items():
            raw["teams"].setdefault(team, {}).update(settings)
        config = parse_config(raw, env={**ENV, **(env_overrides or {})})
        app = create_app(config) if clock is None else create_app(config, **timing(clock))
        return Proxy(await aiohttp_client(ProxyServer(app)), config)

    return make


@pytest.fixture(name="proxy")
async def _proxy(looker: LookerEmulator, make_proxy: MakeProxy) -> Proxy:
    """The proxy in front of `looker`, with teams analytics (dev) and finance (production)."""
    return await make_proxy(looker)


@pytest.fixture
async def spy(aiohttp_server: AiohttpServer) -> SpyLooker:
    upstream = SpyLooker()
    server = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("/")).rstrip("/")
    return upstream


@pytest.fixture
async def spy_proxy(spy: SpyLooker, make_proxy: MakeProxy) -> Proxy:
    return await make_proxy(spy)  # duck-typed: only base_url is read

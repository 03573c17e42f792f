"""Sealed passthrough tokens (``wp2.``): the caller's Looker session, encrypted and
authenticated (AES-GCM) inside a proxy token; and raw Looker tokens re-verified at a short
interval (issue 17, M7)."""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import structlog
from harness import ENV, SIGNING_KEY, FakeClock, Proxy, raw_config

from workspace_proxy.app import reload
from workspace_proxy.config import Secret
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.errors import Unauthenticated
from workspace_proxy.firstsight import REVERIFY_S
from workspace_proxy.log import MASK, redact_secrets
from workspace_proxy.sealed import SealedSession, Sealer
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(30)
MakeProxy = Callable[..., Awaitable[Proxy]]
PASSTHROUGH = {
    "mode": "passthrough",
    "workspace": "dev",
    "looker_client_ids": ["marketing-client-id"],
}
MARKETING = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}
OTHER_KEY = "another-signing-key-fedcba9876543210-fedcba"
T0 = 1_800_000_000.0


def _session(**change: object) -> SealedSession:
    fields: dict[str, object] = {
        "team": "bi",
        "looker_token": Secret("looker-token-0123456789"),
        "expires_at": int(T0) + 600,
        "token_id": "tid-1",
        "workspace": "dev",
        "branch": None,
        "sudo": None,
    }
    fields.update(change)
    return SealedSession(**fields)  # type: ignore[arg-type]


# --- the seal itself -------------------------------------------------------------------------


def test_seal_round_trip_hides_the_looker_token() -> None:
    """What is sealed opens to the same claims; the token text shows none of them."""
    sealer = Sealer(Secret(SIGNING_KEY), clock=FakeClock(T0))
    session = _session(sudo="3", branch="sales/feature-x")
    token = sealer.seal(session).reveal()
    assert token.startswith("wp2.")
    opened = sealer.open(token)
    assert opened == session
    assert opened.looker_token.reveal() == "looker-token-0123456789"
    body = base64.urlsafe_b64decode(token[4:] + "==")
    for plain in (b"looker-token", b"bi", b"dev", b"tid-1", b"feature-x"):
        assert plain not in body
    assert sealer.seal(session).reveal() != token, "a fresh nonce per token"


def test_expired_sealed_token_is_refused() -> None:
    clock = FakeClock(T0)
    sealer = Sealer(Secret(SIGNING_KEY), clock=clock)
    token = sealer.seal(_session()).reveal()
    clock.now = T0 + 599
    assert sealer.open(token).team == "bi"
    clock.now = T0 + 600
    with pytest.raises(Unauthenticated):
        sealer.open(token)


def test_any_change_or_another_key_is_refused() -> None:
    """Every single-byte change of the sealed bytes, truncation, another prefix or another key:
    401."""
    sealer = Sealer(Secret(SIGNING_KEY), clock=FakeClock(T0))
    token = sealer.seal(_session()).reveal()
    raw = base64.urlsafe_b64decode(token[4:] + "=" * (-len(token[4:]) % 4))
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        with pytest.raises(Unauthenticated):
            sealer.open("wp2." + base64.urlsafe_b64encode(flipped).rstrip(b"=").decode())
    for bad in (token[:-4], token[:20], "wp2.", "wp2", "wp1." + token[4:], token + "A", "wp2.!!"):
        with pytest.raises(Unauthenticated):
            sealer.open(bad)
    foreign = Sealer(Secret(OTHER_KEY), clock=FakeClock(T0))
    with pytest.raises(Unauthenticated):
        sealer.open(foreign.seal(_session()).reveal())


def test_sealed_tokens_are_masked_in_logs() -> None:
    """The log redaction masks a sealed token wherever it appears, with or without a scheme."""
    token = Sealer(Secret(SIGNING_KEY)).seal(_session()).reveal()
    event = {
        "event": "x",
        "note": f"got {token} from a caller",
        "header": f"token {token}",
        "items": [f"a {token}"],
    }
    out = redact_secrets(None, "info", event)
    assert token not in repr(out)
    assert MASK in out["note"]


# --- through the proxy -----------------------------------------------------------------------


async def _pt_proxy(looker: LookerEmulator, make_proxy: MakeProxy, **kw: object) -> Proxy:
    return await make_proxy(looker, teams=("analytics",), team_settings={"bi": PASSTHROUGH}, **kw)


async def _login(proxy: Proxy) -> str:
    resp = await proxy.client.post("/api/4.0/login", data=MARKETING)
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


async def _status(proxy: Proxy, token: str) -> int:
    resp = await proxy.call("GET", "/api/4.0/user", token)
    if resp.status == 401:
        assert (await resp.json())["message"] == "Requires authentication."
    return resp.status


async def test_tampered_expired_and_foreign_sealed_tokens_get_401(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A sealed token that fails to open, has expired or was sealed with another key: 401 and
    nothing reaches Looker."""
    proxy = await _pt_proxy(looker, make_proxy)
    good = await _login(proxy)
    looker_token = looker.issued_tokens()[0]
    assert await _status(proxy, good) == 200
    mark = len(looker.audit)
    now = int(time.time())
    ours, theirs = Sealer(Secret(SIGNING_KEY)), Sealer(Secret(OTHER_KEY))
    live = _session(team="bi", looker_token=Secret(looker_token), expires_at=now + 600)
    assert await _status(proxy, ours.seal(live).reveal()) == 200, "the forger works"
    mark = len(looker.audit)
    bad = [
        good[:-3] + ("AAA" if good[-3:] != "AAA" else "BBB"),
        good[:40],
        ours.seal(_session(team="bi", looker_token=Secret(looker_token), expires_at=now - 1)),
        theirs.seal(live),
        ours.seal(_session(team="analytics", looker_token=Secret(looker_token))),
        ours.seal(_session(team="nobody", looker_token=Secret(looker_token))),
        ours.seal(_session(team="bi", looker_token=Secret(looker_token), workspace="production")),
    ]
    for token in bad:
        text = token.reveal() if isinstance(token, Secret) else token
        assert await _status(proxy, text) == 401, text
    assert looker.audit[mark:] == []


async def test_sealed_token_of_a_team_gone_or_no_longer_passthrough_gets_401(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """After a reload without the team, or with it managed: the sealed token is refused."""
    proxy = await _pt_proxy(looker, make_proxy)
    sealed = await _login(proxy)
    assert await _status(proxy, sealed) == 200
    gone = raw_config(looker.base_url, teams=("analytics",))
    await reload(proxy.client.app, parse_config(gone, env=ENV))
    assert await _status(proxy, sealed) == 401
    back = raw_config(looker.base_url, teams=("analytics",))
    back["teams"]["bi"] = PASSTHROUGH
    await reload(proxy.client.app, parse_config(back, env=ENV))
    assert await _status(proxy, sealed) == 200, "the same team again: accepted"
    managed = raw_config(looker.base_url, teams=("analytics", "marketing"))
    managed["teams"]["bi"] = managed["teams"].pop("marketing")
    await reload(proxy.client.app, parse_config(managed, env=ENV))
    assert await _status(proxy, sealed) == 401


async def _direct(looker: LookerEmulator, method: str, path: str, **kw: object) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{looker.base_url}/api/4.0{path}",
            **kw,  # type: ignore[arg-type]
        ) as resp,
    ):
        await resp.read()
        return resp.status


async def test_raw_token_moved_at_looker_is_back_in_dev_after_the_reverify_interval(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """A raw Looker token pinned on first sight, then PATCHed to production directly at Looker:
    within the re-verify interval calls may run there (the documented limit); once it has
    passed the proxy reads GET /session, sees the drift, re-pins and warns."""
    clock = FakeClock()
    proxy = await _pt_proxy(looker, make_proxy, clock=clock)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{looker.base_url}/api/4.0/login", data=MARKETING) as resp,
    ):
        raw = str((await resp.json())["access_token"])
    assert (await proxy.get_json("/api/4.0/session", raw))["workspace_id"] == "dev"
    assert looker.session_patches == 1
    headers = {"Authorization": f"token {raw}"}
    body = {"workspace_id": "production"}
    assert await _direct(looker, "PATCH", "/session", json=body, headers=headers) == 200
    assert REVERIFY_S <= 30, "a short interval"
    clock.advance(REVERIFY_S - 1)
    assert (await proxy.get_json("/api/4.0/looks/1", raw))["title"] == "Revenue", "the limit"
    with structlog.testing.capture_logs() as events:
        clock.advance(1)
        assert (await proxy.get_json("/api/4.0/looks/1", raw))["title"] == "Revenue (dev)"
        assert (await proxy.get_json("/api/4.0/session", raw))["workspace_id"] == "dev"
    assert looker.session_patches == 3, "first sight, the caller's own PATCH, the re-pin"
    drifted = [e for e in events if e["event"] == "passthrough_session_drifted"]
    assert [(e["log_level"], e["team"], e["observed"]) for e in drifted] == [
        ("warning", "bi", "production")
    ]
    assert not any(raw in repr(e) for e in events)
    assert not [e for e in looker.audit if e.path.endswith("/user")][1:], "identified once"


async def test_raw_token_that_did_not_drift_is_only_read(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Re-verification of an undisturbed session is one GET /session, no PATCH."""
    clock = FakeClock()
    proxy = await _pt_proxy(looker, make_proxy, clock=clock)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{looker.base_url}/api/4.0/login", data=MARKETING) as resp,
    ):
        raw = str((await resp.json())["access_token"])
    await proxy.get_json("/api/4.0/user", raw)
    mark = len(looker.audit)
    clock.advance(REVERIFY_S)
    await proxy.get_json("/api/4.0/user", raw)
    steps = [(e.method, e.path.rsplit("/", 1)[-1]) for e in looker.audit[mark:]]
    assert steps == [("GET", "session"), ("GET", "user")]


async def test_raw_token_that_cannot_be_repinned_fails_closed(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Drifted and the re-pin fails: 503 like a failed pin, nothing forwarded."""
    clock = FakeClock()
    proxy = await _pt_proxy(looker, make_proxy, clock=clock)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{looker.base_url}/api/4.0/login", data=MARKETING) as resp,
    ):
        raw = str((await resp.json())["access_token"])
    await proxy.get_json("/api/4.0/user", raw)
    headers = {"Authorization": f"token {raw}"}
    body = {"workspace_id": "production"}
    assert await _direct(looker, "PATCH", "/session", json=body, headers=headers) == 200
    looker.faults.patch_session_failures = 100
    clock.advance(REVERIFY_S)
    mark = len(looker.audit)
    resp = await proxy.call("GET", "/api/4.0/looks/1", raw)
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert looker.audit_paths("/looks/1") == []
    assert [e.path.rsplit("/", 1)[-1] for e in looker.audit[mark:]][:2] == ["session", "session"]

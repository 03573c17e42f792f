"""Revoked token ids: kept until each token's own expiry, dropped after, cost not growing with
the list (the cost itself is measured in benchmarks/revocations.py, never timed here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from harness import ENV, FakeClock, Proxy, raw_config

from workspace_proxy.app import reload
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.revocations import Revocations
from workspace_proxy.validation import parse_config

MakeProxy = Callable[..., Awaitable[Proxy]]
T0 = 1_800_000_000.0


def test_revoked_stays_revoked_until_its_expiry_then_is_dropped() -> None:
    """An id is revoked up to (not including) its expiry; after it, it is gone from the list."""
    clock = FakeClock(T0)
    revoked = Revocations(clock=clock)
    revoked.add("a", T0 + 100)
    revoked.add("b", T0 + 50)
    assert "a" in revoked
    assert "b" in revoked
    assert "c" not in revoked
    clock.now = T0 + 49.9
    assert ("a" in revoked, "b" in revoked, len(revoked)) == (True, True, 2)
    clock.now = T0 + 50
    assert ("a" in revoked, "b" in revoked, len(revoked)) == (True, False, 1)
    clock.now = T0 + 100
    assert ("a" in revoked, len(revoked), revoked.entries()) == (False, 0, [])


def test_size_tracks_only_unexpired_revocations() -> None:
    """40,000 logouts spread over time: the list never holds more than the unexpired ones, and
    expired entries leave it as new logouts come in (no separate sweep needed)."""
    clock = FakeClock(T0)
    revoked = Revocations(clock=clock)
    for n in range(40_000):
        clock.now = T0 + n  # one logout a second, each token living 600 s
        revoked.add(f"id-{n}", clock.now + 600)
        assert len(revoked._expiry) <= 600  # the clean-up happens on add, not only on len()
    assert len(revoked) == 600
    assert "id-39399" not in revoked
    assert "id-39400" in revoked


def test_already_expired_and_repeated_revocations() -> None:
    """An expired token is not stored; revoking an id again keeps the later expiry only."""
    clock = FakeClock(T0)
    revoked = Revocations(clock=clock)
    revoked.add("old", T0 - 1)
    assert len(revoked) == 0
    revoked.add("x", T0 + 10)
    revoked.add("x", T0 + 20)
    revoked.add("x", T0 + 15)
    assert revoked.entries() == [("x", T0 + 20)]
    clock.now = T0 + 12
    assert "x" in revoked
    assert len(revoked) == 1, "the stale heap entry of the first add dropped nothing"
    clock.now = T0 + 20
    assert len(revoked) == 0


async def test_revoke_publishes_after_remembering() -> None:
    """revoke() holds the id locally before the publication (the --workers fan-out) runs."""
    seen: list[tuple[str, float, bool]] = []
    revoked = Revocations(clock=FakeClock(T0))

    async def publish(token_id: str, expires_at: float) -> None:
        seen.append((token_id, expires_at, token_id in revoked))

    revoked.publish = publish
    await revoked.revoke("j", T0 + 5)
    assert seen == [("j", T0 + 5, True)]


async def test_a_logout_survives_a_config_reload(
    looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """SIGHUP builds a new view: a logged-out proxy token stays refused (it was accepted again
    when each reload started an empty revocation list)."""
    proxy = await make_proxy(looker)
    token = await proxy.login("analytics")
    assert (await proxy.call("GET", "/api/4.0/user", token)).status == 200
    assert (await proxy.call("DELETE", "/api/logout", token)).status == 204
    assert (await proxy.call("GET", "/api/4.0/user", token)).status == 401
    await reload(proxy.client.app, parse_config(raw_config(looker.base_url), env=ENV))
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 401, "the logout was forgotten by the reload"

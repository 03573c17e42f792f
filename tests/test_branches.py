"""Dev branches pinned per team: checked out and verified after the workspace pin, before use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from harness import ENV, Proxy, assert_every_call_pinned, raw_config

from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator
from workspace_proxy.errors import ConfigError
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(30)
MakeProxy = Callable[..., Awaitable[Proxy]]
ADMIN = next(u for u in DEFAULT_USERS if u.is_admin)


def _teams(branch: dict[str, str], **team: Any) -> dict[str, dict[str, Any]]:
    return {"analytics": {"git_branch": branch, **team}}


@pytest.fixture
def feature(looker: LookerEmulator) -> str:
    """A branch someone else created; the analytics user has its own branch checked out."""
    looker.git.create(ADMIN, "sales", "feature-x", None)
    return "feature-x"


async def test_team_branch_is_checked_out_before_any_call(
    looker: LookerEmulator, make_proxy: MakeProxy, feature: str
) -> None:
    """The pin is login -> PATCH dev -> PUT git_branch {name} -> verified, then calls run."""
    proxy = await make_proxy(looker, team_settings=_teams({"project": "sales", "name": feature}))
    token = await proxy.login("analytics")
    branch = await proxy.get_json("/api/4.0/projects/sales/git_branch", token)
    assert branch["name"] == feature
    calls = [(e.method, e.path.rsplit("/", 1)[-1]) for e in looker.audit]
    assert calls == [
        ("POST", "login"),
        ("PATCH", "session"),
        ("PUT", "git_branch"),
        ("GET", "git_branch"),
    ]
    assert assert_every_call_pinned(looker) == 2


async def test_missing_branch_fails_closed(looker: LookerEmulator, make_proxy: MakeProxy) -> None:
    """A branch Looker does not have: 503 naming it, nothing forwarded, the session logged out."""
    proxy = await make_proxy(
        looker, team_settings=_teams({"project": "sales", "name": "no-such-branch"})
    )
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 503
    assert "no-such-branch" in (await resp.json())["message"]
    assert looker.audit_paths("/user") == []
    assert looker.audit_paths("/logout"), "the unpublished session was logged out"


@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_callers_cannot_switch_a_pinned_branch(
    looker: LookerEmulator, make_proxy: MakeProxy, feature: str, method: str
) -> None:
    """PUT/POST git_branch on a team that pins a branch: 403, never forwarded."""
    proxy = await make_proxy(looker, team_settings=_teams({"project": "sales", "name": feature}))
    token = await proxy.login("analytics")
    resp = await proxy.call(
        method, "/api/4.0/projects/sales/git_branch", token, json={"name": "dev-analytics"}
    )
    assert resp.status == 403
    assert "feature-x" in (await resp.json())["message"]
    assert [e.method for e in looker.audit_paths("/git_branch")] == []


async def test_branch_switch_allowed_when_configured(
    looker: LookerEmulator, make_proxy: MakeProxy, feature: str
) -> None:
    """allow_branch_switch: the caller's checkout is forwarded (still in dev)."""
    proxy = await make_proxy(
        looker,
        team_settings=_teams({"project": "sales", "name": feature}, allow_branch_switch=True),
    )
    token = await proxy.login("analytics")
    resp = await proxy.call(
        "PUT", "/api/4.0/projects/sales/git_branch", token, json={"name": "dev-analytics"}
    )
    assert resp.status == 200
    assert (await resp.json())["name"] == "dev-analytics"
    assert_every_call_pinned(looker)


async def test_teams_without_a_pinned_branch_may_switch(
    looker: LookerEmulator, proxy: Proxy
) -> None:
    """Without git_branch the proxy does not interfere with branch calls (spectacles --branch)."""
    token = await proxy.login("analytics")
    resp = await proxy.call(
        "PUT", "/api/4.0/projects/sales/git_branch", token, json={"name": "dev-analytics"}
    )
    assert resp.status == 200


def test_branch_config_rules() -> None:
    """A production team cannot pin a branch; one Looker user cannot have two branches."""
    raw = raw_config("https://looker.example.com", teams=("analytics", "finance", "marketing"))
    raw["teams"]["finance"]["git_branch"] = {"project": "sales", "name": "x"}
    raw["teams"]["marketing"]["looker_client_id"] = {"env": "ANALYTICS_LOOKER_ID"}
    raw["teams"]["marketing"]["looker_client_secret"] = {"env": "ANALYTICS_LOOKER_SECRET"}
    raw["teams"]["marketing"]["git_branch"] = {"project": "sales", "name": "other"}
    raw["teams"]["analytics"]["git_branch"] = {"project": "sales/../x", "name": ""}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env=ENV)
    problems = "\n".join(err.value.problems)
    assert "teams.finance.git_branch: only a dev team can pin a branch" in problems
    assert "teams.marketing.git_branch: same Looker API user as team 'analytics'" in problems
    assert "teams.analytics.git_branch.project: must be a Looker project id" in problems
    assert "teams.analytics.git_branch.name: must be a non-empty string" in problems

"""spectacles (the LookML CI tool), unchanged, run as a CLI against the proxy.

spectacles manages `/session` itself: it reads `GET /session` first, PATCHes the session to
production when run without `--branch` and to dev with `--branch`, but only when `GET /session`
showed another workspace. Behind the proxy `GET /session` always shows the team's pin, so:

| team (pin)      | run           | spectacles' PATCH  | outcome                                  |
|-----------------|---------------|--------------------|------------------------------------------|
| finance (prod)  | no `--branch` | none               | validates production                     |
| analytics (dev) | `--branch B`  | none               | PUTs git_branch B, validates, restores   |
| analytics (dev) | no `--branch` | production: 403    | exits 101 with the proxy's 403 message   |
| finance (prod)  | `--branch B`  | dev: 403           | exits 101 with the proxy's 403 message   |

spectacles never PATCHes to the workspace it already sees, so the proxy's answer to a PATCH to the
pinned workspace (the pinned session, no call to Looker) is not exercised by spectacles.

spectacles is a test dependency (pyproject.toml); it runs from this virtualenv's bin directory."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Proxy, assert_every_call_pinned, assert_pin_before_use
from yarl import URL

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)

SPECTACLES = Path(sys.executable).with_name("spectacles")
RUN_TIMEOUT_S = 30
LOOKER_API_ERROR = 101  # spectacles' exit code for a LookerApiError
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Run:
    """One spectacles run: exit code, what it printed, and its debug log file."""

    code: int
    output: str
    log: str


async def spectacles(
    proxy: Proxy, tmp_path: Path, command: str, team: str, *args: str, secret: str | None = None
) -> Run:
    """Run `spectacles <command>` as `team`'s caller against the proxy, awaited asynchronously."""
    if not SPECTACLES.is_file():
        pytest.fail(
            f"spectacles is not installed next to {sys.executable}: "
            "pip install 'spectacles==2.4.20' (a test dependency, see pyproject.toml)"
        )
    # spectacles' login and /versions calls honour HTTP(S)_PROXY; LOOKER_* would add options.
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "LOOKER_"))
        and not k.upper().startswith("SPECTACLES_")
    }
    log_dir = tmp_path / f"spectacles-{command}-{team}"
    proc = await asyncio.create_subprocess_exec(
        str(SPECTACLES), command,
        "--base-url", "http://127.0.0.1", "--port", str(URL(proxy.base_url).port),
        "--client-id", f"{team}-caller", "--client-secret", secret or f"{team}-caller-secret",
        "--log-dir", str(log_dir), "--no-looker-ci-warning", *args,
        cwd=tmp_path,
        env={**inherited, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"spectacles {command} ran longer than {RUN_TIMEOUT_S} s") from None
    log_file = log_dir / "spectacles.log"
    log = log_file.read_text() if log_file.is_file() else ""
    assert proc.returncode is not None
    return Run(proc.returncode, ANSI.sub("", out.decode()), ANSI.sub("", log))


def calls(looker: LookerEmulator) -> list[tuple[str, str, str | None]]:
    """(method, path without /api/4.0, workspace) of every call made under a team session."""
    return [
        (e.method, e.path.removeprefix("/api/4.0"), e.workspace)
        for e in looker.audit
        if e.user_id is not None
    ]


def refusal(team: str, pinned: str, wanted: str) -> str:
    return (
        f"workspace-proxy pins team {team!r} to the {pinned!r} workspace; "
        f"switching this session to {wanted!r} is not allowed."
    )


def one_line(text: str) -> str:
    """spectacles' log wraps long lines; join them back (and squeeze the indentation)."""
    return re.sub(r"\s+", " ", text)


async def test_connect_prints_the_looker_version(
    looker: LookerEmulator, proxy: Proxy, tmp_path: Path
) -> None:
    """`spectacles connect` logs in to the proxy and prints Looker's version; exit 0."""
    run = await spectacles(proxy, tmp_path, "connect", "analytics")
    assert run.code == 0, run.output
    assert "Connected to Looker version 26.12.3 using Looker API 4.0" in run.output
    # The login was answered by the proxy; only the public /versions reached Looker.
    assert [(e.method, e.path, e.user_id) for e in looker.audit] == [
        ("GET", "/api/4.0/versions", None)
    ]


async def test_connect_with_a_wrong_secret_fails(
    looker: LookerEmulator, proxy: Proxy, tmp_path: Path
) -> None:
    """A wrong caller secret: spectacles cannot authenticate (exit 101); Looker is not called."""
    run = await spectacles(proxy, tmp_path, "connect", "analytics", secret="wrong")
    assert run.code == LOOKER_API_ERROR, run.output
    assert "Couldn't authenticate to the Looker API" in run.output
    assert looker.audit == []


async def test_lookml_in_production_for_a_production_team(
    looker: LookerEmulator, proxy: Proxy, tmp_path: Path
) -> None:
    """finance (production): `spectacles lookml` validates production and never PATCHes."""
    run = await spectacles(proxy, tmp_path, "lookml", "finance", "--project", "sales")
    assert run.code == 0, run.output
    assert "No LookML errors found" in run.output
    assert "Updating session" not in run.log, "GET /session showed production already"
    assert calls(looker) == [
        ("PATCH", "/session", "production"),  # the proxy's own pin, before any forwarding
        ("GET", "/session", "production"),
        ("GET", "/projects/sales/git_branch", "production"),
        ("GET", "/projects/sales/manifest", "production"),
        ("GET", "/projects/sales/validate", "production"),
    ]
    assert assert_every_call_pinned(looker) == 4
    assert_pin_before_use(looker)


async def test_lookml_on_a_branch_for_a_dev_team(
    looker: LookerEmulator, proxy: Proxy, tmp_path: Path
) -> None:
    """analytics (dev) with --branch: checks the branch out in dev, validates, restores it."""
    analytics = looker.user("2")
    assert analytics is not None
    looker.git.create(analytics, "sales", "feature-x", None)
    looker.git.checkout(analytics, "sales", "dev-analytics", None)
    run = await spectacles(
        proxy, tmp_path, "lookml", "analytics", "--project", "sales", "--branch", "feature-x"
    )
    assert run.code == 0, run.output
    assert "No LookML errors found" in run.output
    assert "Updating session" not in run.log, "GET /session showed dev already"
    assert calls(looker) == [
        ("PATCH", "/session", "production"),  # the proxy's pin (a new session starts there)
        ("GET", "/session", "dev"),
        ("GET", "/projects/sales/git_branch", "dev"),
        ("PUT", "/projects/sales/git_branch", "dev"),  # checkout feature-x
        ("GET", "/projects/sales/manifest", "dev"),
        ("GET", "/projects/sales/validate", "dev"),
        ("PUT", "/projects/sales/git_branch", "dev"),  # back to dev-analytics
    ]
    assert assert_every_call_pinned(looker) == 6
    assert looker.git.current(analytics, "sales").name == "dev-analytics"


@pytest.mark.parametrize(
    ("team", "args", "pinned", "wanted"),
    [
        ("analytics", (), "dev", "production"),
        ("finance", ("--branch", "dev-finance"), "production", "dev"),
    ],
    ids=["dev-team-production-run", "production-team-branch-run"],
)
async def test_lookml_switching_away_from_the_pin_is_refused(
    looker: LookerEmulator,
    proxy: Proxy,
    tmp_path: Path,
    team: str,
    args: tuple[str, ...],
    pinned: str,
    wanted: str,
) -> None:
    """spectacles' PATCH away from the pin gets the proxy's 403: exit 101, nothing validated."""
    run = await spectacles(proxy, tmp_path, "lookml", team, "--project", "sales", *args)
    assert run.code == LOOKER_API_ERROR, run.output
    assert f"Unable to update workspace to '{wanted}'" in run.output
    assert f"Updating session to use the {wanted} workspace" in run.log
    assert "received a 403 response code" in run.log
    assert refusal(team, pinned, wanted) in one_line(run.log)
    assert [path for _, path, _ in calls(looker)] == [
        "/session",  # the proxy's pin
        "/session",
        "/projects/sales/git_branch",
    ], "nothing is validated, and spectacles' PATCH never reaches Looker"
    assert looker.session_patches == 1
    assert assert_every_call_pinned(looker) == 2


async def test_sql_in_production_for_a_production_team(
    looker: LookerEmulator, proxy: Proxy, tmp_path: Path
) -> None:
    """finance: `spectacles sql` runs its query tasks in production, for production's explores."""
    run = await spectacles(proxy, tmp_path, "sql", "finance", "--project", "sales")
    assert run.code == 0, run.output
    assert "sales.orders passed" in run.output
    assert "sales.customers passed" in run.output
    assert "orders_wip" not in run.output
    assert "Updating session" not in run.log
    paths = {path for _, path, _ in calls(looker)}
    assert {"/queries", "/query_tasks", "/query_tasks/multi_results"} <= paths
    assert sorted(t.workspace for t in looker.query_tasks.values()) == ["production"] * 2
    assert assert_every_call_pinned(looker) == len(calls(looker)) - 1  # all but the pin


async def test_sql_on_a_branch_for_a_dev_team(
    looker: LookerEmulator, proxy: Proxy, tmp_path: Path
) -> None:
    """analytics --branch: `spectacles sql` also tests the dev-only explore, all in dev."""
    run = await spectacles(
        proxy, tmp_path, "sql", "analytics", "--project", "sales", "--branch", "dev-analytics"
    )
    assert run.code == 0, run.output
    for explore in ("sales.orders", "sales.customers", "sales.orders_wip"):
        assert f"{explore} passed" in run.output
    assert "Updating session" not in run.log
    assert sorted(t.workspace for t in looker.query_tasks.values()) == ["dev"] * 3
    assert assert_every_call_pinned(looker) == len(calls(looker)) - 1  # all but the pin

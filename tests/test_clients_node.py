"""The stock @looker/sdk-node, unchanged, driven through the proxy by tests/node/drive.mjs.

tests/node/package.json and package-lock.json pin the SDK; `npm ci` installs it into
tests/node/node_modules the first time (and again whenever either file changes). A missing
node/npm or a failed install fails the tests: they are never skipped."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Proxy, assert_every_call_pinned, assert_pin_before_use

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(120)  # the first `npm ci` downloads the SDK

NODE_DIR = Path(__file__).parent / "node"
DRIVER = NODE_DIR / "drive.mjs"
INSTALLED = NODE_DIR / "node_modules" / ".workspace-proxy-installed"
MIN_NODE_MAJOR = 20
INSTALL_TIMEOUT_S = 100
DRIVE_TIMEOUT_S = 30
OTHER = {"dev": "production", "production": "dev"}
EXPLORES = {
    "dev": ["sales.orders", "sales.customers", "sales.orders_wip", "sandbox.experiments"],
    "production": ["sales.orders", "sales.customers"],
}


def _install_fingerprint(node_version: str) -> str:
    digest = hashlib.sha256(node_version.encode())
    for name in ("package.json", "package-lock.json"):
        digest.update((NODE_DIR / name).read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the pinned SDK installed in tests/node/node_modules."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"node and npm are needed to test @looker/sdk-node (node: {node}, npm: {npm}); "
            f"install Node.js >= {MIN_NODE_MAJOR} with npm (e.g. apt-get install nodejs npm)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        pytest.fail(f"node {version} is too old: @looker/sdk-node needs >= {MIN_NODE_MAJOR}")
    wanted = _install_fingerprint(version)
    if INSTALLED.is_file() and INSTALLED.read_text() == wanted:
        return node
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm ci` in {NODE_DIR} took more than {INSTALL_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(f"`npm ci` in {NODE_DIR} failed ({done.returncode}):\n{done.stderr}")
    INSTALLED.write_text(wanted)
    return node


@dataclass
class Drive:
    """One run of drive.mjs: its exit code, its RESULT object and everything else it printed."""

    code: int
    result: dict[str, Any]
    noise: list[str]


async def drive(node: str, proxy: Proxy, team: str, secret: str | None = None, **env: str) -> Drive:
    """Run drive.mjs as `team`'s caller against the proxy, awaited without blocking the loop."""
    workspace = proxy.config.teams[team].workspace
    inherited = {
        k: v for k, v in os.environ.items() if not k.upper().startswith(("LOOKERSDK_", "HTTP"))
    }
    proc = await asyncio.create_subprocess_exec(
        node,
        str(DRIVER),
        cwd=NODE_DIR,
        env={
            **inherited,
            "NO_PROXY": "127.0.0.1,localhost",
            "LOOKERSDK_BASE_URL": proxy.base_url,
            "LOOKERSDK_CLIENT_ID": f"{team}-caller",
            "LOOKERSDK_CLIENT_SECRET": secret or f"{team}-caller-secret",
            "LOOKERSDK_VERIFY_SSL": "false",
            "LOOKERSDK_TIMEOUT": "20",
            "DRIVE_OWN_WORKSPACE": workspace,
            "DRIVE_OTHER_WORKSPACE": OTHER[workspace],
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), DRIVE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"drive.mjs did not finish within {DRIVE_TIMEOUT_S} s") from None
    lines = out.decode().splitlines()
    results = [line.removeprefix("RESULT ") for line in lines if line.startswith("RESULT ")]
    assert len(results) == 1, f"drive.mjs printed {len(results)} RESULT lines:\n" + "\n".join(lines)
    noise = [line for line in lines if not line.startswith("RESULT ")]
    assert proc.returncode is not None
    return Drive(proc.returncode, json.loads(results[0]), noise)


@pytest.mark.parametrize("team", ["analytics", "finance"])
async def test_node_sdk_stays_in_the_team_workspace(
    looker: LookerEmulator, proxy: Proxy, node: str, team: str
) -> None:
    """me, session, models, a refused switch, logout and re-login: every call in the team's pin."""
    workspace = proxy.config.teams[team].workspace
    run = await drive(node, proxy, team)
    assert run.code == 0, run
    out = run.result
    assert out["me"] == {"analytics": "2", "finance": "3"}[team]
    assert out["workspace"] == workspace
    assert out["explores"] == EXPLORES[workspace]
    assert out["update_other"] == {
        "ok": False,
        "message": f"workspace-proxy pins team {team!r} to the {workspace!r} workspace; "
        f"switching this session to {OTHER[workspace]!r} is not allowed.",
    }
    assert out["after_refusal"] == workspace
    assert (out["logout"], out["authenticated_after_logout"]) == (True, False)
    assert out["logged_out_token_status"] == 401, "logout must end the proxy token"
    assert out["after_relogin"] == workspace
    assert out["new_token_after_relogin"] is True
    assert (looker.logins, looker.session_patches) == (1, 1), "the SDK's logins stay at the proxy"
    # user, session, lookml_models, session after the refusal, session after the re-login
    assert assert_every_call_pinned(looker) == 5
    assert_pin_before_use(looker)


async def test_node_sdk_with_a_wrong_secret_fails_like_looker(
    looker: LookerEmulator, proxy: Proxy, node: str
) -> None:
    """Wrong caller secret: the SDK's login throws Looker's 'Not found'; Looker is not called."""
    run = await drive(node, proxy, "analytics", secret="wrong")
    assert run.code == 1, run
    assert run.result["failed"].startswith("LookerSDKError: Not found"), run
    assert looker.audit == []


@pytest.mark.parametrize("team", ["analytics", "finance"])
async def test_node_sdk_update_session_to_its_own_workspace(
    looker: LookerEmulator, proxy: Proxy, node: str, team: str
) -> None:
    """update_session(own workspace) answers the pinned session, and later calls still work."""
    workspace = proxy.config.teams[team].workspace
    run = await drive(node, proxy, team, DRIVE_SWITCH_OWN="1")
    assert run.code == 0, run
    assert run.result["update_own"] == {"ok": True, "workspace": workspace}
    assert run.result["after_refusal"] == workspace
    assert run.result["after_relogin"] == workspace
    assert looker.session_patches == 1, "a switch to the pinned workspace never reaches Looker"
    assert assert_every_call_pinned(looker) == 6

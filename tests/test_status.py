"""Where each team stands: /readyz's row per team (mode, configured and verified workspace,
branch, session generation and age, state) through every state a session goes through, and
`workspace-proxy status`, which prints it as a table."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import trustme
import yaml
from conftest import MakeProxy
from harness import FakeClock, Proxy, ProxyProcess, free_port, raw_config
from pytest_aiohttp import AiohttpClient

from workspace_proxy.app import Proxy as ProxyApp
from workspace_proxy.app import create_admin_app
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.status import State, duration, table

pytestmark = pytest.mark.timeout(60)
USER: Final = "/api/4.0/user"


class Admin:
    """The proxy's admin app on a real socket."""

    def __init__(self, proxy: Proxy, aiohttp_client: AiohttpClient) -> None:
        self.proxy = proxy
        self.aiohttp_client = aiohttp_client
        self.client: Any = None

    async def teams(self) -> dict[str, Any]:
        if self.client is None:
            app: ProxyApp = self.proxy.client.server.app  # type: ignore[attr-defined]
            self.client = await self.aiohttp_client(
                create_admin_app(teams=app.teams, draining=app.draining, metrics=app.metrics)
            )
        resp = await self.client.get("/readyz")
        return dict((await resp.json())["teams"])

    async def until(self, team: str, key: str, value: object) -> dict[str, Any]:
        """Read /readyz until the team's ``key`` is ``value`` (what the proxy does meanwhile
        is real I/O with the emulator: a bounded number of reads)."""
        for _ in range(1000):
            row = (await self.teams())[team]
            if row[key] == value:
                return row
        raise AssertionError(f"{team}: {key} never became {value!r}: {row}")


async def test_readyz_shows_every_state_a_team_goes_through(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """idle (never needed) -> pinning -> ok (generation 1, verified dev, its age) ->
    refreshing (handed out while the next is pinned) -> ok (generation 2) -> backing_off (an
    outage, next attempt soon) -> failing (a configuration error, next attempt in 30 s)."""
    clock = FakeClock()
    proxy = await make_proxy(looker, clock=clock)
    admin = Admin(proxy, aiohttp_client)
    token = await proxy.login("analytics")
    row = (await admin.teams())["analytics"]
    assert row == {
        "ready": True,
        "mode": "managed",
        "workspace": "dev",
        "verified_workspace": None,
        "branch": None,
        "state": "idle",
        "session_age_s": None,
        "generation": None,
        "next_attempt_in_s": None,
        "last_error": None,
        "fix": None,
        "pin_attempts": 0,
    }

    looker.faults.hold_login = asyncio.Event()
    call = asyncio.ensure_future(proxy.call("GET", USER, token))
    await looker.login_started.wait()
    assert (await admin.teams())["analytics"]["state"] == "pinning"
    looker.faults.hold_login.set()
    assert (await call).status == 200
    looker.faults.hold_login = None
    clock.advance(42)
    row = (await admin.teams())["analytics"]
    assert (row["state"], row["generation"], row["verified_workspace"]) == ("ok", 1, "dev")
    assert row["session_age_s"] == 42

    looker.login_started.clear()
    looker.faults.hold_login = asyncio.Event()
    clock.advance(3600 - 300 - 42)  # past refresh time: the next call starts a refresh
    assert (await proxy.call("GET", USER, token)).status == 200
    await looker.login_started.wait()
    row = (await admin.teams())["analytics"]
    assert (row["state"], row["generation"]) == ("refreshing", 1)
    looker.faults.hold_login.set()
    looker.faults.hold_login = None
    row = await admin.until("analytics", "generation", 2)
    assert (row["state"], row["session_age_s"]) == ("ok", 0)

    looker.revoke_all_tokens()
    looker.faults.login_failures = 10**6
    clock.auto = False  # the call waits for the next attempt in virtual time: it stays due
    call = asyncio.ensure_future(proxy.call("GET", USER, token))
    row = await admin.until("analytics", "state", "backing_off")
    assert (row["ready"], row["fix"]) == (False, None)
    assert "HTTP 500" in row["last_error"]
    assert 0 < row["next_attempt_in_s"] <= 0.03
    clock.auto = True
    clock.advance(2)  # the call's deadline passes: it gets its 503
    assert (await call).status == 503

    looker.faults.login_failure_status = 404  # Looker refuses the credentials now
    clock.advance(1)
    assert (await proxy.call("GET", USER, token)).status == 503
    row = (await admin.teams())["analytics"]
    assert (row["state"], row["ready"], row["next_attempt_in_s"]) == ("failing", False, 30)
    assert "looker_client_secret" in row["fix"]


async def test_readyz_lists_passthrough_teams(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: AiohttpClient
) -> None:
    """A passthrough team is listed, idle until a caller's session is pinned, then ok with the
    verified workspace and how many sessions were pinned; it never makes /readyz 503."""
    bi = {"mode": "passthrough", "workspace": "dev", "looker_client_ids": ["marketing-client-id"]}
    proxy = await make_proxy(looker, teams=("finance",), team_settings={"bi": bi})
    admin = Admin(proxy, aiohttp_client)
    assert (await admin.teams())["bi"]["state"] == "idle"
    form = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}
    for _ in range(2):
        assert (await proxy.client.post("/api/4.0/login", data=form)).status == 200
    row = (await admin.teams())["bi"]
    assert (row["mode"], row["state"], row["verified_workspace"]) == ("passthrough", "ok", "dev")
    assert (row["generation"], row["pin_attempts"]) == (2, 2)


def test_the_table_says_what_each_state_means() -> None:
    """One row per team; idle says never needed; failing says so, when, and the fix below."""
    readyz = {
        "status": "degraded",
        "teams": {
            "analytics": {
                "mode": "managed",
                "workspace": "dev",
                "verified_workspace": "dev",
                "branch": "sales/feature-x",
                "state": "ok",
                "session_age_s": 125.2,
                "generation": 3,
            },
            "finance": {"mode": "managed", "workspace": "production", "state": "idle"},
            "bi": {
                "mode": "passthrough",
                "workspace": "dev",
                "state": "failing",
                "next_attempt_in_s": 59.6,
                "last_error": "Looker answered the checkout with HTTP 404",
                "fix": "create the branch",
            },
        },
    }
    lines = table(readyz, "http://127.0.0.1:9090").splitlines()
    assert lines[0] == "workspace-proxy at http://127.0.0.1:9090: degraded, 3 team(s)"
    assert lines[1].split() == [
        *("TEAM", "MODE", "WORKSPACE", "VERIFIED", "BRANCH", "GEN", "AGE", "STATE")
    ]
    assert lines[2].split() == [
        *("analytics", "managed", "dev", "dev", "sales/feature-x", "3", "2m05s", "ok")
    ]
    assert lines[3].split()[:7] == ["bi", "passthrough", "dev", "-", "-", "-", "-"]
    assert lines[3].endswith("FAILING (configuration), next attempt in 1m00s")
    assert lines[4].endswith("idle (never needed yet)")
    assert lines[5:] == [
        "bi: Looker answered the checkout with HTTP 404",
        "bi: to fix: create the branch",
    ]
    assert [duration(s) for s in (None, 0, 59.4, 61, 3599, 7380)] == [
        *("-", "0s", "59s", "1m01s", "59m59s", "2h03m")
    ]
    assert {s.value for s in State} == {
        *("idle", "pinning", "ok", "refreshing", "backing_off", "failing")
    }


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workspace_proxy", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_status_command_prints_the_table_of_a_running_proxy(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """`workspace-proxy status -c FILE` (the admin address read from the file, no secret
    needed) and `--admin URL` print the running proxy's table: analytics ok in dev after a
    call, finance never needed."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            form = {"client_id": "analytics-caller", "client_secret": "analytics-caller-secret"}
            async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            async with http.get(f"{proc.url}{USER}", headers={"Authorization": f"token {token}"}):
                pass
        config = tmp_path / "status.yaml"  # only its admin section is read
        config.write_text(yaml.safe_dump({"admin": {"port": proc.admin_port}}))
        by_file = await asyncio.to_thread(_status, "-c", str(config))
        by_url = await asyncio.to_thread(_status, "--admin", proc.admin_url)
    finally:
        await proc.kill()
    assert by_file.returncode == 0, by_file.stderr
    # The two tables were read moments apart: the same but for a session age that may have
    # ticked over a second in between.
    assert _ageless(by_file.stdout) == _ageless(
        by_url.stdout.replace(proc.admin_url, f"http://127.0.0.1:{proc.admin_port}")
    )
    rows = {line.split()[0]: line.split() for line in by_file.stdout.splitlines()[2:]}
    assert rows["analytics"][:6] == ["analytics", "managed", "dev", "dev", "-", "1"]
    assert rows["analytics"][-1] == "ok"
    assert " ".join(rows["finance"]).endswith("- idle (never needed yet)")


async def test_status_command_verifies_an_https_admin_listener_with_cafile(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """An admin listener with a certificate from a private CA: without --cafile the command
    says the certificate does not verify and names --cafile (exit 1); with it, the table; an
    unreadable --cafile is a usage error (exit 2). The proxy's own secrets are never needed."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "admin.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "admin.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = raw_config(looker.base_url)
    tls = {"cert_file": str(tmp_path / "admin.pem"), "key_file": str(tmp_path / "admin.key")}
    config["admin"] = {"host": "127.0.0.1", "tls": tls}
    proc = await ProxyProcess.start(config, tmp_path)
    url = f"https://127.0.0.1:{proc.admin_port}"
    try:
        untrusted = await asyncio.to_thread(_status, "--admin", url)
        trusted = await asyncio.to_thread(
            _status, "--admin", url, "--cafile", str(tmp_path / "ca.pem")
        )
        missing = await asyncio.to_thread(
            _status, "--admin", url, "--cafile", str(tmp_path / "nowhere.pem")
        )
    finally:
        await proc.kill()
    assert untrusted.returncode == 1
    [line] = untrusted.stderr.splitlines()
    assert "certificate does not verify" in line
    assert "--cafile names the CA that signed it" in line
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.startswith(f"workspace-proxy at {url}: ")
    assert "analytics" in trusted.stdout
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"status: cannot read --cafile {tmp_path / 'nowhere.pem'}")


def _ageless(table: str) -> list[list[str]]:
    """The table's words, without the AGE column (the 7th) of the team rows and header."""
    lines = table.splitlines()
    return [lines[0].split(), *([*w[:6], *w[7:]] for w in map(str.split, lines[1:]))]


def test_status_command_without_a_proxy_says_what_to_check() -> None:
    """Nothing on the admin address: one line naming it and what to check, exit 1."""
    result = _status("--admin", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("status: no answer from the admin listener at http://127.0.0.1:")
    assert "is the proxy running" in line
    assert result.stdout == ""

"""`serve --workers N`: processes share the port and one pinned session per team."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
from pathlib import Path

import aiohttp
import pytest
import yaml
from harness import ProxyProcess, assert_every_call_pinned, raw_config

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(90)


async def _login(http: aiohttp.ClientSession, url: str, team: str) -> str:
    form = {"client_id": f"{team}-caller", "client_secret": f"{team}-caller-secret"}
    async with http.post(f"{url}/api/4.0/login", data=form) as resp:
        assert resp.status == 200
        return str((await resp.json())["access_token"])


async def test_workers_share_the_port_and_one_login_per_team(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """2 workers, 200 cold concurrent calls on new connections: both serve, one login per team."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0)
        ) as http:
            tokens = {t: await _login(http, proc.url, t) for t in ("analytics", "finance")}
            looker.faults.hold_login = asyncio.Event()

            async def one(i: int) -> int:
                team = "analytics" if i % 2 else "finance"
                headers = {"Authorization": f"token {tokens[team]}"}
                async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                    await resp.read()
                    return resp.status

            calls = asyncio.gather(*(one(i) for i in range(200)))
            await looker.login_started.wait()
            looker.faults.hold_login.set()
            assert await calls == [200] * 200
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                assert resp.status == 200
            served = (
                'workspace_proxy_requests_total{route="user",status="200",team="analytics"} 100.0'
            )
            for _ in range(40):  # workers export their counts about once a second
                async with http.get(f"{proc.admin_url}/metrics") as resp:
                    metrics = await resp.text()
                if served in metrics:
                    break
                await asyncio.sleep(0.1)
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert (looker.logins, looker.session_patches) == (2, 2)
    assert assert_every_call_pinned(looker) == 200
    workers = {e["worker"] for e in proc.events() if e["event"] == "request"}
    assert len(workers) == 2, "both workers served requests"
    assert served in metrics, "metrics add up over the workers"


async def test_workers_reload_on_sighup(looker: LookerEmulator, tmp_path: Path) -> None:
    """SIGHUP to the supervisor reloads it and every worker; the new workspace is pinned."""
    raw = raw_config(looker.base_url, teams=("marketing",))
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        async with aiohttp.ClientSession() as http:
            token = await _login(http, proc.url, "marketing")
            headers = {"Authorization": f"token {token}"}
            async with http.get(f"{proc.url}/api/4.0/session", headers=headers) as resp:
                assert (await resp.json())["workspace_id"] == "dev"
            raw["teams"]["marketing"]["workspace"] = "production"
            (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(raw))
            proc.proc.send_signal(signal.SIGHUP)
            await proc.wait_for_event("config_reloaded", count=3)
            for _ in range(4):
                async with http.get(f"{proc.url}/api/4.0/session", headers=headers) as resp:
                    assert (await resp.json())["workspace_id"] == "production"
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert (looker.logins, looker.session_patches) == (2, 2)


async def test_workers_exit_when_the_supervisor_is_killed(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """SIGKILL to the supervisor: every worker drains and exits, and the port is free again."""
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0.1, "grace_s": 2})
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        proc.proc.kill()
        await asyncio.wait_for(proc.proc.wait(), 10)
        assert proc.reader is not None
        # Workers share the supervisor's stdout: it closes once the last of them has exited.
        await asyncio.wait_for(proc.reader, 20)
    finally:
        await proc.kill()
    stopped = [e for e in proc.events() if e["event"] == "stopped" and "worker" in e]
    assert len(stopped) == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", proc.port))  # nobody listens there any more


def _controls(runtime: Path) -> list[tuple[bool, int]]:
    """(is a socket, permissions) of each worker's control socket in ``runtime``."""
    found = sorted(runtime.glob("control-*.sock"))
    return [(f.is_socket(), f.stat().st_mode & 0o777) for f in found]


def _runtime_dir(proc: ProxyProcess) -> Path:
    """The supervisor's runtime directory, as its workers were told (their --broker)."""
    worker = next(e["worker"] for e in proc.events() if e["event"] == "listening")
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--broker") + 1].decode()).parent


async def test_worker_sockets_live_in_the_supervisors_runtime_dir(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """Each worker's private control socket is made inside the supervisor's runtime directory
    (0700, named after the supervisor's pid), which the supervisor removes at exit: nothing of
    this instance is left in /tmp."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        runtime = _runtime_dir(proc)
        assert runtime.parent == Path(tempfile.gettempdir())
        assert runtime.name.startswith(f"workspace-proxy-{proc.proc.pid}-")
        assert runtime.stat().st_mode & 0o777 == 0o700
        assert _controls(runtime) == [(True, 0o600), (True, 0o600)]
        workers = [e["worker"] for e in proc.events() if e["event"] == "listening"]
        in_tmp = [runtime.parent.glob(f"workspace-proxy-{pid}-*") for pid in workers]
        assert [list(found) for found in in_tmp] == [[], []]
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert not runtime.exists()


# --- sharing between the workers of one instance (issue 17, L1) -------------------------------

PT_TEAM = {"mode": "passthrough", "workspace": "dev", "looker_client_ids": ["marketing-client-id"]}
MARKETING = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}


def _fresh() -> aiohttp.ClientSession:
    """New connection per call: SO_REUSEPORT spreads them over the workers."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


async def _statuses(http: aiohttp.ClientSession, url: str, token: str, n: int) -> list[int]:
    async def one() -> int:
        headers = {"Authorization": f"token {token}"}
        async with http.get(f"{url}/api/4.0/user", headers=headers) as resp:
            await resp.read()
            return resp.status

    return [await one() for _ in range(n)]


def _served_by(proc: ProxyProcess) -> set[int]:
    return {e["worker"] for e in proc.events() if e["event"] == "request" and "worker" in e}


async def test_a_logout_holds_on_every_worker(looker: LookerEmulator, tmp_path: Path) -> None:
    """Once the 204 of a logout is back, the token gets 401 on every worker: a managed proxy
    token and a sealed passthrough token, 40 calls each on fresh connections (16 of 40
    succeeded when only the worker that saw the logout knew). A sealed token is refused by the
    proxy itself, without reaching Looker."""
    raw = raw_config(looker.base_url, teams=("analytics",))
    raw["teams"]["bi"] = PT_TEAM
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        async with _fresh() as http:
            managed = await _login(http, proc.url, "analytics")
            async with http.post(f"{proc.url}/api/4.0/login", data=MARKETING) as resp:
                sealed = str((await resp.json())["access_token"])
            for token in (managed, sealed):
                assert await _statuses(http, proc.url, token, 10) == [200] * 10
            for token in (managed, sealed):
                headers = {"Authorization": f"token {token}"}
                async with http.delete(f"{proc.url}/api/logout", headers=headers) as resp:
                    assert resp.status == 204
            mark = len(looker.audit)
            for token in (managed, sealed):
                assert await _statuses(http, proc.url, token, 40) == [401] * 40
            assert looker.audit[mark:] == [], "refused by the proxy, nothing forwarded"
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert len(_served_by(proc)) == 2, "both workers took calls"
    for secret in (managed, sealed, *looker.issued_tokens()):
        assert not [line for line in proc.lines if secret in line], "a token was logged"


async def test_a_restarted_worker_knows_earlier_logouts(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """A worker killed after a logout is restarted by the supervisor and loads the
    revocations before it serves: the logged-out token still gets 401 everywhere."""
    raw = raw_config(looker.base_url, teams=("analytics",))
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        workers = [e["worker"] for e in proc.events() if e["event"] == "listening"]
        async with _fresh() as http:
            token = await _login(http, proc.url, "analytics")
            headers = {"Authorization": f"token {token}"}
            async with http.delete(f"{proc.url}/api/logout", headers=headers) as resp:
                assert resp.status == 204
            os.kill(workers[0], signal.SIGKILL)
            await proc.wait_for_event("listening", count=3)
            assert await _statuses(http, proc.url, token, 40) == [401] * 40
            restarted = {e["worker"] for e in proc.events() if e["event"] == "listening"}
            assert restarted - set(workers), "a new worker serves"
        assert await proc.stop() == 0
    finally:
        await proc.kill()


async def test_first_sight_of_a_raw_token_is_one_pin_for_the_instance(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """30 concurrent first calls with one raw Looker token over 2 workers: it is identified
    and pinned once for the whole instance (each worker used to PATCH on its own)."""
    raw = raw_config(looker.base_url, teams=("analytics",))
    raw["teams"]["bi"] = PT_TEAM
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        async with _fresh() as http:
            async with http.post(f"{looker.base_url}/api/4.0/login", data=MARKETING) as resp:
                token = str((await resp.json())["access_token"])
            headers = {"Authorization": f"token {token}"}

            async def one() -> str:
                async with http.get(f"{proc.url}/api/4.0/looks/1", headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    return str((await resp.json())["title"])

            titles = await asyncio.gather(*(one() for _ in range(30)))
        assert set(titles) == {"Revenue (dev)"}
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert len(_served_by(proc)) == 2, "both workers took calls"
    patches = [e for e in looker.audit if e.method == "PATCH" and e.path.endswith("/session")]
    assert len(patches) == 1
    assert len(looker.audit_paths("/user")) == 1
    assert not [line for line in proc.lines if token in line], "the Looker token was logged"


async def test_a_worker_that_cannot_take_a_logout_is_replaced(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """A worker that does not acknowledge a revocation in time (here: stopped with SIGSTOP) is
    killed before the logout is answered, and restarted; the token gets 401 everywhere."""
    raw = raw_config(looker.base_url, teams=("analytics",))
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    workers: list[int] = []
    try:
        await proc.wait_for_event("listening", count=2)
        workers = [e["worker"] for e in proc.events() if e["event"] == "listening"]
        async with _fresh() as http:
            token = await _login(http, proc.url, "analytics")
            headers = {"Authorization": f"token {token}"}
            os.kill(workers[0], signal.SIGSTOP)
            status = 0
            for _ in range(20):  # a connection the stopped worker accepted is never answered
                with contextlib.suppress(TimeoutError):
                    async with http.delete(
                        f"{proc.url}/api/logout",
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=5),
                    ) as resp:
                        status = resp.status
                        break
            assert status == 204
            await proc.wait_for_event("revocation_not_acknowledged")
            assert await _statuses(http, proc.url, token, 40) == [401] * 40
            await proc.wait_for_event("listening", count=3)
            assert await _statuses(http, proc.url, token, 40) == [401] * 40
        assert await proc.stop() == 0
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await proc.kill()


async def test_a_killed_supervisors_runtime_dir_is_removed_by_the_next_start(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """SIGKILL leaves the supervisor's runtime directory behind; the next instance to start
    removes it (its owner is dead) and leaves a live instance's directory alone."""
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0.1, "grace_s": 2})
    for name in ("live", "killed", "next"):
        (tmp_path / name).mkdir()
    live = await ProxyProcess.start(raw, tmp_path / "live", "--workers", "2")
    killed = next_one = None
    try:
        await live.wait_for_event("listening", count=2)
        live_dir = _runtime_dir(live)
        killed = await ProxyProcess.start(raw, tmp_path / "killed", "--workers", "2")
        await killed.wait_for_event("listening", count=2)
        stale = _runtime_dir(killed)
        assert stale.name.startswith(f"workspace-proxy-{killed.proc.pid}-")
        killed.proc.kill()
        await asyncio.wait_for(killed.proc.wait(), 10)
        assert killed.reader is not None
        await asyncio.wait_for(killed.reader, 20)  # its workers have exited too
        assert stale.is_dir(), "SIGKILL left the directory behind"
        next_one = await ProxyProcess.start(raw, tmp_path / "next", "--workers", "2")
        await next_one.wait_for_event("listening", count=2)
        next_dir = _runtime_dir(next_one)
        assert not stale.exists(), "the stale directory was removed"
        assert live_dir.is_dir(), "the live instance's directory is untouched"
        assert _controls(live_dir) == [(True, 0o600), (True, 0o600)]
        assert await live.stop() == 0
        assert await next_one.stop() == 0
    finally:
        for proc in (live, killed, next_one):
            if proc is not None:
                await proc.kill()
    assert not live_dir.exists()
    assert not next_dir.exists()


async def test_a_configuration_error_reaches_callers_of_every_worker_with_its_fix(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """The supervisor's session broker passes a configuration error on as it is: each worker
    answers the 503 with what to fix and the long Retry-After, and /readyz says failing."""
    raw = raw_config(looker.base_url, teams=("analytics",), shutdown={"drain_s": 0, "grace_s": 5})
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-analytics-secret\n")
    raw["teams"]["analytics"]["looker_client_secret"] = {"file": str(wrong)}
    proc = await ProxyProcess.start(raw, tmp_path, "--workers", "2")
    try:
        await proc.wait_for_event("listening", count=2)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            token = await _login(http, proc.url, "analytics")
            answers = []
            for _ in range(6):  # new connections: both workers answer, by the kernel's choice
                headers = {"Authorization": f"token {token}"}
                async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                    answers.append((resp.status, resp.headers["Retry-After"], await resp.json()))
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                team = (await resp.json())["teams"]["analytics"]
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert {(status, int(after) > 20) for status, after, _ in answers} == {(503, True)}
    for _, _, body in answers:
        assert "This is a configuration error" in body["message"]
        assert "teams.analytics.looker_client_secret" in body["message"]
    assert looker.login_attempts == 1, "one attempt for the instance, not one per call"
    assert (team["state"], team["ready"]) == ("failing", False)

"""The command line and the proxy as a process: check-config, exit codes, drain on SIGTERM,
health, metrics, and logs that are JSON and free of secrets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from harness import ENV, SIGNING_KEY, ProxyProcess, raw_config, raw_http

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workspace_proxy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_check_config_valid_prints_summary_without_secrets(tmp_path: Path) -> None:
    """check-config on a valid file: exit 0, teams and workspaces listed, no secret value."""
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw_config("https://looker.example.com")))
    result = _cli("check-config", str(path), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "team analytics: workspace dev" in result.stdout
    assert "team finance: workspace production" in result.stdout
    for secret in ENV.values():
        assert secret not in result.stdout + result.stderr


def test_check_config_invalid_lists_every_problem(tmp_path: Path) -> None:
    """check-config on a broken file: exit 2, every problem with its path, no traceback."""
    raw = raw_config("ftp://nowhere")
    raw["teams"]["analytics"]["workspace"] = "staging"
    raw["teams"]["finance"]["colour"] = "blue"
    raw["listen"]["port"] = 70000
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = _cli("check-config", str(path), env={})
    assert result.returncode == 2
    err = result.stderr
    for expected in (
        "looker.base_url: must be an http(s) URL",
        "teams.analytics.workspace: must be one of dev, production",
        "teams.finance.colour: unknown key",
        "listen.port: must be at most 65535",
        "token_signing_key: environment variable WP_SIGNING_KEY is not set",
        "teams.analytics.looker_client_id: environment variable ANALYTICS_LOOKER_ID is not set",
    ):
        assert expected in err, err
    assert "Traceback" not in err


def test_check_config_broken_yaml(tmp_path: Path) -> None:
    """Broken YAML: exit 2 with the line and column, no traceback."""
    path = tmp_path / "broken.yaml"
    path.write_text("looker:\n  base_url: [unclosed\nteams: {}\n")
    result = _cli("check-config", str(path))
    assert result.returncode == 2
    assert "invalid YAML at line" in result.stderr
    assert "Traceback" not in result.stderr
    assert f"config {path}: INVALID (1 problem)\n" in result.stderr


def test_serve_with_invalid_config_exits_2_with_json_error(tmp_path: Path) -> None:
    """serve refuses an invalid config with exit 2 and a JSON log line naming each problem."""
    path = tmp_path / "bad.yaml"
    path.write_text("looker: {}\nteams: {}\n")
    result = _cli("serve", "-c", str(path))
    assert result.returncode == 2
    event = json.loads(result.stderr.strip().splitlines()[-1])
    assert event["event"] == "config_invalid"
    assert any("looker.base_url: required" in p for p in event["problems"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_requests_then_exits_0(
    looker: LookerEmulator, tmp_path: Path, sig: int
) -> None:
    """On SIGTERM/SIGINT readiness turns 503 at once, a slow in-flight call completes, exit 0."""
    config = raw_config(looker.base_url, shutdown={"drain_s": 0.5, "grace_s": 10})
    proc = await ProxyProcess.start(config, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            form = {"client_id": "analytics-caller", "client_secret": "analytics-caller-secret"}
            async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}"}
            async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200  # session pinned before the slow call
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                assert resp.status == 200
            looker.faults.latency_s = 1.5
            slow = asyncio.ensure_future(http.get(f"{proc.url}/api/4.0/looks/1", headers=headers))
            await asyncio.wait_for(looker.arrived("/looks/1"), 10)
            proc.proc.send_signal(sig)
            await proc.wait_for_event("draining")
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["status"] == "draining"
            resp = await slow
            assert resp.status == 200
            assert "Revenue" in (await resp.json())["title"]
            resp.release()
        assert await proc.stop(None) == 0
    finally:
        await proc.kill()
    assert any('"stopped"' in line for line in proc.lines)


async def test_logs_are_json_and_secret_free_through_faults(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """Every log line of a run with faults is JSON, and no secret or token appears anywhere."""
    proc = await ProxyProcess.start(raw_config(looker.base_url, log_level="debug"), tmp_path)
    issued: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            for team in ("analytics", "finance"):
                form = {"client_id": f"{team}-caller", "client_secret": f"{team}-caller-secret"}
                async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                    issued.append((await resp.json())["access_token"])
            async with http.post(
                f"{proc.url}/api/4.0/login?client_id=analytics-caller&client_secret=wrong-secret"
            ) as resp:
                assert resp.status == 404
            for token in issued:
                for auth in (f"token {token}", f"Bearer {token}", f"token {token}x"):
                    async with http.get(
                        f"{proc.url}/api/4.0/user", headers={"Authorization": auth}
                    ) as resp:
                        await resp.read()
            looker.revoke_all_tokens()
            looker.faults.patch_session_failures = 1
            async with http.get(
                f"{proc.url}/api/4.0/user", headers={"Authorization": f"token {issued[0]}"}
            ) as resp:
                assert resp.status == 200
            looker.faults.login_failures = 100
            looker.revoke_all_tokens()
            async with http.get(
                f"{proc.url}/api/4.0/user", headers={"Authorization": f"token {issued[1]}"}
            ) as resp:
                assert resp.status == 503
            async with http.get(f"{proc.admin_url}/metrics") as resp:
                metrics = await resp.text()
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    looker_tokens = looker.issued_tokens()
    assert len(looker_tokens) >= 3
    secrets = [*ENV.values(), SIGNING_KEY, *issued, *looker_tokens, "wrong-secret"]
    everything = "\n".join([*proc.lines, metrics])
    for secret in secrets:
        assert secret not in everything
    events = proc.events()  # raises if any line is not JSON
    names = {e["event"] for e in events}
    assert {"listening", "request", "looker_login", "session_published", "pin_failed"} <= names
    assert (
        'workspace_proxy_session_events_total{event="reauth",outcome="ok",team="analytics"}'
        in metrics
    )


async def test_metrics_and_health_endpoints(looker: LookerEmulator, tmp_path: Path) -> None:
    """Admin listener: /healthz live, /readyz ok, /metrics counts requests per team and status."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            form = {"client_id": "finance-caller", "client_secret": "finance-caller-secret"}
            async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            for _ in range(3):
                async with http.get(
                    f"{proc.url}/api/4.0/user", headers={"Authorization": f"token {token}"}
                ) as resp:
                    assert resp.status == 200
            async with http.get(f"{proc.admin_url}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                assert resp.status == 200
                teams = (await resp.json())["teams"]
            assert {
                name: (t["ready"], t["state"], t["workspace"]) for name, t in teams.items()
            } == {
                "analytics": (True, "idle", "dev"),
                "finance": (True, "ok", "production"),
            }
            assert teams["finance"]["generation"] == 1
            assert teams["finance"]["pin_attempts"] == 1
            assert teams["finance"]["next_attempt_in_s"] is None
            async with http.get(f"{proc.admin_url}/metrics") as resp:
                text = await resp.text()
    finally:
        await proc.kill()
    assert 'workspace_proxy_requests_total{route="user",status="200",team="finance"} 3.0' in text
    assert (
        'workspace_proxy_session_events_total{event="login",outcome="ok",team="finance"} 1.0'
        in text
    )
    assert "workspace_proxy_upstream_latency_seconds_bucket" in text
    assert 'workspace_proxy_pin_attempts_total{outcome="ok",team="finance"} 1.0' in text
    assert 'workspace_proxy_team_state{state="ok",team="finance"} 1.0' in text
    assert 'workspace_proxy_team_state{state="idle",team="analytics"} 1.0' in text
    assert 'workspace_proxy_session_age_seconds{team="finance"}' in text


async def test_a_token_smuggled_into_the_request_id_is_not_logged(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """A proxy-token-shaped X-Request-Id is scrubbed from the access log; a real token (too long
    for a request id) is replaced by a generated id, so neither is ever logged."""
    smuggled = "wp1.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJl"
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            form = {"client_id": "finance-caller", "client_secret": "finance-caller-secret"}
            async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            for request_id in (smuggled, token):
                headers = {"Authorization": f"token {token}", "X-Request-Id": request_id}
                async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                    assert resp.status == 200
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    lines = [e for e in proc.events() if e["event"] == "request" and e["route"] == "user"]
    assert len(lines) == 2
    assert token not in "\n".join(proc.lines)
    assert smuggled not in "\n".join(proc.lines)
    assert lines[0]["request_id"] == "[redacted]"
    assert len(lines[1]["request_id"]) == 32


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_check_config_accepts_every_example(path: Path, tmp_path: Path) -> None:
    """check-config exits 0 on every file in config/ once its env vars and secret files exist."""
    text = path.read_text()
    env = {name: f"{name.lower()}-0123456789abcdef0123456789abcdef" for name in _refs(text, "env")}
    for ref in _refs(text, "file"):
        (tmp_path / ref).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ref).write_text("a-secret-from-a-file\n")
    result = subprocess.run(
        [sys.executable, "-m", "workspace_proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    teams = yaml.safe_load(text)["teams"]
    for team in teams:
        assert f"team {team}: workspace " in result.stdout
    for value in env.values():
        assert value not in result.stdout


def _refs(text: str, kind: str) -> set[str]:
    return set(re.findall(rf"\{{{kind}: ([^}}]+)\}}", text))


async def test_header_limits_are_configurable(looker: LookerEmulator, tmp_path: Path) -> None:
    """limits.max_header_bytes / max_headers bound what the parser accepts (431 beyond)."""
    raw = raw_config(looker.base_url, limits={"max_header_bytes": 2048, "max_headers": 20})
    proc = await ProxyProcess.start(raw, tmp_path)

    def request(*headers: str) -> bytes:
        lines = ["GET /versions HTTP/1.1", "Host: proxy.test", *headers, "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    try:
        ok, _ = await raw_http(proc.url, request("X-Big: " + "a" * 1500))
        long_line, _ = await raw_http(proc.url, request("X-Big: " + "a" * 3000))
        many, _ = await raw_http(proc.url, request(*(f"X-H{i}: v" for i in range(30))))
    finally:
        await proc.kill()
    assert (ok, long_line, many) == (200, 431, 431)
    assert looker.audit_paths("/versions") == [looker.audit_paths("/versions")[0]]

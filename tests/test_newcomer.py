"""Issue 13, "a newcomer's first hour": one test per numbered item of its "Why" list, each
named after it. The README itself is run as written by tests/test_readme.py; more on the states
and on configuration errors in tests/test_status.py and tests/test_permanent.py.

 1. the README's caller is one its configuration defines          test_item_01_...
 2. check-config on the example says what each missing secret needs test_item_02_...
 3. the README installs the SDK before it uses it                  test_item_03_...
 4. the README's local configuration works with the emulator       test_item_04_...
 5. the emulator says how to use it; busy port; GET faults         test_item_05_...
 6. the README says how to make secrets                            test_item_06_...
 7. a refused login says who and why; byte counts are real         test_item_07_...
 8. SIGHUP documented; a reload that needs a restart says so       test_item_08_...
 9. passthrough configuration errors are not "retry later"; 403    test_item_09_...
10. --workers exports every metric one process exports             test_item_10_...
11. which workspace is team X in right now, since when             test_item_11_...
12. the example's comments give the statuses the proxy answers     test_item_12_...
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
import yaml
from conftest import MakeLooker, MakeProxy
from harness import FakeClock, ProxyProcess, raw_config, raw_http
from prometheus_client.parser import text_string_to_metric_families
from test_readme import readme_blocks

from workspace_proxy.emulator import DEFAULT_USERS, LookerEmulator
from workspace_proxy.loading import load_config
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(90)
ROOT: Final = Path(__file__).resolve().parent.parent
README: Final = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE: Final = ROOT / "config" / "example.yaml"
DEMO: Final = ROOT / "config" / "demo.yaml"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "workspace_proxy", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        cwd=cwd,
        timeout=30,
        check=False,
    )


def section(title: str) -> str:
    """The README's text under a heading, to the next heading of the same or a higher level."""
    start = README.index(title)
    level = README[:start].rsplit("\n", 1)[-1] + title.split(" ", 1)[0]
    rest = README[start + len(title) :]
    found = re.search(rf"^#{{1,{level.count('#')}}} ", rest, re.M)
    return rest[: found.start()] if found else rest


def run_blocks() -> list[str]:
    return [b.text for b in readme_blocks() if not b.skip]


async def login(http: aiohttp.ClientSession, url: str, caller: str, secret: str) -> str:
    form = {"client_id": caller, "client_secret": secret}
    async with http.post(f"{url}/api/4.0/login", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


# --- 1 -------------------------------------------------------------------------------------------


def test_item_01_the_readme_uses_one_caller_and_its_configuration_defines_it() -> None:
    """Every caller the README's commands log in with is defined by the configuration they run
    (config/demo.yaml, and the team the README adds to it); analytics-caller, the README's
    caller throughout, is also the one config/example.yaml and the configuration reference
    define; tableau-analytics is gone."""
    used = set()
    for text in run_blocks():
        used |= set(re.findall(r"LOOKERSDK_CLIENT_ID=([\w-]+)", text))
        used |= set(re.findall(r"client_id=([\w-]+)", text))
    added = {c for text in run_blocks() for c in re.findall(r"- client_id: ([\w-]+)", text)}
    demo = yaml.safe_load(DEMO.read_text())
    defined = {c["client_id"] for t in demo["teams"].values() for c in t["callers"]} | added
    assert used == {"analytics-caller", "marketing-caller"}
    assert used <= defined
    example = yaml.safe_load(EXAMPLE.read_text())
    assert "analytics-caller" in {c["client_id"] for c in example["teams"]["analytics"]["callers"]}
    [reference] = re.findall(r"```yaml\n(looker:.*?)```", README, re.S)
    assert "client_id: analytics-caller" in reference
    assert "tableau" not in README


# --- 2 -------------------------------------------------------------------------------------------


def test_item_02_check_config_on_the_example_says_what_each_missing_secret_needs(
    tmp_path: Path,
) -> None:
    """check-config config/example.yaml without its secrets: each variable is named with
    "export it", the secret file with "create it", one line each; the README lists exactly
    those; provided as the README says, the file is valid. One problem is "1 problem"."""
    text = "".join(
        ln for ln in EXAMPLE.read_text().splitlines(True) if not ln.lstrip().startswith("#")
    )
    variables = set(re.findall(r"\{env: (\w+)\}", text))
    files = set(re.findall(r"\{file: ([^}]+)\}", text))
    listed = set(re.findall(r"^ {3}\| `([^`]+)`", section("## Run it against your Looker"), re.M))
    assert listed == variables | files, "the README's table lists what example.yaml reads"

    result = cli("check-config", str(EXAMPLE), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"config {EXAMPLE}: INVALID ({len(variables) + len(files)} problems)"
    for name in variables:
        [line] = [ln for ln in lines if f"environment variable {name} is not set" in ln]
        assert line.endswith("is not set: export it, then start")
    for name in files:
        [line] = [ln for ln in lines if f"secret file {name} does not exist" in ln]
        assert line.endswith(f"(in {tmp_path}): create it")

    env = {name: f"{name.lower()}-0123456789abcdef0123456789abcdef" for name in variables}
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("a-looker-client-secret\n")
    assert cli("check-config", str(EXAMPLE), env=env, cwd=tmp_path).returncode == 0
    del env["WP_SIGNING_KEY"]
    one = cli("check-config", str(EXAMPLE), env=env, cwd=tmp_path)
    assert one.stderr.splitlines()[0].endswith("INVALID (1 problem)")


# --- 3 -------------------------------------------------------------------------------------------


def test_item_03_the_readme_installs_the_sdk_before_it_uses_it() -> None:
    """The first README block that imports looker_sdk comes after one that installs it (with
    the proxy, in the virtualenv the README creates); tests/test_readme.py runs them in a fresh
    virtualenv."""
    blocks = run_blocks()
    installs = next(i for i, t in enumerate(blocks) if re.search(r"pip install \..*looker-sdk", t))
    creates = next(i for i, t in enumerate(blocks) if "python3 -m venv .venv" in t)
    uses = next(i for i, t in enumerate(blocks) if "import looker_sdk" in t)
    assert creates <= installs < uses
    assert ". .venv/bin/activate" in blocks[creates]


# --- 4 -------------------------------------------------------------------------------------------


async def test_item_04_the_readmes_local_configuration_works_with_the_emulators_users(
    make_looker: MakeLooker, aiohttp_client: Any
) -> None:
    """config/demo.yaml, with the secrets exactly as the README's step 3 exports them, logs in
    as the emulator's users at the emulator's default address, and a call through it as the
    README's caller runs in dev."""
    [step3] = [t for t in run_blocks() if "check-config proxy.yaml" in t and "export" in t]
    exported = dict(re.findall(r"^export (\w+)=(\S+)", step3, re.M))
    env = {
        name: value if not value.startswith("$(") else os.urandom(32).hex()
        for name, value in exported.items()
    }
    config = load_config(DEMO, env=env)
    users = {u.client_id: u.client_secret for u in DEFAULT_USERS}
    for team in config.teams.values():
        assert team.looker_client_id is not None
        assert team.looker_client_secret is not None
        assert users[team.looker_client_id.reveal()] == team.looker_client_secret.reveal()
    defaults = cli("emulator", "--help").stdout
    assert "--port PORT           port to listen on (0: a free one) (default: 19999)" in defaults
    assert config.looker.base_url == "http://127.0.0.1:19999"
    assert "config/demo.yaml" in section("## Try it locally")

    from harness import ProxyServer  # the proxy app on a real socket, in front of an emulator

    from workspace_proxy.app import create_app

    looker = await make_looker()
    raw = yaml.safe_load(DEMO.read_text())
    raw["looker"]["base_url"] = looker.base_url
    client = await aiohttp_client(ProxyServer(create_app(parse_config(raw, env=env))))
    secret = env["ANALYTICS_CALLER_SECRET"]
    form = {"client_id": "analytics-caller", "client_secret": secret}
    token = (await (await client.post("/api/4.0/login", data=form)).json())["access_token"]
    session = await client.get("/api/4.0/session", headers={"Authorization": f"token {token}"})
    assert (await session.json())["workspace_id"] == "dev"


# --- 5 -------------------------------------------------------------------------------------------


async def test_item_05_the_emulator_says_how_to_use_it(tmp_path: Path) -> None:
    """`workspace-proxy emulator` prints its address, every user with its client id and secret
    and the admin endpoints; GET /_emulator/faults answers the knobs (and what POST changed);
    a second emulator on its port: one line, exit 2; --help shows the defaults and the
    --users format; a --users file's user without develop permission is marked."""
    users = tmp_path / "users.yaml"
    users.write_text(
        "- {id: 7, client_id: ops-id, client_secret: ops-secret, display_name: Ops}\n"
        "- {id: 8, client_id: viewer-id, client_secret: viewer-secret, display_name: Viewer,"
        " can_develop: false}\n"
    )
    for args, who in (((), DEFAULT_USERS), (("--users", str(users)), None)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workspace_proxy", "emulator", "--port", "0", *args,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        banner = []
        async with asyncio.timeout(20):
            while not banner or not banner[-1].startswith("  stop it with"):
                banner.append((await proc.stdout.readline()).decode().rstrip("\n"))
        url = re.match(r"Looker emulator listening on (http://127\.0\.0\.1:\d+) ", banner[0])
        assert url is not None, banner
        text = "\n".join(banner)
        if who is not None:
            for user in who:
                assert re.search(rf"{user.client_id} +{user.client_secret} ", text), text
            for endpoint in ("GET  /_emulator/audit", "GET  /_emulator/faults", "POST /_emulator"):
                assert endpoint in text
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url.group(1)}/_emulator/faults") as resp:
                    assert (await resp.json())["login_failures"] == 0
                async with http.post(f"{url.group(1)}/_emulator/faults", json={"latency_s": 1}):
                    pass
                async with http.get(f"{url.group(1)}/_emulator/faults") as resp:
                    assert (await resp.json())["latency_s"] == 1.0
            port = url.group(1).rsplit(":", 1)[1]
            busy = await asyncio.to_thread(cli, "emulator", "--port", port)
            assert busy.returncode == 2
            assert busy.stderr == (
                f"emulator: 127.0.0.1:{port} is already in use: stop what listens there (an "
                f"earlier proxy or emulator? `ss -ltnp 'sport = :{port}'` names it), or choose "
                "another port with --port\n"
            )
        else:
            assert re.search(r"8  viewer-id +viewer-secret +Viewer  \(no dev\)", text), text
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    helped = cli("emulator", "--help").stdout
    for default in ("(default: 127.0.0.1)", "(default: 19999)", "(default: 3600)"):
        assert default in helped
    assert "--users FILE is a YAML list of API users" in helped
    assert "can_develop: true" in helped


# --- 6 -------------------------------------------------------------------------------------------


def test_item_06_the_readme_says_how_to_make_secrets() -> None:
    """The README's blocks make secrets with openssl and with Python's secrets module, and
    what they make is long enough for a signing key."""
    blocks = "".join(run_blocks())
    made = {
        "openssl": re.search(r"\$\((openssl rand -hex 32)\)", blocks),
        "python": re.search(r"\$\((python3 -c 'import secrets;[^']*')\)", blocks),
    }
    for how, found in made.items():
        assert found is not None, f"no {how} secret in the README's blocks"
        value = subprocess.run(
            ["bash", "-c", found.group(1)], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert len(value) >= 32 if how == "openssl" else len(value) >= 24


# --- 7 -------------------------------------------------------------------------------------------


async def test_item_07_a_refused_login_says_which_caller_and_why_and_bytes_are_real(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """login_refused names the caller id and why (unknown caller, wrong secret, no credentials),
    never the secret; the access line's outcome says the same; bytes_in and bytes_out are
    the body sizes for logins, refused or not, whole or in pieces."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    wrong = "wrong-secret-0123456789-never-logged"
    answers: dict[str, tuple[int, int]] = {}
    try:
        async with aiohttp.ClientSession() as http:
            for name, form in {
                "unknown": {"client_id": "analytics-robot", "client_secret": wrong},
                "wrong": {"client_id": "analytics-caller", "client_secret": wrong},
                "empty": {},
                "ok": {"client_id": "analytics-caller", "client_secret": "analytics-caller-secret"},
            }.items():
                body = aiohttp.FormData(form)()
                async with http.post(
                    f"{proc.url}/api/4.0/login",
                    data=body,
                    headers={"X-Request-Id": name, "Content-Type": body.content_type},
                ) as resp:
                    answers[name] = (body.size or 0, len(await resp.read()))
        form = b"client_id=analytics-caller&client_secret=analytics-caller-secret"
        head = (
            b"POST /api/4.0/login HTTP/1.1\r\nHost: x\r\nX-Request-Id: pieces\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form)
        )
        status, raw = await raw_http(proc.url, head + form)  # one write; then in pieces:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(head)
        await writer.drain()
        writer.write(form)
        pieces = await reader.read()
        writer.close()
        answers["pieces"] = (len(form), len(pieces.split(b"\r\n\r\n", 1)[1]))
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    events = proc.events()
    refused = {e["request_id"]: e for e in events if e["event"] == "login_refused"}
    assert {k: (e["caller"], e["team"], e["reason"]) for k, e in refused.items()} == {
        "unknown": ("analytics-robot", None, "unknown_caller"),
        "wrong": ("analytics-caller", "analytics", "wrong_secret"),
        "empty": (None, None, "no_credentials"),
    }
    access = {e["request_id"]: e for e in events if e["event"] == "request"}
    for name, (sent, received) in answers.items():
        line = access[name]
        assert (line["bytes_in"], line["bytes_out"]) == (sent, received), line
        assert sent > 0 or name == "empty"
        assert received > 0
    assert access["wrong"]["outcome"] == "wrong_secret"
    assert access["unknown"]["outcome"] == "unknown_caller"
    assert (access["ok"]["status"], access["ok"]["team"]) == (200, "analytics")
    assert status == 200
    assert b"access_token" in raw
    assert wrong not in "\n".join(proc.lines)


# --- 8 -------------------------------------------------------------------------------------------


async def test_item_08_sighup_is_documented_and_a_reload_that_needs_a_restart_says_so(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """ "Signals and exit codes" documents SIGHUP and that {env: ...} secrets are read at
    start; a reload adding a team whose {env: ...} variable was not set at start is rejected
    with a hint to restart or use a file; with a {file: ...} secret the same team is added."""
    signals = section("### Signals and exit codes")
    assert "`SIGHUP`" in signals
    assert "read from the environment the proxy was started with" in signals
    assert "{file: ...}` secrets are read again" in signals
    variable = "ITEM8_MARKETING_LOOKER_SECRET"
    assert variable not in os.environ
    raw = raw_config(looker.base_url)
    proc = await ProxyProcess.start(raw, tmp_path)
    config = tmp_path / "proxy.yaml"
    try:
        marketing = raw_config(looker.base_url, teams=("marketing",))["teams"]["marketing"]
        marketing["looker_client_secret"] = {"env": variable}
        config.write_text(
            yaml.safe_dump({**raw, "teams": {**raw["teams"], "marketing": marketing}})
        )
        proc.proc.send_signal(signal.SIGHUP)
        await proc.wait_for_event("config_reload_rejected")
        secret = tmp_path / "marketing-looker-secret"
        secret.write_text("marketing-client-secret\n")
        marketing["looker_client_secret"] = {"file": str(secret)}
        config.write_text(
            yaml.safe_dump({**raw, "teams": {**raw["teams"], "marketing": marketing}})
        )
        proc.proc.send_signal(signal.SIGHUP)
        await proc.wait_for_event("config_reloaded")
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    [rejected] = [e for e in proc.events() if e["event"] == "config_reload_rejected"]
    assert rejected["problems"] == [
        f"{config}: teams.marketing.looker_client_secret: environment variable {variable} is "
        "not set: export it, then start"
    ]
    assert "restart it to use variables exported since" in rejected["hint"]
    assert "{file: ...}" in rejected["hint"]
    [reloaded] = [e for e in proc.events() if e["event"] == "config_reloaded"]
    assert reloaded["added"] == ["marketing"]


# --- 9 -------------------------------------------------------------------------------------------


async def test_item_09_passthrough_configuration_errors_say_what_to_fix_not_retry_later(
    looker: LookerEmulator, make_proxy: MakeProxy, aiohttp_client: Any
) -> None:
    """A passthrough team pinning a branch that does not exist: 503 saying what to fix with
    Retry-After 30 (not "retry later" with 1), and a pin_failed event, permanent; /readyz lists
    the team; a Looker user in no team: 403 at login as with its token, not 404."""
    import structlog

    from workspace_proxy.app import create_admin_app

    bi = {
        "mode": "passthrough",
        "workspace": "dev",
        "looker_client_ids": ["marketing-client-id"],
        "git_branch": {"project": "sales", "name": "no-such-branch"},
    }
    proxy = await make_proxy(
        looker, clock=FakeClock(), teams=("finance",), team_settings={"bi": bi}
    )
    form = {"client_id": "marketing-client-id", "client_secret": "marketing-client-secret"}
    with structlog.testing.capture_logs() as logs:
        resp = await proxy.client.post("/api/4.0/login", data=form)
    body = await resp.json()
    assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
    assert "retry later" not in body["message"]
    assert "This is a configuration error" in body["message"]
    assert "create the branch, or pin an existing one in teams.bi.git_branch" in body["message"]
    [event] = [e for e in logs if e["event"] == "pin_failed"]
    assert (event["team"], event["mode"], event["permanent"]) == ("bi", "passthrough", True)
    app = proxy.client.server.app  # type: ignore[attr-defined]
    admin = await aiohttp_client(
        create_admin_app(teams=app.teams, draining=app.draining, metrics=app.metrics)
    )
    readyz = await (await admin.get("/readyz")).json()
    assert (readyz["teams"]["bi"]["mode"], readyz["teams"]["bi"]["state"]) == (
        "passthrough",
        "failing",
    )
    assert "teams.bi.git_branch" in readyz["teams"]["bi"]["fix"]
    stranger = {"client_id": "finance-client-id", "client_secret": "finance-client-secret"}
    assert (await proxy.client.post("/api/4.0/login", data=stranger)).status == 403


# --- 10 ------------------------------------------------------------------------------------------

SUPERVISOR_METRICS: Final = (
    "workspace_proxy_session_events_total",
    "workspace_proxy_session_age_seconds",
    "workspace_proxy_replays_total",
    "workspace_proxy_pin_attempts_total",
    "workspace_proxy_team_state",
    "workspace_proxy_next_pin_attempt_seconds",
)
"""What the supervisor (which owns the sessions) or a worker counts outside the per-request
batch a worker exports once a second."""


async def _scenario(looker: LookerEmulator, proc: ProxyProcess) -> tuple[set[str], set[str]]:
    """A cold login, a replay after Looker revoked the session, a failed then successful pin;
    returns (the metric families exported, the samples of SUPERVISOR_METRICS)."""
    async with aiohttp.ClientSession() as http:
        tokens = {
            t: await login(http, proc.url, f"{t}-caller", f"{t}-caller-secret")
            for t in ("analytics", "finance")
        }

        async def user(team: str) -> int:
            headers = {"Authorization": f"token {tokens[team]}"}
            async with http.get(f"{proc.url}/api/4.0/user", headers=headers) as resp:
                await resp.read()
                return resp.status

        assert await user("analytics") == 200
        looker.revoke_all_tokens()
        assert await user("analytics") == 200  # re-pinned, replayed
        looker.faults.login_failures = 1
        assert await user("finance") == 200  # one failed attempt, then pinned
        async with http.get(f"{proc.admin_url}/metrics") as resp:
            text = await resp.text()
    # `_created` (a per-process creation time) is never exported in multiprocess mode.
    families = {
        f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")
    }
    samples = {
        f"{s.name}{sorted(s.labels.items())}"
        + ("" if s.name.endswith(("_seconds", "_state")) else f"={s.value}")
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name in SUPERVISOR_METRICS
    }
    return families, samples


async def test_item_10_workers_export_every_metric_one_process_exports(
    make_looker: MakeLooker, tmp_path: Path
) -> None:
    """The same calls against one process and against `--workers 2`: /metrics has the same
    metric families, and the same samples (values too, for counters) of the session metrics
    the supervisor owns: session events, session age, replays, pin attempts, team state."""
    exported: list[tuple[set[str], set[str]]] = []
    for args in ((), ("--workers", "2")):
        looker = await make_looker()
        proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path, *args)
        try:
            await proc.wait_for_event("listening", count=2 if args else 1)
            exported.append(await _scenario(looker, proc))
            assert await proc.stop() == 0
        finally:
            await proc.kill()
    (single, single_samples), (workers, workers_samples) = exported
    assert {f"workspace_proxy_{n}" for n in ("replays", "session_events")} <= single
    assert workers == single
    assert {s.split("[")[0] for s in single_samples} == set(SUPERVISOR_METRICS)
    assert workers_samples == single_samples


# --- 11 ------------------------------------------------------------------------------------------


async def test_item_11_readyz_and_status_say_which_workspace_each_team_is_in_since_when(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """Before any call a team is idle (not "ok"); after one, ok in the workspace Looker
    verified, with the session's generation and age; `workspace-proxy status` prints both."""
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                before = (await resp.json())["teams"]["analytics"]
            token = await login(http, proc.url, "analytics-caller", "analytics-caller-secret")
            async with http.get(
                f"{proc.url}/api/4.0/user", headers={"Authorization": f"token {token}"}
            ):
                pass
            async with http.get(f"{proc.admin_url}/readyz") as resp:
                after = (await resp.json())["teams"]["analytics"]
        printed = await asyncio.to_thread(cli, "status", "--admin", proc.admin_url)
    finally:
        await proc.kill()
    assert (before["state"], before["verified_workspace"], before["generation"]) == (
        "idle",
        None,
        None,
    )
    assert (after["state"], after["verified_workspace"], after["generation"]) == ("ok", "dev", 1)
    assert 0 <= after["session_age_s"] < 30
    assert after["mode"] == "managed"
    [row] = [line for line in printed.stdout.splitlines() if line.startswith("analytics ")]
    assert row.split()[:6] == ["analytics", "managed", "dev", "dev", "-", "1"]
    assert row.split()[-1] == "ok"


# --- 12 ------------------------------------------------------------------------------------------


async def test_item_12_the_example_configs_comments_give_the_statuses_the_proxy_answers(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """config/example.yaml says a too long request line gets 414 and a too long header line
    or too many headers 431 (no 400), and a proxy with those limits answers just that."""
    text = EXAMPLE.read_text()
    limits = text[text.index("  max_header_bytes:") : text.index("  body_idle_timeout_s:")]
    assert re.findall(r"\b4\d\d\b", limits) == ["414", "431", "431"]
    limited = raw_config(looker.base_url, limits={"max_header_bytes": 2048, "max_headers": 20})
    proc = await ProxyProcess.start(limited, tmp_path)

    def request(target: str, *headers: str) -> bytes:
        lines = [f"GET {target} HTTP/1.1", "Host: proxy.test", *headers, "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    try:
        line, _ = await raw_http(proc.url, request("/versions?x=" + "a" * 3000))
        header, _ = await raw_http(proc.url, request("/versions", "X-Big: " + "a" * 3000))
        many, _ = await raw_http(proc.url, request("/versions", *(f"X-H{i}: v" for i in range(30))))
    finally:
        await proc.kill()
    assert (line, header, many) == (414, 431, 431)

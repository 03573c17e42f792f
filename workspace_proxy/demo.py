"""`workspace-proxy demo`: the bundled emulator, the proxy and the stock looker-sdk, end to end.

Starts ``workspace-proxy emulator`` and ``workspace-proxy serve`` (with the embedded
``demo.yaml``) as real processes on free loopback ports, then tells the story with the unmodified
``looker_sdk`` package:

1. Direct to Looker: a session switched to dev is forgotten by the next login (production again).
2. Through the proxy: every call, across logins and logouts, runs in the team's workspace.

The emulator's audit is the witness. Exit code 0 only when the story holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from importlib import resources
from typing import IO, Any

import yaml

DEMO_ENV = {
    "ANALYTICS_LOOKER_CLIENT_SECRET": "analytics-client-secret",
    "FINANCE_LOOKER_CLIENT_SECRET": "finance-client-secret",
    "ANALYTICS_CALLER_SECRET": "analytics-caller-demo-secret",
    "FINANCE_CALLER_SECRET": "finance-caller-demo-secret",
    "WP_SIGNING_KEY": "demo-signing-key-change-me-0123456789abcdef",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):  # noqa: S310
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f} s")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "workspace_proxy", *args], env=env, stdout=log, stderr=log
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _written(file: IO[str], text: str) -> Iterator[None]:
    file.write(text)
    file.flush()
    yield


def _audit(emulator_url: str, since: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{emulator_url}/_emulator/audit?since={since}") as resp:  # noqa: S310
        return list(json.load(resp))


def _sdk(base_url: str, client_id: str, client_secret: str) -> Any:
    import looker_sdk

    os.environ.update(
        LOOKERSDK_BASE_URL=base_url,
        LOOKERSDK_CLIENT_ID=client_id,
        LOOKERSDK_CLIENT_SECRET=client_secret,
        LOOKERSDK_VERIFY_SSL="false",
        LOOKERSDK_TIMEOUT="30",
    )
    return looker_sdk.init40()


def run_demo() -> int:
    try:
        from looker_sdk import models40
    except ImportError:
        print("demo: the looker-sdk package is needed: pip install 'workspace-proxy[test]'")
        return 1
    raw = yaml.safe_load(resources.files("workspace_proxy").joinpath("demo.yaml").read_text())
    emu_port, proxy_port, admin_port = _free_port(), _free_port(), _free_port()
    emulator = f"http://127.0.0.1:{emu_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    env = {**os.environ, **DEMO_ENV}
    raw["looker"]["base_url"] = emulator  # the embedded config, on this run's free ports
    ok = True

    def check(label: str, good: bool) -> None:
        nonlocal ok
        ok = ok and good
        print(f"   [{'ok' if good else 'FAIL'}] {label}")

    with (
        tempfile.TemporaryFile() as log,
        tempfile.NamedTemporaryFile("w", suffix=".yaml") as config_file,
        _process(["emulator", "--port", str(emu_port), "--log-level", "warning"], env, log) as emu,
        _written(config_file, yaml.safe_dump(raw)),
        _process(
            [
                "serve",
                "-c",
                config_file.name,
                "--port",
                str(proxy_port),
                "--admin-port",
                str(admin_port),
            ],
            env,
            log,
        ) as prx,
    ):
        _wait_http(f"{emulator}/versions", emu)
        _wait_http(f"http://127.0.0.1:{admin_port}/healthz", prx)
        print("workspace-proxy demo")
        print(f"  Looker emulator {emulator}   proxy {proxy}   admin http://127.0.0.1:{admin_port}")
        print("  team 'analytics' is pinned to dev; the client is the stock looker_sdk.\n")

        print("1. Straight to Looker, the way tools do it today:")
        sdk = _sdk(emulator, "analytics-client-id", DEMO_ENV["ANALYTICS_LOOKER_CLIENT_SECRET"])
        sdk.update_session(models40.WriteApiSession(workspace_id="dev"))
        print(f"   after update_session(dev): workspace = {sdk.session().workspace_id}")
        sdk.auth.logout()
        landed = sdk.session().workspace_id
        print(f"   after the SDK's next login: workspace = {landed}")
        check("the new session silently landed in production (the problem)", landed == "production")

        print("\n2. Through workspace-proxy, with the caller's proxy credentials:")
        mark = len(_audit(emulator, 0))
        sdk = _sdk(proxy, "analytics-caller", DEMO_ENV["ANALYTICS_CALLER_SECRET"])
        me = sdk.me()
        print(f"   me(): {me.display_name} (Looker user {me.id})")
        print(f"   session(): workspace = {sdk.session().workspace_id}")
        models = [m.name for m in sdk.all_lookml_models()]
        print(f"   lookml models: {', '.join(str(m) for m in models)}")
        sdk.auth.logout()
        print("   logout, then the SDK logs in again...")
        print(f"   session(): workspace = {sdk.session().workspace_id}")
        try:
            sdk.update_session(models40.WriteApiSession(workspace_id="production"))
            refused = False
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own error type
            refused = "pins team" in str(exc)
        check("a client's attempt to switch to production is refused", refused)
        calls = [e for e in _audit(emulator, mark) if e["user_id"] is not None]
        pinned = [
            e
            for e in calls
            if not e["path"].endswith(("/login", "/session", "logout")) or e["method"] == "GET"
        ]
        print(f"\n   Looker's audit of the proxied calls ({len(pinned)}):")
        for e in pinned:
            print(
                f"     {e['method']:6} {e['path']:32} user {e['user_id']}  ran in {e['workspace']}"
            )
        check(
            "every proxied call ran in dev",
            bool(pinned) and all(e["workspace"] == "dev" for e in pinned),
        )
        check(
            "one Looker login for the team, however often the client logged in",
            sum(e["path"].endswith("/login") for e in _audit(emulator, mark)) == 1,
        )
    print("\nDemo " + ("passed." if ok else "FAILED."))
    return 0 if ok else 1

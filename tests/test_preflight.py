"""What a user hits first, each in one line that says what to do: a port that is taken (the
proxy's or its admin listener's), a Looker that cannot be reached when the proxy starts (or
whose certificate does not verify). The config's own first errors (a variable that is not set,
a secret file that does not exist) are in tests/test_config.py and tests/test_newcomer.py; the
emulator's busy port in tests/test_newcomer.py; a reload that needs a restart likewise."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
import yaml
from harness import ENV, ProxyProcess, free_port, raw_config

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)
QUICK = {"drain_s": 0, "grace_s": 5}


@contextmanager
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def serve_once(config: dict[str, object], tmp_path: Path, *args: str) -> list[dict[str, object]]:
    """`workspace-proxy serve` that is expected to exit at once: its exit code 1 and its lines."""
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "workspace_proxy", "serve", "-c", str(path), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("listener", ["proxy", "admin"])
def test_a_busy_port_is_one_line_that_says_what_to_do(
    looker_url: str, tmp_path: Path, listener: str
) -> None:
    """serve on a port another process holds: exit 1, one cannot_listen line naming the
    address and the option that moves it."""
    with taken() as port:
        other = str(free_port())
        ports = ("--port", str(port), "--admin-port", other)
        if listener == "admin":
            ports = ("--port", other, "--admin-port", str(port))
        lines = serve_once(raw_config(looker_url), tmp_path, *ports)
    [failed] = [e for e in lines if e["event"] == "cannot_listen"]
    option = "listen.port or --port" if listener == "proxy" else "admin.port or --admin-port"
    assert failed["hint"] == (
        f"127.0.0.1:{port} is already in use: stop what listens there (an earlier proxy or "
        f"emulator? `ss -ltnp 'sport = :{port}'` names it), or choose another port with {option}"
    )


@pytest.fixture
def looker_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_an_unreachable_looker_at_start_is_said_at_once(tmp_path: Path) -> None:
    """Nothing listens at looker.base_url: the proxy starts and serves, and says at once
    (looker_unreachable) what to check; a call gets 503."""
    url = f"http://127.0.0.1:{free_port()}"
    proc = await ProxyProcess.start(raw_config(url, shutdown=QUICK), tmp_path)
    try:
        await proc.wait_for_event("looker_unreachable")
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    [event] = [e for e in proc.events() if e["event"] == "looker_unreachable"]
    assert event["looker"] == url
    assert event["level"] == "warning"
    assert event["hint"] == (
        "check looker.base_url, and that Looker (or `workspace-proxy emulator`) is running and "
        "reachable from here; calls get 503 until it answers"
    )


async def test_a_looker_certificate_that_does_not_verify_names_ca_file(tmp_path: Path) -> None:
    """Looker over HTTPS with a certificate from a CA the proxy does not know: said at start,
    with looker.ca_file as the fix."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        proc = await ProxyProcess.start(raw_config(f"https://127.0.0.1:{port}"), tmp_path)
        try:
            await proc.wait_for_event("looker_unreachable")
        finally:
            await proc.kill()
    finally:
        server.close()
        await server.wait_closed()
    [event] = [e for e in proc.events() if e["event"] == "looker_unreachable"]
    assert "CERTIFICATE_VERIFY_FAILED" in str(event["error"])
    assert "set looker.ca_file" in str(event["hint"])


async def test_a_reachable_looker_is_not_reported(looker: LookerEmulator, tmp_path: Path) -> None:
    """The same check against the emulator: looker_reachable, and the emulator saw no
    request (the check only connects)."""
    proc = await ProxyProcess.start(raw_config(looker.base_url, shutdown=QUICK), tmp_path)
    try:
        await proc.wait_for_event("looker_reachable")
        assert await proc.stop() == 0
    finally:
        await proc.kill()
    assert not [e for e in proc.events() if e["event"] == "looker_unreachable"]
    assert looker.audit == []

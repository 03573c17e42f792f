"""Shared test helpers: configs for the emulator's users, a proxy client, audit assertions."""

from __future__ import annotations

import asyncio
import heapq
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import yaml
from aiohttp.test_utils import BaseTestServer, TestClient
from yarl import URL

from workspace_proxy.app import Proxy as ProxyApp
from workspace_proxy.config import Config
from workspace_proxy.emulator import AuditEntry, LookerEmulator
from workspace_proxy.http1 import KEEPALIVE_S
from workspace_proxy.server import Server
from workspace_proxy.validation import parse_config

# team -> (workspace, emulator user id, Looker client id, Looker client secret)
TEAMS: dict[str, tuple[str, str]] = {
    "analytics": ("dev", "2"),
    "finance": ("production", "3"),
    "marketing": ("dev", "4"),
}
SIGNING_KEY = "test-signing-key-0123456789abcdef-0123456789"
ENV: dict[str, str] = {"WP_SIGNING_KEY": SIGNING_KEY}
for _team in TEAMS:
    ENV[f"{_team.upper()}_LOOKER_ID"] = f"{_team}-client-id"
    ENV[f"{_team.upper()}_LOOKER_SECRET"] = f"{_team}-client-secret"
    ENV[f"{_team.upper()}_CALLER_SECRET"] = f"{_team}-caller-secret"

PIN_PATHS = ("/login", "/session", "/logout")


class FakeClock:
    """A clock the test moves by hand (for session expiry, backoff and token lifetimes).

    ``sleep`` is its virtual sleep: a sleeper wakes once the clock reaches its time. The test
    may ``advance`` the clock; with ``auto=True`` (the default) the clock also jumps by itself
    to the earliest sleeper's time once the event loop has been quiet for a while (no sleep
    started or ended for ``QUIET`` iterations, so loopback I/O in flight lands first): code that
    waits in this time finishes at once, in the order it would in real time."""

    QUIET = 64

    def __init__(self, now: float = 1000.0, *, auto: bool = True) -> None:
        self.now = now
        self.auto = auto
        self.on_advance: Callable[[], None] | None = None
        """Called each time the clock moves, before sleepers wake (to script what happens at a
        given time without being a sleeper the clock jumps to)."""
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0
        self._epoch = 0
        self._settling = False

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._wake()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._count += 1
        self._epoch += 1
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), self._count, waiter))
        if self.auto and not self._settling:
            self._settling = True
            loop.call_soon(self._settle, self._epoch, 0)
        await waiter

    def _settle(self, epoch: int, quiet: int) -> None:
        loop = asyncio.get_running_loop()
        if epoch != self._epoch:
            loop.call_soon(self._settle, self._epoch, 0)
        elif quiet < self.QUIET:
            loop.call_soon(self._settle, epoch, quiet + 1)
        else:
            live = [s for s in self._sleepers if not s[2].done()]
            self._settling = False
            if live:
                self.now = max(self.now, min(live)[0])
                self._wake()
            if any(not s[2].done() for s in self._sleepers):
                self._settling = True
                loop.call_soon(self._settle, self._epoch, 0)

    def _wake(self) -> None:
        if self.on_advance is not None:
            self.on_advance()
        while self._sleepers and (self._sleepers[0][0] <= self.now or self._sleepers[0][2].done()):
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                self._epoch += 1
                waiter.set_result(None)


def timing(clock: Callable[[], float]) -> dict[str, Any]:
    """``create_app`` arguments for a test clock: a FakeClock brings its own virtual sleep."""
    sleep = getattr(clock, "sleep", None)
    return {"clock": clock} if sleep is None else {"clock": clock, "sleep": sleep}


class ProxyServer(BaseTestServer):
    """The proxy app and its transport (``server.Server``), as ``workspace-proxy serve`` runs
    them, on a free port. ``start_server(keepalive_s=...)`` shortens the idle timeout of caller
    connections; ``ssl=`` serves TLS."""

    def __init__(self, app: ProxyApp, **kwargs: Any) -> None:
        kwargs.setdefault("host", "127.0.0.1")
        super().__init__(**kwargs)
        self.app = app
        self.server: Server | None = None

    @property
    def started(self) -> bool:
        return self.server is not None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.server is not None:
            return
        tls = kwargs.pop("ssl", None)
        keepalive_s = kwargs.pop("keepalive_s", KEEPALIVE_S)
        await self.app.start()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        self.scheme = self.scheme or ("https" if tls else "http")
        self.server = Server(self.app, scheme=self.scheme, keepalive_s=keepalive_s)
        await self.server.start(sock=sock, ssl_context=tls)
        self._root = URL(f"{self.scheme}://{self.host}:{self.port}")

    async def _make_runner(self, **kwargs: Any) -> Any:  # pragma: no cover (not an aiohttp app)
        raise NotImplementedError

    async def close(self) -> None:
        if self.server is not None and not self.closed:
            await self.server.stop(5)
            await self.app.stop()
            self._root = None
            self._closed = True


def raw_config(
    looker_url: str, *, teams: Iterable[str] = ("analytics", "finance"), **overrides: Any
) -> dict[str, Any]:
    """A config document for the emulator's users; ``overrides`` replace top-level keys."""
    raw: dict[str, Any] = {
        "looker": {
            "base_url": looker_url,
            "retry": {"interval_s": 0.02, "deadline_s": 1.0},
            "timeouts": {"connect_s": 2, "read_s": 30, "session_s": 5},
        },
        "token_signing_key": {"env": "WP_SIGNING_KEY"},
        "listen": {"host": "127.0.0.1", "port": 0},
        "teams": {
            team: {
                "workspace": TEAMS[team][0],
                "looker_client_id": {"env": f"{team.upper()}_LOOKER_ID"},
                "looker_client_secret": {"env": f"{team.upper()}_LOOKER_SECRET"},
                "callers": [
                    {
                        "client_id": f"{team}-caller",
                        "client_secret": {"env": f"{team.upper()}_CALLER_SECRET"},
                    }
                ],
            }
            for team in teams
        },
    }
    raw.update(overrides)
    return raw


def build_config(looker_url: str, **kwargs: Any) -> Config:
    return parse_config(raw_config(looker_url, **kwargs), env=ENV)


@dataclass
class Proxy:
    """A running proxy app under the aiohttp test client."""

    client: TestClient[Any, Any]
    config: Config

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def login(self, team: str) -> str:
        resp = await self.client.post(
            "/api/4.0/login",
            data={"client_id": f"{team}-caller", "client_secret": f"{team}-caller-secret"},
        )
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        return str(body["access_token"])

    async def call(
        self, method: str, path: str, token: str, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"token {token}", **kwargs.pop("headers", {})}
        url = URL(self.base_url + path, encoded=True)  # keeps `//api/...` as SDKs send it
        return await self.client.session.request(method, url, headers=headers, **kwargs)

    async def get_json(self, path: str, token: str) -> Any:
        resp = await self.call("GET", path, token)
        text = await resp.text()
        assert resp.status == 200, text
        return json.loads(text)


def team_of(user_id: str | None) -> str | None:
    return next((t for t, (_, uid) in TEAMS.items() if uid == user_id), None)


def is_pin_call(entry: AuditEntry) -> bool:
    """The proxy's own session management calls (login, PATCH /session, logout of orphans)."""
    return entry.path.endswith("/login") or (
        entry.method in ("PATCH", "DELETE") and entry.path.endswith(PIN_PATHS)
    )


def forwarded(looker: LookerEmulator) -> list[AuditEntry]:
    """Audit entries of calls made under a team session (everything but session management)."""
    return [e for e in looker.audit if e.user_id is not None and not is_pin_call(e)]


def assert_every_call_pinned(looker: LookerEmulator) -> int:
    """Every forwarded call ran in its team's workspace; returns how many were checked."""
    calls = forwarded(looker)
    for entry in calls:
        team = team_of(entry.user_id)
        assert team is not None, entry
        assert entry.workspace == TEAMS[team][0], f"call ran in the wrong workspace: {entry}"
    return len(calls)


def assert_pin_before_use(looker: LookerEmulator) -> None:
    """Each token's first authenticated use is the PATCH that pins it."""
    first: dict[str, AuditEntry] = {}
    for entry in looker.audit:
        if entry.token_fingerprint is not None:
            first.setdefault(entry.token_fingerprint, entry)
    for fp, entry in first.items():
        assert (entry.method, entry.path.rsplit("/", 1)[-1]) == ("PATCH", "session"), (fp, entry)


class ProxyProcess:
    """``workspace-proxy serve`` as a real child process; its JSON log lines are kept."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int, admin_port: int) -> None:
        self.proc = proc
        self.port = port
        self.admin_port = admin_port
        self.lines: list[str] = []
        self.reader: asyncio.Task[None] | None = None
        """Reads the process's output; done when every writer (workers too) has closed it."""
        self._new_line = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kb) * 1024

    @classmethod
    async def start(
        cls, config: dict[str, Any], tmp_path: Path, *args: str, env: dict[str, str] | None = None
    ) -> ProxyProcess:
        """``env``: variables set for the process besides ``ENV``."""
        path = tmp_path / "proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        port, admin_port = free_port(), free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workspace_proxy", "serve", "-c", str(path),
            "--port", str(port), "--admin-port", str(admin_port), *args,
            env={**os.environ, **ENV, **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self = cls(proc, port, admin_port)
        listening = asyncio.get_running_loop().create_future()
        self.reader = asyncio.get_running_loop().create_task(self._read(listening))
        await asyncio.wait_for(listening, 20)
        return self

    async def _read(self, listening: asyncio.Future[None]) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            self._new_line.set()
            self._new_line = asyncio.Event()
            if '"listening"' in line and not listening.done():
                listening.set_result(None)
        if not listening.done():
            listening.set_exception(RuntimeError("proxy exited:\n" + "\n".join(self.lines)))

    async def wait_for_event(self, event: str, wait_s: float = 10, *, count: int = 1) -> None:
        """Until ``count`` log lines with ``"event": event`` have been printed."""
        async with asyncio.timeout(wait_s):
            while sum(f'"{event}"' in line for line in self.lines) < count:
                await self._new_line.wait()

    async def stop(self, sig: int | None = signal.SIGTERM, wait_s: float = 30) -> int:
        """Send ``sig`` (None: it was sent already) and return the exit code."""
        if sig is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), wait_s)
        if self.reader is not None:
            await self.reader
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        if self.reader is not None:
            # Orphaned children may still hold the output open: stop reading after a while.
            done, _ = await asyncio.wait([self.reader], timeout=5)
            if not done:
                self.reader.cancel()
                await asyncio.gather(self.reader, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def raw_http(url: str, request: bytes, *, wait_s: float = 10) -> tuple[int, bytes]:
    """Send bytes exactly as given on a new connection; return (status, whole raw answer)."""
    target = URL(url)
    assert target.host is not None
    assert target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), wait_s)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.") else 0
    return status, raw


@contextmanager
def access_lines() -> Iterator[list[dict[str, Any]]]:
    """The access-log lines written meanwhile."""
    with structlog.testing.capture_logs() as events:
        lines: list[dict[str, Any]] = []
        yield lines
    lines.extend(e for e in events if e.get("event") == "request")

"""``serve --workers N``: N worker processes share the proxy port (SO_REUSEPORT).

The supervisor owns what must be shared: the pinned Looker sessions (served to workers by the
broker on a Unix socket, so logins stay single-flight across processes), logouts and the
verification of raw passthrough tokens (``sharing``), the admin listener
(health, readiness from its sessions, metrics summed over all processes) and the signals
(SIGTERM/SIGINT drain every worker; SIGHUP reloads itself, then the workers). A worker that dies
is restarted. All workers accept the same proxy tokens: they share the signing key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import multiprocess

from workspace_proxy.app import create_admin_app, local_providers, team_rows, upstream_session
from workspace_proxy.broker import create_broker_app
from workspace_proxy.callerpins import CallerPins
from workspace_proxy.config import Config
from workspace_proxy.errors import ConfigError
from workspace_proxy.firstsight import Recheck, looker_check
from workspace_proxy.loading import load_config
from workspace_proxy.looker import LookerClient
from workspace_proxy.manager import TokenManager, close_all
from workspace_proxy.metrics import Metrics
from workspace_proxy.preflight import check_looker, reload_hint
from workspace_proxy.runtime import remove_worker_files
from workspace_proxy.sharing import Hub

log = structlog.get_logger("workspace_proxy.supervisor")
_RESTART_DELAY_S = 1.0


class Supervisor:
    def __init__(self, config: Config, *, config_path: str, workers: int, runtime: str) -> None:
        self.runtime = runtime
        self.config = config
        self.config_path = config_path
        self.workers = workers
        self.socket = os.path.join(runtime, "broker.sock")
        self.metrics = Metrics()
        self.draining = [False]
        self.stopping = False
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.manager: TokenManager | None = None
        self.pins = CallerPins()
        """Raw passthrough tokens' pins (logins are pinned by the workers, each its own)."""
        self.hub = Hub(self._evict)

    def _worker_argv(self) -> list[str]:
        c = self.config
        return [
            sys.executable,
            "-m",
            "workspace_proxy",
            "serve",
            "-c",
            self.config_path,
            "--host",
            c.listen.host,
            "--port",
            str(c.listen.port),
            "--log-level",
            c.log_level,
            "--broker",
            self.socket,
        ]

    async def _run_worker(self, index: int) -> None:
        """Keep worker ``index`` running until the supervisor stops."""
        while not self.stopping:
            proc = await asyncio.create_subprocess_exec(*self._worker_argv())
            self.procs[index] = proc
            code = await proc.wait()
            multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
            remove_worker_files(self.runtime, proc.pid)
            if self.stopping:
                return
            log.error("worker_exited", worker=index, pid=proc.pid, code=code)
            await asyncio.sleep(_RESTART_DELAY_S)

    async def _evict(self, pid: int) -> None:
        """A worker that did not take a revocation in time is killed (and restarted), so it
        can never accept a logged-out token."""
        for proc in list(self.procs.values()):
            if proc.pid == pid and proc.returncode is None:
                proc.kill()
                await proc.wait()

    def _raw_tokens(self, http: aiohttp.ClientSession, config: Config) -> Recheck | None:
        """Raw passthrough tokens' verification, once for the instance (None: no such team)."""
        self.pins.configure(config.teams)
        if not any(t.passthrough for t in config.teams.values()):
            return None
        return Recheck(looker_check(config, LookerClient(http, config.looker), self.pins))

    def _signal_workers(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _reload(self, http: aiohttp.ClientSession) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            problems, hint = exc.problems, reload_hint(exc.problems)
            log.error("config_reload_rejected", path=self.config_path, problems=problems, hint=hint)
            return
        new = new.keeping_listeners(self.config)
        factory = local_providers(http, new, time.monotonic, asyncio.sleep, self.metrics)
        same_looker = new.looker == self.config.looker
        self.manager, retired = self._manager().reconfigured(
            new.managed_teams, factory, same_looker=same_looker
        )
        self.config = new
        self.hub.raw = self._raw_tokens(http, new)
        log.info("config_reloaded", teams=sorted(new.teams))
        self._signal_workers(signal.SIGHUP)
        await close_all(retired, wait=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop, hangup = asyncio.Event(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
        async with upstream_session(self.config) as http:
            self.manager = TokenManager(
                self.config.managed_teams,
                local_providers(http, self.config, time.monotonic, asyncio.sleep, self.metrics),
            )
            self.hub.raw = self._raw_tokens(http, self.config)
            broker_app = create_broker_app(lambda: self._manager())
            self.hub.add_routes(broker_app)
            broker = web.AppRunner(broker_app, access_log=None)
            admin = web.AppRunner(
                create_admin_app(
                    teams=lambda: team_rows(self.config, self._manager(), self.pins),
                    draining=self.draining,
                    metrics=self.metrics,
                ),
                access_log=None,
            )
            await broker.setup()
            await admin.setup()
            runners: list[asyncio.Task[None]] = []
            codes: list[int | None] = []
            try:
                await web.UnixSite(broker, self.socket).start()
                os.chmod(self.socket, 0o600)
                # Workers register with the broker before they serve: it listens first.
                runners = [asyncio.create_task(self._run_worker(i)) for i in range(self.workers)]
                await web.TCPSite(
                    admin,
                    self.config.admin.host,
                    self.config.admin.port,
                    ssl_context=self.config.admin.ssl_context(),
                ).start()
                log.info(
                    "supervising",
                    workers=self.workers,
                    proxy=f"{self.config.listen.host}:{self.config.listen.port}",
                    admin=f"{self.config.admin.host}:{self.config.admin.port}",
                )
                runners.append(asyncio.create_task(self._check_looker()))
                while not stop.is_set():
                    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, hangup)]
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    for waiter in waiters:
                        waiter.cancel()
                    if hangup.is_set() and not stop.is_set():
                        hangup.clear()
                        await self._reload(http)
                log.info("draining", workers=self.workers)
                self.draining[0] = True
                self.stopping = True
                self._signal_workers(signal.SIGTERM)
                deadline = self.config.shutdown.drain_s + self.config.shutdown.grace_s + 10
                _, pending = await asyncio.wait(runners, timeout=deadline)
                for task in pending:
                    task.cancel()
                codes = [p.returncode for p in self.procs.values()]
            finally:
                self.stopping = True
                for proc in self.procs.values():
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                await asyncio.gather(*runners, return_exceptions=True)
                await admin.cleanup()
                await broker.cleanup()
                await self._manager().close()
        log.info("stopped", worker_exit_codes=codes)
        return 0 if all(code == 0 for code in codes) else 1

    async def _check_looker(self) -> None:
        """Once, at start: a Looker that cannot be reached is said at once, with what to do."""
        await check_looker(self.config.looker)

    def _manager(self) -> TokenManager:
        if self.manager is None:
            raise RuntimeError("the supervisor has not started")
        return self.manager


def run(config: Config, *, config_path: str, workers: int, runtime: str) -> int:
    try:
        return asyncio.run(
            Supervisor(config, config_path=config_path, workers=workers, runtime=runtime).run()
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)

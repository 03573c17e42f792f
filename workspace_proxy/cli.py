"""Command line: ``workspace-proxy serve|check-config|schema|emulator|demo``; owns exit codes.

Exit codes: 0 success (including a graceful shutdown), 1 runtime failure, 2 usage or invalid
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import gc
import json
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web

from workspace_proxy import __version__
from workspace_proxy.config import LOG_LEVELS, Config
from workspace_proxy.errors import ConfigError
from workspace_proxy.loading import load_config, summary
from workspace_proxy.preflight import (
    check_looker,
    listen_problem,
    reload_hint,
    serve_listen_problem,
)

if TYPE_CHECKING:
    from workspace_proxy.app import Proxy

# Modules that import prometheus_client are imported inside functions: with --workers the
# multiprocess metrics directory must be in the environment before prometheus_client loads.

T = TypeVar("T")
EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
ACCESS_BATCH_S = 0.1
"""Access-log lines reach stdout in batches at most this old (all of them on shutdown)."""


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run the proxy's event loop: uvloop's where it is installed (Linux, macOS), about a third
    less CPU per proxied call than asyncio's own loop; asyncio's elsewhere."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


_USERS_FORMAT = "(the --users format)"


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, epilogs kept as written; the emulator's --users format is imported only
    when its help is shown (the emulator package is not loaded by other commands)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help  # "(default: None)" says nothing
        return super()._get_help_string(action)

    def add_text(self, text: str | None) -> None:
        if text == _USERS_FORMAT:
            from workspace_proxy.emulator.standalone import USERS_FORMAT

            text = USERS_FORMAT
        super().add_text(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workspace-proxy",
        description="Reverse proxy for Looker that pins every API session to a team's workspace.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("-c", "--config", required=True, help="YAML config file")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="overrides log_level")
    serve.add_argument("--host", help="overrides listen.host")
    serve.add_argument("--port", type=int, help="overrides listen.port")
    serve.add_argument("--admin-port", type=int, help="overrides admin.port")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT); 0 means one per CPU core",
    )
    serve.add_argument("--broker", help=argparse.SUPPRESS)  # set by the supervisor for workers

    check = sub.add_parser("check-config", help="validate a config file and summarise it")
    check.add_argument("config", help="YAML config file")

    sub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")

    status = sub.add_parser(
        "status",
        help="print each team's session as a table (from the admin listener's /readyz)",
        formatter_class=_Help,
    )
    status.add_argument("-c", "--config", help="read the admin listener's address from this file")
    status.add_argument("--admin", help="the admin listener's URL (default: http://127.0.0.1:9090)")
    status.add_argument(
        "--cafile",
        help="PEM file of the CA that signed an https admin listener's certificate"
        " (default: the system's CAs)",
    )

    emu = sub.add_parser(
        "emulator",
        help="run the bundled Looker emulator (a fake Looker to try the proxy on)",
        description="A fake Looker: per-token workspaces, per-user dev branches, an audit of\n"
        "every call and scripted faults. Once it listens it prints its address, its API\n"
        "users and its admin endpoints.",
        epilog=_USERS_FORMAT,
        formatter_class=_Help,
    )
    emu.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emu.add_argument("--port", type=int, default=19999, help="port to listen on (0: a free one)")
    emu.add_argument("--users", metavar="FILE", help="YAML list of API users (format below)")
    emu.add_argument("--token-ttl", type=int, default=3600, help="token lifetime in seconds")
    emu.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="least severe log level"
    )

    sub.add_parser("demo", help="emulator + proxy + stock looker-sdk, end to end")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "schema":
            return _schema()
        if args.command == "emulator":
            return _emulator(args)
        if args.command == "status":
            return _status(args)
        if args.command == "demo":
            from workspace_proxy.demo import run_demo

            return run_demo()
        return _serve(args)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # e.g. `check-config FILE | head -1`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _check_config(path: str) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        count = len(exc.problems)
        plural = "" if count == 1 else "s"
        print(f"config {path}: INVALID ({count} problem{plural})", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    print(summary(config))
    return EXIT_OK


def _schema() -> int:
    from workspace_proxy.schema import config_schema

    print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
    return EXIT_OK


def _emulator(args: argparse.Namespace) -> int:
    from workspace_proxy import log
    from workspace_proxy.emulator import LookerEmulator
    from workspace_proxy.emulator.standalone import banner, serve

    log.configure(args.log_level)
    try:
        emu = (
            LookerEmulator.from_users_file(args.users, token_ttl=args.token_ttl)
            if args.users
            else LookerEmulator(token_ttl=args.token_ttl)
        )
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        asyncio.run(serve(emu, args.host, args.port, listening=lambda url: _say(banner(emu, url))))
    except OSError as exc:
        print(f"emulator: {listen_problem(args.host, args.port, exc, '--port')}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _say(text: str) -> None:
    print(text, flush=True)


def _status(args: argparse.Namespace) -> int:
    from workspace_proxy.status import Unreachable, admin_url, fetch, table

    try:
        url = admin_url(args.admin, args.config)
    except ValueError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        body = fetch(f"{url}/readyz", ca_file=args.cafile)
    except ValueError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Unreachable as exc:
        print(
            f"status: no answer from the admin listener at {url} ({exc}): is the proxy "
            "running, and is that its admin address (admin.host/admin.port, or --admin)?",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(table(body, url))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from workspace_proxy import log

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.configure("info", stream=sys.stderr)
        structlog.get_logger("workspace_proxy").error("config_invalid", problems=exc.problems)
        return EXIT_CONFIG
    config = dataclasses.replace(
        config,
        log_level=args.log_level or config.log_level,
        listen=dataclasses.replace(
            config.listen,
            host=args.host or config.listen.host,
            port=config.listen.port if args.port is None else args.port,
        ),
        admin=dataclasses.replace(
            config.admin, port=config.admin.port if args.admin_port is None else args.admin_port
        ),
    )
    log.configure(
        config.log_level,
        static={"worker": os.getpid()} if args.broker else None,
        cache=True,
        access_batch_s=ACCESS_BATCH_S,
    )
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    try:
        if workers > 1 and not args.broker:
            return _supervise(config, args.config, workers)
        if not args.broker:
            from workspace_proxy.runtime import remove_stale

            remove_stale()  # front directories of killed single-process instances
        run(serve(config, config_path=args.config, broker=args.broker, supervisor=os.getppid()))
    except OSError as exc:
        structlog.get_logger("workspace_proxy").error(
            "cannot_listen", error=str(exc), hint=serve_listen_problem(exc, config)
        )
        return EXIT_FAILURE
    return EXIT_OK


def _supervise(config: Config, config_path: str, workers: int) -> int:
    from workspace_proxy.runtime import supervisor_runtime_dir

    runtime = supervisor_runtime_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(runtime, "metrics")
    # Only now: the supervisor's own metrics (its sessions') must be multiprocess values too.
    from workspace_proxy import supervisor

    return supervisor.run(config, config_path=config_path, workers=workers, runtime=runtime)


async def _reload_on_hangup(app: Proxy, path: str, hangup: asyncio.Event) -> None:
    """SIGHUP: re-read and validate the config; keep the old one (and say why) if it is invalid."""
    from workspace_proxy import log

    logger = structlog.get_logger("workspace_proxy")
    while True:
        await hangup.wait()
        hangup.clear()
        try:
            new = load_config(path)
        except ConfigError as exc:
            hint = reload_hint(exc.problems)
            logger.error("config_reload_rejected", path=path, problems=exc.problems, hint=hint)
            continue
        current = app.view.config
        new = new.keeping_listeners(current)
        if new.log_level != current.log_level:
            log.set_level(new.log_level)
        await app.reload(new)


async def _check_looker(config: Config) -> None:
    await check_looker(config.looker)  # (logs what to do when Looker cannot be reached)


def _term_when_supervisor_dies(supervisor: int) -> None:
    """Linux: the kernel sends this worker SIGTERM if its supervisor dies (killed, crashed), so
    it drains and exits instead of holding the shared port with no sessions behind it."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    broker: str | None = None,
    supervisor: int = 0,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: readiness 503, keep serving, wait for in-flight.

    SIGHUP re-reads ``config_path`` (when given) and swaps to it if it is valid. As a worker of
    ``--workers`` (``broker`` set) sessions come from the supervisor, the port is shared and the
    admin listener is the supervisor's."""
    from workspace_proxy import log
    from workspace_proxy.app import create_admin_app, create_app, local_providers
    from workspace_proxy.broker import BrokerClient
    from workspace_proxy.server import BACKLOG, Server
    from workspace_proxy.sharing import WorkerLink

    logger = structlog.get_logger("workspace_proxy")
    client = BrokerClient(broker, timeout_s=config.looker.retry.deadline_s + 5) if broker else None
    link = WorkerLink(broker, timeout_s=config.looker.retry.deadline_s + 5) if broker else None
    app = create_app(config, providers=client or local_providers, link=link)
    admin = web.AppRunner(
        create_admin_app(teams=app.teams, draining=app.draining, metrics=app.metrics),
        access_log=None,
    )
    await app.start()
    await admin.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hangup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    tasks = []
    if config_path:
        tasks.append(loop.create_task(_reload_on_hangup(app, config_path, hangup)))
    if client is not None:
        _term_when_supervisor_dies(supervisor)
    tls = config.listen.ssl_context()
    server = Server(app, scheme="https" if tls else "http")
    try:
        await server.start(
            config.listen.host,
            config.listen.port,
            reuse_port=client is not None,
            ssl_context=tls,
            backlog=BACKLOG,
        )
        if client is None:
            await web.TCPSite(
                admin, config.admin.host, config.admin.port, ssl_context=config.admin.ssl_context()
            ).start()
        logger.info(
            "listening",
            proxy=f"{config.listen.host}:{config.listen.port}",
            admin=None if client else f"{config.admin.host}:{config.admin.port}",
            worker=client is not None,
            teams={t.name: t.workspace for t in config.teams.values()},
            looker=config.looker.base_url,
        )
        if client is None:  # (a worker leaves this to its supervisor)
            tasks.append(loop.create_task(_check_looker(config)))
        # Everything loaded so far lives until exit: keep it out of the collector's scans.
        gc.freeze()
        await stop.wait()
        logger.info("draining", drain_s=config.shutdown.drain_s, grace_s=config.shutdown.grace_s)
        app.draining[0] = True
        await asyncio.sleep(config.shutdown.drain_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.stop(config.shutdown.grace_s)
        await app.stop()
        if client is not None:
            await client.close()
        await admin.cleanup()
        log.access.flush()
        logger.info("stopped")

"""How workspace-proxy's cost grows with the number of teams configured (issue 14).

For each count (1, 10, 100 and 1,000 by default) the harness starts workspace-proxy with a config
of that many managed teams, each with its own Looker API user and one caller, all in ``dev``
(``teams_config``), and checks the file with ``workspace-proxy check-config`` first. Against the
same nginx upstream as the other scenarios (fixed answers: a login costs it next to nothing):

1. **one team active**: 64 connections send ``GET /api/4.0/user`` with team 1's caller token
   only; the other teams have never been called, so they hold no session.
2. **pin every team**: one first call per team, all at once; the proxy logs in and pins each
   team (single-flight per team, in the supervisor with ``--workers``). Wall time and failures
   are kept, and ``/readyz`` must then show every team ``ok`` after exactly one attempt.
3. **all teams active**: the same load, each connection taking the teams' caller tokens in turn
   (``load.closed_loop_rotating``).

Both loads use the same generated wrk script (a list of one token, or of all), so the load
generator costs the same per call in both. Every team keeps the default ``max_concurrency``
(256): the upstream pool's limit, ``looker.max_connections`` (4096 here), is raised by
``Config.pool_size`` to 258 per team (258,000 idle connections at most for 1,000 teams; a cap,
not an allocation).
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import load, servers
from benchmarks.calltypes import BY_KEY
from benchmarks.servers import ENV, USER_PATH, Proc, wp_config
from benchmarks.system import rss_bytes

COUNTS = (1, 10, 100, 1000)
"""Teams configured, by default."""
CONNECTIONS = 64
ONE, ALL = "one_active", "all_active"
"""The two loads of every count (the ``variant`` of the ``teams_<n>`` scenario)."""
LABELS = {ONE: "one team active", ALL: "all teams active"}
PREFIX = "teams_"
"""Results for ``n`` teams are kept under the scenario ``teams_<n>``."""
MIB = 1024 * 1024
LOOKER_SECRET_ENV = "WP_BENCH_LOOKER_SECRET"
CALLER_SECRET_ENV = "WP_BENCH_CALLER_SECRET"


def scenario(n: int) -> str:
    return f"{PREFIX}{n}"


def team_name(i: int) -> str:
    return f"team-{i:04d}"


def caller_id(i: int) -> str:
    """Team 1's caller is the harness's usual one (``start_wp`` logs in with it)."""
    return servers.CALLER_ID if i == 1 else f"bench-caller-{i:04d}"


def teams_config(n: int, looker_url: str, port: int, admin_port: int) -> dict[str, Any]:
    """``servers.wp_config`` (same listeners, log, metrics, limits) with ``n`` managed teams."""
    config = wp_config(looker_url, port, admin_port)
    config["teams"] = {
        team_name(i): {
            "workspace": "dev",
            "looker_client_id": f"bench-looker-{i:04d}",
            "looker_client_secret": {"env": LOOKER_SECRET_ENV},
            "callers": [{"client_id": caller_id(i), "client_secret": {"env": CALLER_SECRET_ENV}}],
        }
        for i in range(1, n + 1)
    }
    return config


def start(
    tmp: Path, n: int, upstream_url: str, workers: int | None, pythonpath: str | None
) -> Proc:
    """workspace-proxy with ``n`` teams, its config checked by ``check-config`` first."""
    proc = servers.start_wp(
        tmp,
        f"wp-teams-{n}",
        upstream_url,
        workers,
        pythonpath=pythonpath,
        config=partial(teams_config, n),
        check=True,
    )
    listed = sum(line.startswith("  team ") for line in proc.extra["check"].splitlines())
    if listed != n:
        raise RuntimeError(f"check-config listed {listed} teams, expected {n}")
    return proc


def caller_tokens(port: int, n: int) -> list[str]:
    """Every team's caller logs in (16 at a time): one proxy token per team, in team order."""
    secret = ENV[CALLER_SECRET_ENV]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: servers.caller_login(port, caller_id(i), secret),
                            range(1, n + 1)))  # fmt: skip
    missing = [caller_id(i + 1) for i, token in enumerate(got) if token is None]
    if missing:
        raise RuntimeError(f"{len(missing)} caller logins refused, first {missing[0]}")
    return [token for token in got if token is not None]


def first_calls(url: str, tokens: Sequence[str], timeout_s: float = 60) -> dict[str, Any]:
    """One call per token, all started at once: wall time until the last answer, statuses."""
    return asyncio.run(_first_calls(url, tokens, timeout_s))


async def _first_calls(url: str, tokens: Sequence[str], timeout_s: float) -> dict[str, Any]:
    statuses: collections.Counter[str] = collections.Counter()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(token: str) -> None:
            try:
                async with session.get(url, headers={"Authorization": f"token {token}"}) as r:
                    await r.read()
                    statuses[str(r.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[exc.__class__.__name__] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(t) for t in tokens))
        wall = time.perf_counter() - started
    return {
        "pin_s": wall,
        "pin_failed": len(tokens) - statuses.get("200", 0),
        "pin_statuses": dict(statuses),
    }


def readiness(admin_port: int) -> dict[str, Any]:
    """From ``/readyz``: teams whose session is ``ok``, and the most pin attempts of any team."""
    status, body = servers.http_call(admin_port, "GET", "/readyz")
    try:
        teams: dict[str, dict[str, Any]] = json.loads(body).get("teams", {})
    except (ValueError, AttributeError):
        teams = {}
    attempts = [int(t.get("pin_attempts") or 0) for t in teams.values()]
    return {
        "readyz_status": status,
        "teams_ok": sum(t.get("state") == "ok" for t in teams.values()),
        "pin_attempts_max": max(attempts, default=0),
        "pin_attempts_total": sum(attempts),
    }


Measure = Callable[[Callable[[], load.LoadResult]], dict[str, Any]]
"""Runs a load and adds the proxy's CPU per call to its figures (``Bench._measured``)."""


def point(
    proc: Proc,
    n: int,
    *,
    measure: Measure,
    duration_s: float,
    warmup_s: float,
    threads: int,
    workdir: Path,
    say: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """One team count through a started proxy: ``{ONE: figures, ALL: figures}``."""
    tokens = caller_tokens(proc.port, n)
    plain = BY_KEY["plain_get"]
    host = f"127.0.0.1:{proc.port}"
    requests = [plain.request(host, token) for token in tokens]
    admin = int(proc.extra["admin_port"])

    def run(which: str, chosen: Sequence[bytes], seconds: float) -> load.LoadResult:
        return load.closed_loop_rotating(
            proc.url,
            chosen,
            connections=CONNECTIONS,
            duration_s=seconds,
            threads=threads,
            workdir=workdir,
            name=f"teams-{n}-{which}",
        )

    out: dict[str, dict[str, Any]] = {}
    run(ONE, requests[:1], warmup_s)  # pins team 1 in every worker
    out[ONE] = measure(lambda: run(ONE, requests[:1], duration_s))
    out[ONE]["rss_mib"] = rss_bytes(proc.pids()) / MIB
    out[ONE].update(readiness(admin))
    pinned = first_calls(proc.url + USER_PATH, tokens)
    ready = readiness(admin)
    say(
        f"  teams {n:>5}: pinned every team in {pinned['pin_s']:.2f} s,"
        f" {pinned['pin_failed']} failed, {ready['teams_ok']} ok,"
        f" at most {ready['pin_attempts_max']} attempt(s) per team"
    )
    run(ALL, requests, warmup_s)  # every worker takes every team's session from the broker
    out[ALL] = measure(lambda: run(ALL, requests, duration_s))
    out[ALL]["rss_mib"] = rss_bytes(proc.pids()) / MIB
    out[ALL].update(pinned)
    out[ALL].update(readiness(admin))
    out[ALL]["check_config"] = proc.extra["check"].splitlines()[0].rsplit(":", 1)[-1].strip()
    return out

"""Run every scenario against every variant; write results/latest.json and docs/benchmarks.md.

    python -m benchmarks.run            # 3 rounds, 5 s runs (several minutes)
    python -m benchmarks.run --quick    # 1 round, 1 s runs (about a minute), results/quick.json

Variants: ``direct`` (the upstream itself), ``nginx`` (C reverse proxy), ``naive`` (plain aiohttp
proxy) and ``workspace-proxy``. Scenarios: small JSON GET at 1 and 64 connections, the same GET
swept over connections (4, 16, 256; shorter runs), CPU per call type at 64 connections (issue
16: passthrough and sudo tokens, HEAD, small, chunked and large bodies, a non-ASCII header, a
1 MiB answer; ``benchmarks/calltypes.py``), a 1 GiB CSV download, 2,000 concurrent 1 s requests,
a cold start with 1,000 concurrent first requests, and workspace-proxy's cost against the number
of teams configured (``benchmarks/teams.py``). The page's charts are drawn from the same results
(``benchmarks/charts.py``, matplotlib: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import calltypes, load, report, servers, teams
from benchmarks.calltypes import CallType, TokenKind
from benchmarks.report import WP
from benchmarks.servers import CSV_PATH, SLOW_PATH, USER_PATH, Proc
from benchmarks.system import (
    cpu_seconds,
    ensure_tools,
    free_port,
    listen_overflows,
    machine,
    now_iso,
    tool_versions,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "latest.json"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"
QUICK_OUT = ROOT / "benchmarks" / "results" / "quick.json"
QUICK_CHARTS = ROOT / "benchmarks" / "results" / "quick-charts"
GIB = 1024**3


_LOGINS: dict[TokenKind, Callable[[int], str]] = {
    "passthrough": servers.passthrough_login,
    "sudo": servers.sudo_login,
}
"""How a caller of each kind gets its token from workspace-proxy (managed: at start)."""


@dataclass
class Variant:
    name: str
    proc: Proc
    """Whose CPU and RSS count as this variant's (for ``direct``: the upstream)."""
    headers: dict[str, str]
    workers: int
    tokens: dict[TokenKind, str] = field(default_factory=dict)
    """The token each kind of caller sends (``managed``: the one in ``headers``)."""

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def is_wp(self) -> bool:
        return self.name.startswith(WP)


class Bench:
    """One run: servers, measurements and their raw results."""

    def __init__(self, args: argparse.Namespace, tmp: Path, say: Callable[[str], None]) -> None:
        self.args = args
        self.tmp = tmp
        self.say = say
        self.cores = os.cpu_count() or 1
        self.workers = args.workers or self.cores
        self.procs: list[Proc] = []
        self.notes: list[str] = []
        self.raw: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.wp_env = {"PYTHONPATH": args.wp_pythonpath} if args.wp_pythonpath else {}
        self.wp_workers: int | None = None
        self.client = load.BurstClient(self.cores)
        self.variants: dict[str, Variant] = {}
        self.calls: tuple[CallType, ...] = calltypes.select(args.call_types)
        self.call_failures: dict[str, dict[str, str]] = defaultdict(dict)
        """scenario (``call_<key>``) -> variant -> why that call type was not measured."""

    def keep(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # --- setup -----------------------------------------------------------------------------

    def start(self, have_nginx: bool, wanted: Sequence[str]) -> dict[str, Variant]:
        a, tmp = self.args, self.tmp
        fixed = self.keep(servers.start_fixed(tmp, a.slow_s, a.download_bytes))
        if have_nginx:
            www = servers.write_fixtures(tmp, a.download_bytes)
            port = free_port()
            conf = servers.nginx_upstream_conf(tmp, www, port, fixed.port, a.upstream_workers)
            upstream = self.keep(servers.start_nginx(tmp, "upstream", conf, port))
        else:
            upstream = fixed
            self.notes.append(
                "nginx was not available: the upstream is the asyncio fixed-answer server"
                " (benchmarks/fixed_upstream.py) and the nginx variant is missing."
            )
        self.upstream = upstream
        # Direct callers and the plain proxies send a Looker token, as a client of Looker would.
        same = {"Authorization": f"token {servers.LOOKER_TOKEN}"}
        looker: dict[TokenKind, str] = {"managed": servers.LOOKER_TOKEN}
        variants = {
            "direct": Variant(
                "direct", upstream, same, a.upstream_workers if have_nginx else 1, dict(looker)
            )
        }
        if "nginx" in wanted and have_nginx:
            port = free_port()
            conf = servers.nginx_proxy_conf(tmp, port, upstream.port, self.workers)
            proc = self.keep(servers.start_nginx(tmp, "proxy", conf, port))
            variants["nginx"] = Variant("nginx", proc, same, self.workers, dict(looker))
        if "naive" in wanted:
            proc = self.keep(servers.start_naive(tmp, upstream.url, self.workers))
            variants["naive"] = Variant("naive", proc, same, self.workers, dict(looker))
        extra = dict(label.split("=", 1) for label in a.wp_variant)
        if WP in wanted or extra:
            if servers.wp_supports_workers(tmp, self.wp_env):
                self.wp_workers = self.workers
            else:
                self.notes.append(
                    "`workspace-proxy serve --help` does not list --workers: workspace-proxy ran"
                    " as ONE process while the other variants used one per core."
                )
        paths = {WP: a.wp_pythonpath} if WP in wanted else {}
        paths.update({f"{WP}[{label}]": path for label, path in extra.items()})
        for name, path in paths.items():
            proc = self.keep(
                servers.start_wp(tmp, _slug(name), upstream.url, self.wp_workers, pythonpath=path)
            )
            token = {"Authorization": f"token {proc.extra['token']}"}
            variants[name] = Variant(
                name, proc, token, self.wp_workers or 1, {"managed": proc.extra["token"]}
            )
        # `direct` is always measured: every ratio is to it.
        order = [k for k in report.VARIANTS if k in variants]
        return {k: variants[k] for k in order + [k for k in variants if k not in order]}

    def warm_up(self, variants: dict[str, Variant]) -> None:
        """Pools, pinned sessions (every worker) and the page cache of the download file."""
        for v in variants.values():
            load.closed_loop(
                v.url + USER_PATH,
                connections=64,
                duration_s=self.args.warmup_s,
                headers=v.headers,
                threads=self.cores,
                workdir=self.tmp,
            )
        if "download" in self.args.scenarios and "direct" in variants:
            d = variants["direct"]
            load.download(d.url + CSV_PATH, d.headers, d.proc.pids)

    def call_setup(self, variants: dict[str, Variant]) -> dict[str, dict[str, bytes]]:
        """Log in as each kind of caller, then check every call type once through every variant
        that measures it: variant -> call type key -> the request bytes wrk will send.

        A call type a variant fails (not a 200, or an answer of the wrong size) is not measured
        and says why on the page; the checks also pin the passthrough and sudo sessions in every
        worker (fresh connections land on either)."""
        refs = set(self.args.call_references)
        measured: dict[str, dict[str, bytes]] = {}
        for v in variants.values():
            if not v.is_wp and v.name not in refs:
                continue
            needed = {call.token for call in self.calls}
            for kind, login in _LOGINS.items():
                if not v.is_wp or kind not in needed:
                    continue
                try:
                    v.tokens[kind] = login(v.proc.port)
                except servers.LoginError as exc:
                    self.say(f"  {v.name}: {exc}")
                    self.notes.append(f"{v.name}: {exc}")
            measured[v.name] = {}
            for call in self.calls:
                if not (v.is_wp or call.references):
                    continue
                why = self.check_call(v, call)
                if why:
                    self.call_failures[calltypes.scenario(call)][v.name] = why
                    self.say(f"  {call.label}: {v.name} not measured: {why}")
                    continue
                token = v.tokens[call.token]
                measured[v.name][call.key] = call.request(f"127.0.0.1:{v.proc.port}", token)
        return measured

    def check_call(self, v: Variant, call: CallType) -> str:
        """Why ``call`` cannot be measured through ``v`` ('' when it can)."""
        token = v.tokens.get(call.token)
        if token is None:
            return f"no {call.token} token (its login failed)"
        request = call.request(f"127.0.0.1:{v.proc.port}", token)
        for _ in range(max(4, 4 * v.workers)):
            got = load.exchange(v.proc.port, request, call.method)
            if got.error:
                return got.error
            if got.status != 200:
                return f"answered {got.status} {got.body_start[:120]!r}"
            if got.body_bytes != call.answer_bytes:
                return f"answered {got.body_bytes} body bytes, expected {call.answer_bytes}"
            if not got.keep_alive:
                note = f"{v.name} closes the connection after each {call.label}"
                if note not in self.notes:
                    self.notes.append(note)
        return ""

    # --- scenarios -------------------------------------------------------------------------

    def _measured(self, v: Variant, run: Callable[[], load.LoadResult]) -> dict[str, Any]:
        """``run``'s figures plus the variant's CPU per request (process tree, /proc)."""
        pids, up_pids = v.proc.pids(), self.upstream.pids()
        cpu0, up0, t0 = cpu_seconds(pids), cpu_seconds(up_pids), time.perf_counter()
        result = run()
        wall = time.perf_counter() - t0
        cpu, up = cpu_seconds(pids) - cpu0, cpu_seconds(up_pids) - up0
        out = result.as_dict()
        out["cpu_s"] = cpu
        out["cpu_us_per_req"] = cpu / result.requests * 1e6 if result.requests else math.nan
        out["cpu_cores_busy"] = cpu / wall
        out["upstream_cores_busy"] = up / wall
        return out

    def get(self, v: Variant, connections: int, duration_s: float | None = None) -> dict[str, Any]:
        return self._measured(
            v,
            lambda: load.closed_loop(
                v.url + USER_PATH,
                connections=connections,
                duration_s=duration_s or self.args.duration,
                headers=v.headers,
                threads=self.cores,
                workdir=self.tmp,
            ),
        )

    def call(self, v: Variant, call: CallType, request: bytes) -> dict[str, Any]:
        """One call type at 64 connections; per byte too when its body is what counts."""
        out = self._measured(
            v,
            lambda: load.closed_loop_raw(
                v.url,
                request,
                method=call.method,
                connections=64,
                duration_s=self.args.call_duration,
                threads=self.cores,
                workdir=self.tmp,
                name=f"call-{_slug(v.name)}-{call.key}",
            ),
        )
        if call.per_byte:
            moved = out["requests"] * call.per_byte
            out["bytes_per_call"] = call.per_byte
            out["cpu_ns_per_byte"] = out["cpu_s"] / moved * 1e9 if moved else math.nan
        return out

    def download(self, v: Variant) -> dict[str, Any]:
        pids = v.proc.pids()
        cpu0 = cpu_seconds(pids)
        result = load.download(v.url + CSV_PATH, v.headers, v.proc.pids)
        cpu = cpu_seconds(pids) - cpu0
        if result.status != 200 or result.bytes != self.args.download_bytes:
            self.say(f"  {v.name}: download answered {result.status} with {result.bytes} bytes")
            result.gb_per_s = math.nan
        out = result.as_dict()
        out["cpu_s"] = cpu
        out["cpu_ns_per_byte"] = cpu / result.bytes * 1e9 if result.bytes else math.nan
        return out

    def burst(self, v: Variant) -> dict[str, Any]:
        before = listen_overflows()
        result = self.client.burst(v.url + SLOW_PATH, v.headers, self.args.burst).as_dict()
        result["listen_overflows"] = listen_overflows() - before
        return result

    def cold_start(self, emulator: Proc, workers: int | None) -> dict[str, Any]:
        before = _emulator_stats(emulator)
        wp = servers.start_wp(
            self.tmp, "wp-cold", emulator.url, workers, pythonpath=self.args.wp_pythonpath
        )
        try:
            headers = {"Authorization": f"token {wp.extra['token']}"}
            overflows = listen_overflows()
            result = self.client.burst(wp.url + USER_PATH, headers, self.args.cold).as_dict()
            result["listen_overflows"] = listen_overflows() - overflows
        finally:
            wp.stop()
        after = _emulator_stats(emulator)
        result["logins"] = after["logins"] - before["logins"]
        result["login_attempts"] = after["login_attempts"] - before["login_attempts"]
        result["patches"] = after["session_patches"] - before["session_patches"]
        return result

    def teams(self, n: int) -> dict[str, dict[str, Any]]:
        """workspace-proxy with ``n`` teams configured: one team active, then all of them."""
        a = self.args
        proc = self.keep(
            teams.start(self.tmp, n, self.upstream.url, self.wp_workers, a.wp_pythonpath)
        )
        try:
            v = Variant(f"{WP} ({n} teams)", proc, {}, self.wp_workers or 1)
            return teams.point(
                proc,
                n,
                measure=lambda run: self._measured(v, run),
                duration_s=a.sweep_duration,
                warmup_s=a.warmup_s,
                threads=self.cores,
                workdir=self.tmp,
                say=self.say,
            )
        finally:
            proc.stop()
            self.procs.remove(proc)

    def get_points(self, rnd: int) -> list[tuple[int, float]]:
        """(connections, seconds) of the GET runs of round ``rnd``: 1 and 64 every round, the
        sweep's other points (``--connections``) in its rounds, shorter."""
        a = self.args
        main = [c for c in (1, 64) if f"get{c}" in a.scenarios]
        points = [(c, float(a.duration)) for c in main]
        if "sweep" in a.scenarios and rnd < a.sweep_rounds:
            points += [(c, float(a.sweep_duration)) for c in a.connections if c not in main]
        return sorted(points)

    # --- the run ---------------------------------------------------------------------------

    def run(self, have_nginx: bool) -> None:
        a = self.args
        variants = self.variants = self.start(have_nginx, a.variants)
        self.say("servers up: " + ", ".join(f"{v.name} ({v.workers}w)" for v in variants.values()))
        self.warm_up(variants)
        calls: dict[str, dict[str, bytes]] = {}
        if "calltypes" in a.scenarios:
            self.say("call types: logging in as each kind of caller, checking each type")
            calls = self.call_setup(variants)
        emulator = self.keep(servers.start_emulator(self.tmp)) if "cold" in a.scenarios else None
        for rnd in range(a.rounds):
            names = list(variants)
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            self.say(f"round {rnd + 1}/{a.rounds}: order {', '.join(order)}")
            for conns, seconds in self.get_points(rnd):
                for name in order:
                    r = self.get(variants[name], conns, seconds)
                    self.raw[f"get_c{conns}"][name].append(r)
                    self.say(
                        f"  GET c={conns:<3} {name:16} {r['rps']:>9,.0f} req/s"
                        f"  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                        f"  {r['cpu_us_per_req']:6.0f} us/req  errors {r['errors']}"
                    )
            for call in self.calls if calls else ():
                for name in order:
                    request = calls.get(name, {}).get(call.key)
                    if request is None:
                        continue
                    r = self.call(variants[name], call, request)
                    self.raw[calltypes.scenario(call)][name].append(r)
                    per_byte = (
                        f"  {r['cpu_ns_per_byte']:.2f} ns/byte" if "cpu_ns_per_byte" in r else ""
                    )
                    self.say(
                        f"  {call.label:20} {name:16} {r['rps']:>9,.0f} req/s"
                        f"  p50 {r['p50_ms']:.3f} ms  {r['cpu_us_per_req']:6.0f} us/call"
                        f"{per_byte}  errors {r['errors']}"
                    )
            if "download" in a.scenarios:
                for name in order:
                    r = self.download(variants[name])
                    self.raw["download"][name].append(r)
                    self.say(
                        f"  download {name:16} {r['gb_per_s']:.2f} GB/s"
                        f"  RSS +{r['rss_growth_mib']:.1f} MiB"
                        f"  CPU {r['cpu_ns_per_byte']:.2f} ns/byte"
                    )
            if "burst" in a.scenarios:
                for name in order:
                    r = self.burst(variants[name])
                    self.raw["burst"][name].append(r)
                    self.say(
                        f"  burst {a.burst} x {a.slow_s:g}s {name:16} wall {r['wall_s']:.2f} s"
                        f"  ok {r['ok']}  {r['statuses']}  listen overflows {r['listen_overflows']}"
                    )
            if emulator is not None and WP in variants:
                for workers in self.cold_configs():
                    r = self.cold_start(emulator, workers)
                    label = self.cold_label(workers)
                    self.raw["cold_start"][label].append(r)
                    self.say(
                        f"  cold start {a.cold} ({label}) wall {r['wall_s']:.2f} s ok {r['ok']}"
                        f"  logins {r['logins']}  PATCHes {r['patches']}"
                        f"  listen overflows {r['listen_overflows']}"
                    )
            if "teams" in a.scenarios and WP in variants and rnd < a.sweep_rounds:
                for n in a.teams:
                    for load_, r in self.teams(n).items():
                        self.raw[teams.scenario(n)][load_].append(r)
                        self.say(
                            f"  teams {n:>5} {teams.LABELS[load_]:16} {r['rps']:>9,.0f} req/s"
                            f"  {r['cpu_us_per_req']:6.0f} us/call  RSS {r['rss_mib']:.0f} MiB"
                            f"  errors {r['errors']}"
                        )

    def cold_configs(self) -> list[int | None]:
        if self.wp_workers is None:
            return [None]
        configs: list[int | None] = [self.wp_workers]
        if self.wp_workers > 1:
            configs.append(1)  # single flight within one process, for comparison
        return configs

    @staticmethod
    def cold_label(workers: int | None) -> str:
        return f"workers={workers or 1}"


def _emulator_stats(emulator: Proc) -> dict[str, int]:
    status, body = servers.http_call(emulator.port, "GET", "/_emulator/stats")
    if status != 200:
        raise RuntimeError(f"emulator stats answered {status}")
    stats: dict[str, int] = json.loads(body)
    return stats


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 1 s runs, call types through workspace-proxy only (about a minute)",
    )
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--duration", type=int, help="seconds per closed-loop run (5; 1 quick)")
    p.add_argument("--warmup-s", type=int, help="seconds of warm-up per variant (1)")
    p.add_argument("--workers", type=int, help="workers per proxy (default: cores)")
    p.add_argument("--upstream-workers", type=int, default=1, help="nginx upstream workers")
    p.add_argument("--variants", default=",".join(report.VARIANTS), help="comma-separated")
    p.add_argument(
        "--scenarios",
        help="comma-separated subset of " + ",".join(SCENARIOS) + " (default all; with --quick"
        " the sweeps are shrunk, see --connections and --teams). calltypes judges large bodies"
        " per byte against the download: run both for that ratio",
    )
    p.add_argument(
        "--connections",
        help="connections of the sweep (default 1,4,16,64,256; 1,64,256 quick); points that get1"
        " and get64 measure in the same run are taken from them",
    )
    p.add_argument(
        "--sweep-duration",
        type=int,
        help="seconds per run of the connection and teams sweeps (default 2; 1 quick)",
    )
    p.add_argument(
        "--sweep-rounds",
        type=int,
        default=1,
        help="rounds in which the connection and teams sweeps run (default 1: the first)",
    )
    p.add_argument(
        "--teams",
        help="teams configured, per point of the teams sweep (default 1,10,100,1000; 100 quick)",
    )
    p.add_argument(
        "--call-types",
        default="all",
        help="call types of the calltypes scenario: all, or a comma-separated subset of "
        + ",".join(calltypes.BY_KEY),
    )
    p.add_argument(
        "--call-duration",
        type=int,
        help="seconds per call-type run (default 3, or --duration if shorter; 1 quick)",
    )
    p.add_argument(
        "--call-references",
        help="variants measured with the call types as references besides workspace-proxy"
        " (default direct,nginx; none with --quick)",
    )
    p.add_argument("--burst", type=int, default=2000, help="concurrent 1 s requests")
    p.add_argument("--slow-s", type=float, default=1.0, help="upstream delay of the burst path")
    p.add_argument("--cold", type=int, default=1000, help="concurrent first requests")
    p.add_argument("--download-bytes", type=int, default=GIB)
    p.add_argument(
        "--out",
        help="results JSON ('' to skip; default results/latest.json, with --quick quick.json)",
    )
    p.add_argument(
        "--docs",
        help="Markdown page ('' to skip; default docs/benchmarks.md, none with --quick: a quick "
        "run never replaces the published figures)",
    )
    p.add_argument(
        "--charts",
        help="folder for the SVG charts ('' to skip; default charts/ beside --docs, with --quick"
        " results/quick-charts/); needs matplotlib (pip install -e '.[bench]')",
    )
    p.add_argument(
        "--wp-pythonpath",
        help="run workspace-proxy from this PYTHONPATH (e.g. an experimental copy)",
    )
    p.add_argument(
        "--wp-variant",
        action="append",
        default=[],
        metavar="LABEL=PYTHONPATH",
        help="also run workspace-proxy from PYTHONPATH as variant 'workspace-proxy[LABEL]'"
        " (repeatable; for A/B experiments, interleaved with the others)",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx/wrk")
    p.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="closed-loop load generator (auto: wrk when available)",
    )
    p.add_argument(
        "--no-nginx",
        action="store_true",
        help="do without nginx (asyncio upstream, no nginx variant), as when it cannot be had",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out is None:
        args.out = str(QUICK_OUT if args.quick else DEFAULT_OUT)
    if args.docs is None:
        args.docs = "" if args.quick else str(DEFAULT_DOCS)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1 if args.quick else 5)
    args.warmup_s = args.warmup_s or 1
    args.call_duration = args.call_duration or (1 if args.quick else min(args.duration, 3))
    if args.call_references is None:
        args.call_references = "" if args.quick else "direct,nginx"
    args.call_references = [v.strip() for v in args.call_references.split(",") if v.strip()]
    try:
        calltypes.select(args.call_types)
    except ValueError as exc:
        _parser().error(str(exc))
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.scenarios = _names(args.scenarios or ",".join(SCENARIOS))
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        _parser().error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    args.sweep_duration = args.sweep_duration or (1 if args.quick else 2)
    sweep = QUICK_SWEEP if args.quick else FULL_SWEEP
    try:
        args.connections = _counts(args.connections or sweep["connections"])
        args.teams = _counts(args.teams or sweep["teams"])
    except ValueError as exc:
        _parser().error(str(exc))
    if args.charts is None:
        args.charts = _default_charts(args.quick, args.docs)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", flush=True)

    # SIGTERM would end the interpreter without running `finally`: turn it into an exception.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if args.charts and not report.can_draw():
        if not args.quick:
            say("matplotlib is needed for the charts: pip install -e '.[bench]' (or --charts '')")
            return 2
        say("NOTE: matplotlib is not installed: no quick charts (pip install -e '.[bench]')")
        args.charts = ""
    have = ensure_tools(say, install=not args.no_install)
    if args.no_nginx:
        have["nginx"] = False
    if args.load == "python":
        have["wrk"] = False
    elif args.load == "wrk" and not have["wrk"]:
        say("wrk was asked for but is not available")
        return 2
    load.USE_WRK = have["wrk"]
    meta: dict[str, Any] = {
        "date": now_iso(),
        "quick": args.quick,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "machine": machine(),
        "tools": tool_versions(),
        "load_tool": "wrk" if have["wrk"] else "a multi-process Python aiohttp client (no wrk)",
        "burst_requests": args.burst,
        "cold_requests": args.cold,
        "download_bytes": args.download_bytes,
        "call_duration_s": args.call_duration,
        "connections": args.connections,
        "teams": args.teams,
        "sweep_duration_s": args.sweep_duration,
        "sweep_rounds": min(args.sweep_rounds, args.rounds),
        "loadavg_before": _loadavg(),
    }
    say(f"machine: {meta['machine']['line']}")
    say("tools: " + ", ".join(f"{k} {v}" for k, v in meta["tools"].items()))
    if not have["wrk"]:
        say("NOTE: not using wrk: load comes from the multi-process Python aiohttp client")
    if not have["nginx"]:
        say("NOTE: no nginx: asyncio fixed-answer upstream, and no nginx variant")
    with tempfile.TemporaryDirectory(prefix="wp-bench-") as tmpname:
        bench = Bench(args, Path(tmpname), say)
        try:
            with bench.client:
                bench.run(have["nginx"])
        except KeyboardInterrupt:
            say("interrupted: stopping every server")
            return 130
        finally:
            bench.stop_all()
    used = {name.split("[")[0] for name in bench.variants}
    meta["workers"] = {v: bench.workers for v in ("nginx", "naive") if v in used}
    if WP in used:
        meta["workers"][WP] = bench.wp_workers or 1
    if have["nginx"]:
        meta["workers"]["upstream nginx"] = args.upstream_workers
    else:
        meta["workers"]["asyncio upstream"] = 1
    meta["loadavg_after"] = _loadavg()
    meta["notes"] = bench.notes
    meta["call_failures"] = {k: dict(v) for k, v in bench.call_failures.items()}
    results = assemble(meta, bench.raw)
    for t in results["targets"]:
        say(f"target {t['name']:12} {report._verdict(t['pass']):10} {t['measured']}")
    for row in results["calltypes"]:
        if row["target"] != "—":
            say(f"target {row['key']:16} {report._verdict(row['pass']):10} {row['measured']}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_clean(results), indent=2, allow_nan=False) + "\n")
        say(f"wrote {out}")
    written = report.publish(
        results, Path(args.docs) if args.docs else None, Path(args.charts) if args.charts else None
    )
    for path in written:
        say(f"wrote {path}")
    return 0


def assemble(
    meta: dict[str, Any], raw: dict[str, dict[str, list[dict[str, Any]]]]
) -> dict[str, Any]:
    plain = {k: dict(v) for k, v in raw.items()}
    summary = report.summarise(plain)
    cold = next(iter(plain.get("cold_start", {})), "workers=1")
    return {
        "meta": meta,
        "summary": summary,
        "ratios": report.ratios(summary),
        "added_latency": report.added_latency(summary),
        "targets": report.targets(summary, plain, cold),
        "calltypes": report.calltype_rows(summary, plain, meta.get("call_failures", {})),
        "raw": plain,
    }


SCENARIOS = ("get1", "get64", "sweep", "calltypes", "download", "burst", "cold", "teams")
FULL_SWEEP = {"connections": "1,4,16,64,256", "teams": ",".join(map(str, teams.COUNTS))}
QUICK_SWEEP = {"connections": "1,64,256", "teams": "100"}
"""--quick: one sweep point beyond get1 and get64, one team count (about 10 s together)."""


def _default_charts(quick: bool, docs: str) -> str:
    """Charts go beside the page (docs/charts/); a quick run's never do (results/quick-charts/)."""
    if quick:
        return str(QUICK_CHARTS)
    return str(Path(docs).parent / "charts") if docs else ""


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _counts(text: str) -> list[int]:
    """``1,4,16`` -> [1, 4, 16] (positive, sorted, no repeats)."""
    counts = sorted({int(s) for s in _names(text)})
    if not counts or counts[0] < 1:
        raise ValueError(f"expected positive counts, got {text!r}")
    return counts


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _clean(value: Any) -> Any:
    """NaN (a missing figure) as null, so the file is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

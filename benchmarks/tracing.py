"""What tracing costs: CPU per proxied call with tracing off, on at 1 % and on at 100 %.

    python -m benchmarks.tracing            # part of ``make bench``: 3 rounds of 5 s
    python -m benchmarks.tracing --quick    # part of ``make bench-quick``: 1 round of 1 s

The same code runs three times side by side, configured only by the standard OTEL_* variables:
``off`` (none set), ``1%`` (OTEL_EXPORTER_OTLP_ENDPOINT + OTEL_TRACES_SAMPLER_ARG=0.01) and
``100%`` (the endpoint alone: every trace), the SDK's defaults for the rest. Each variant's
spans go to its own OTLP/HTTP receiver in another process (``benchmarks.otlp_sink``, which
decodes and counts them); the upstream is nginx serving fixed
Looker-shaped answers (the asyncio one when nginx cannot be had), load is wrk's (64 keep-alive
connections, the plain ``GET /api/4.0/user`` of ``make bench``, no caller ``traceparent``: each
call starts its own trace). CPU is the proxy's process tree (workers, and the SDK's export
thread in each), from /proc. Rounds interleave the variants; medians are reported, with the
spans its receiver got per call, counted once the proxies have stopped (they export what they
still hold): 2 per recorded call, fewer when the SDK's queue was full and it dropped spans
rather than slow calls down.

Writes ``benchmarks/results/tracing.json`` and ``docs/tracing-benchmark.md`` (a quick run only
``benchmarks/results/tracing-quick.json``: it never replaces the published figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks import load, servers
from benchmarks.servers import USER_PATH, Proc
from benchmarks.system import cpu_seconds, ensure_tools, free_port, machine, now_iso

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "tracing.json"
QUICK_OUT = ROOT / "benchmarks" / "results" / "tracing-quick.json"
DOCS = ROOT / "docs" / "tracing-benchmark.md"
CONNECTIONS = 64


VARIANTS: dict[str, str | None] = {"off": None, "1%": "0.01", "100%": ""}
"""Each variant's OTEL_TRACES_SAMPLER_ARG (None: tracing off; '': not set, every trace)."""


def otel_env(sampler_arg: str, sink: Proc) -> dict[str, str]:
    """A variant's environment: tracing configured as an operator would, by OTEL_* alone."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url}
    if sampler_arg:
        env["OTEL_TRACES_SAMPLER_ARG"] = sampler_arg
    return env


def start_wp(tmp: Path, name: str, upstream: str, workers: int, env: dict[str, str]) -> Proc:
    """``workspace-proxy serve`` (the benchmark's own config) with ``env``; ``extra['token']``."""
    port, admin = free_port(), free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(servers.wp_config(upstream, port, admin), sort_keys=False))
    argv = [sys.executable, "-m", "workspace_proxy", "serve", "-c", str(path)]
    argv += ["--workers", str(workers)]
    # The OTEL_* variables of whoever runs the benchmark must not leak into a variant.
    clean = {k: "" for k in os.environ if k.startswith("OTEL_")}
    # cwd: the temp dir, as for the main benchmark (the checkout must not shadow PYTHONPATH).
    env = {**servers.ENV, **clean, **env}
    proc = servers.spawn(name, argv, tmp / f"{name}.log", port, env=env, cwd=tmp)
    token: list[str] = []

    def logged_in() -> bool:
        got = servers.caller_login(port)
        if got:
            token.append(got)
        return bool(got)

    servers.wait_until(proc, logged_in, 30)
    proc.extra["token"] = token[0]
    return proc


def start_sink(tmp: Path, name: str) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.otlp_sink", "--port", str(port)]
    sink = servers.spawn(name, argv, tmp / f"{name}.log", port)
    servers.wait_until(sink, lambda: servers.http_call(port, "GET", "/stats")[0] == 200)
    return sink


def sink_stats(sink: Proc) -> dict[str, int]:
    status, body = servers.http_call(sink.port, "GET", "/stats")
    if status != 200:
        raise RuntimeError(f"the OTLP sink answered {status}")
    stats: dict[str, int] = json.loads(body)
    return stats


def measure(proc: Proc, duration_s: float, cores: int, tmp: Path) -> dict[str, Any]:
    """One closed-loop run: requests, errors, req/s, latency, CPU µs per call."""
    headers = {"Authorization": f"token {proc.extra['token']}"}
    pids = proc.pids()
    cpu0 = cpu_seconds(pids)
    result = load.closed_loop(
        proc.url + USER_PATH,
        connections=CONNECTIONS,
        duration_s=duration_s,
        headers=headers,
        threads=cores,
        workdir=tmp,
    )
    cpu = cpu_seconds(pids) - cpu0
    requests = max(result.requests, 1)
    return {
        "requests": result.requests,
        "errors": result.errors,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_s": cpu,
        "cpu_us_per_call": cpu / requests * 1e6,
    }


def run(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    workers = args.workers or cores
    have = ensure_tools(say, install=not args.no_install)
    load.USE_WRK = have["wrk"]
    raw: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="wp-bench-tracing-") as name:
        tmp = Path(name)
        procs: list[Proc] = []
        try:
            fixed = servers.start_fixed(tmp, 1.0, 1024)
            procs.append(fixed)
            upstream = fixed
            if have["nginx"]:
                www = servers.write_fixtures(tmp, 1024)
                port = free_port()
                conf = servers.nginx_upstream_conf(tmp, www, port, fixed.port, 1)
                upstream = servers.start_nginx(tmp, "upstream", conf, port)
                procs.append(upstream)
            wps, sinks, sent = {}, {}, {}
            for label, sampler_arg in VARIANTS.items():
                slug = label.strip("%")
                env: dict[str, str] = {}
                if sampler_arg is not None:
                    sinks[label] = start_sink(tmp, f"otlp-sink-{slug}")
                    procs.append(sinks[label])
                    env = otel_env(sampler_arg, sinks[label])
                wps[label] = start_wp(tmp, f"wp-{slug}", upstream.url, workers, env)
                procs.append(wps[label])
            say(f"servers up: tracing {', '.join(wps)} ({workers} workers each)")
            for label, proc in wps.items():  # warm-up: pools, pinned sessions in every worker
                sent[label] = measure(proc, args.warmup_s, cores, tmp)["requests"]
            for rnd in range(args.rounds):
                names = list(wps)
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                for label in order:
                    r = measure(wps[label], args.duration, cores, tmp)
                    raw.setdefault(label, []).append(r)
                    sent[label] += r["requests"]
                    say(
                        f"  round {rnd + 1} tracing {label:5} {r['rps']:>9,.0f} req/s"
                        f"  {r['cpu_us_per_call']:6.1f} us/call  p99 {r['p99_ms']:.2f} ms"
                        f"  errors {r['errors']}"
                    )
            for proc in wps.values():
                proc.stop(wait_s=30)  # SIGTERM: each worker exports the spans it still holds
            received = {label: sink_stats(sink)["spans"] for label, sink in sinks.items()}
        finally:
            for proc in reversed(procs):
                proc.stop()
    summary = {
        label: {
            key: statistics.median(r[key] for r in runs)
            for key in ("rps", "cpu_us_per_call", "p50_ms", "p99_ms")
        }
        for label, runs in raw.items()
    }
    base = summary["off"]["cpu_us_per_call"]
    for label, figures in summary.items():
        figures["added_us_per_call"] = figures["cpu_us_per_call"] - base
        figures["spans_per_call"] = received.get(label, 0) / max(sent[label], 1)
    return {
        "meta": {
            "date": now_iso(),
            "quick": args.quick,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": CONNECTIONS,
            "workers": workers,
            "machine": machine(),
            "upstream": "nginx" if have["nginx"] else "asyncio fixed-answer server",
            "load_tool": "wrk" if have["wrk"] else "the Python load client",
        },
        "summary": summary,
        "raw": raw,
    }


def markdown(results: dict[str, Any]) -> str:
    meta, summary = results["meta"], results["summary"]
    lines = [
        "# What tracing costs",
        "",
        "Written by `python -m benchmarks.tracing` (part of `make bench`); see its docstring for",
        "the method. The same proxy, configured by the standard OTEL_* variables only: off, on",
        "at 1 % (`OTEL_TRACES_SAMPLER_ARG=0.01`) and on at 100 %, every call starting its own",
        "trace; spans exported over OTLP/HTTP to a receiver in another process.",
        "",
        f"{meta['date']}, {meta['machine']['line']}; {meta['workers']} workers per proxy,",
        f"{meta['connections']} connections ({meta['load_tool']}), upstream {meta['upstream']};",
        f"medians of {meta['rounds']} rounds of {meta['duration_s']:g} s.",
        "",
        "| tracing | CPU µs per call | added | req/s | p99 ms | spans received per call |",
        "|---|---|---|---|---|---|",
    ]
    for label, f in summary.items():
        added = "—" if label == "off" else f"+{f['added_us_per_call']:.1f}"
        lines.append(
            f"| {label} | {f['cpu_us_per_call']:.1f} | {added} | {f['rps']:,.0f} "
            f"| {f['p99_ms']:.2f} | {f['spans_per_call']:.3f} |"
        )
    lines += [
        "",
        "A recorded call exports 2 spans (the call and its trip to Looker; the first calls a",
        "few more, for the pins); fewer than 2 at 100 % would mean that the SDK's queue",
        "(OTEL_BSP_MAX_QUEUE_SIZE, 2048 by default) was full and spans were dropped rather than",
        "calls slowed down. Off is the proxy without tracing: compare it with the plain GET of",
        "[benchmarks.md](benchmarks.md) for what the tracing code costs when off.",
        "",
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tracing", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="1 round of 1 s runs")
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per run (default 5; 1 with --quick)")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--workers", type=int, help="workers per proxy (default: cores)")
    p.add_argument("--out", help="results JSON ('' to skip)")
    p.add_argument("--docs", help="Markdown page ('' to skip; none with --quick)")
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx/wrk")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    if args.out is None:
        args.out = str(QUICK_OUT if args.quick else OUT)
    if args.docs is None:
        args.docs = "" if args.quick else str(DOCS)
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[tracing {time.monotonic() - started:6.1f}s] {message}", flush=True)

    results = run(args, say)
    for label, f in results["summary"].items():
        say(
            f"tracing {label:5} {f['cpu_us_per_call']:6.1f} us/call"
            f" ({f['added_us_per_call']:+.1f})  {f['spans_per_call']:.3f} spans/call"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        say(f"wrote {args.out}")
    if args.docs:
        Path(args.docs).write_text(markdown(results))
        say(f"wrote {args.docs}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

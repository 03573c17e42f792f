"""Medians, ratios, the issue's targets, and the Markdown page (docs/benchmarks.md) with its
charts (docs/charts/*.svg).

The page and the charts are drawn from a run's results alone, so they can be drawn again from the
saved JSON without measuring::

    python -m benchmarks.report --from benchmarks/results/latest.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import calltypes, teams
from benchmarks.calltypes import CALL_TYPES, PER_BYTE_LIMIT, SCENARIO_PREFIX, CallType

WP = "workspace-proxy"
VARIANTS = ("direct", "nginx", "naive", WP)

# scenario -> metrics summarised over rounds
METRICS: dict[str, tuple[str, ...]] = {
    "get_c1": ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "upstream_cores_busy", "errors"),
    "get_c64": ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "upstream_cores_busy", "errors"),
    "download": ("gb_per_s", "seconds", "rss_growth_mib", "rss_peak_mib", "cpu_ns_per_byte"),
    "burst": ("wall_s", "p50_s", "ok", "errors", "listen_overflows"),
    "cold_start": ("wall_s", "p50_s", "ok", "errors", "logins", "patches", "listen_overflows"),
}
CALL_METRICS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "cpu_us_per_req",
    "cpu_ns_per_byte",
    "upstream_cores_busy",
    "errors",
)
"""Metrics of every ``call_<key>`` scenario (one per call type)."""
GET_PREFIX = "get_c"
"""The small JSON GET at ``n`` connections is kept under ``get_c<n>`` (the sweep's too)."""
TEAM_METRICS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "cpu_us_per_req",
    "upstream_cores_busy",
    "errors",
    "rss_mib",
    "pin_s",
    "pin_failed",
    "teams_ok",
    "pin_attempts_max",
)
"""Metrics of every ``teams_<n>`` scenario (its variants: one team active, all active)."""


def metrics_of(scenario: str) -> tuple[str, ...]:
    if scenario in METRICS:
        return METRICS[scenario]
    if scenario.startswith(SCENARIO_PREFIX):
        return CALL_METRICS
    if scenario.startswith(GET_PREFIX):
        return METRICS["get_c64"]
    return TEAM_METRICS if scenario.startswith(teams.PREFIX) else ()


def counts_of(summary: Mapping[str, Any], prefix: str) -> list[int]:
    """The ``n`` of every ``<prefix><n>`` scenario measured, ascending (connections, teams)."""
    tails = (name.removeprefix(prefix) for name in summary if name.startswith(prefix))
    return sorted(int(t) for t in tails if t.isdigit())


Stat = dict[str, float]
Summary = dict[str, dict[str, dict[str, Stat]]]


def stat(values: Sequence[float]) -> Stat:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    med = statistics.median(vals)
    return {"median": med, "min": min(vals), "max": max(vals), "n": len(vals)}


def summarise(raw: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> Summary:
    out: Summary = {}
    for name, by_variant in raw.items():
        names = metrics_of(name)
        out[name] = {
            variant: {m: stat([r[m] for r in rounds if m in r]) for m in names}
            for variant, rounds in by_variant.items()
            if rounds
        }
    return out


def median(summary: Summary, scenario: str, variant: str, metric: str) -> float:
    try:
        return summary[scenario][variant][metric]["median"]
    except KeyError:
        return math.nan


def ratios(summary: Summary) -> dict[str, dict[str, dict[str, float]]]:
    """x direct and x nginx for throughput-like metrics (higher is better)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, metric in (("get_c1", "rps"), ("get_c64", "rps"), ("download", "gb_per_s")):
        out[scenario] = {}
        for variant in summary.get(scenario, {}):
            value = median(summary, scenario, variant, metric)
            out[scenario][variant] = {
                f"x_{ref}": value / median(summary, scenario, ref, metric)
                if median(summary, scenario, ref, metric)
                else math.nan
                for ref in ("direct", "nginx")
            }
    return out


def added_latency(summary: Summary) -> dict[str, dict[str, float]]:
    """Latency over ``direct`` at 1 connection (ms), p50 and p99."""
    out: dict[str, dict[str, float]] = {}
    for variant in summary.get("get_c1", {}):
        out[variant] = {
            q: median(summary, "get_c1", variant, f"{q}_ms")
            - median(summary, "get_c1", "direct", f"{q}_ms")
            for q in ("p50", "p99")
        }
    return out


def targets(summary: Summary, raw: Mapping[str, Any], cold_label: str) -> list[dict[str, Any]]:
    """The issue's targets for workspace-proxy, judged on medians over the rounds."""
    rows: list[dict[str, Any]] = []

    def row(name: str, target: str, measured: str, ok: bool | None) -> None:
        rows.append({"name": name, "target": target, "measured": measured, "pass": ok})

    wp64 = median(summary, "get_c64", WP, "rps")
    naive64 = median(summary, "get_c64", "naive", "rps")
    nginx64 = median(summary, "get_c64", "nginx", "rps")
    vs_naive, vs_nginx = (
        wp64 / naive64 if naive64 else math.nan,
        wp64 / nginx64 if nginx64 else math.nan,
    )
    row(
        "throughput",
        "req/s at 64 connections >= 2x naive and >= 0.2x nginx",
        f"{_num(wp64)} req/s = {_num(vs_naive, 2)}x naive, {_num(vs_nginx, 2)}x nginx",
        _judge(vs_naive >= 2.0 and vs_nginx >= 0.2, wp64, naive64, nginx64),
    )
    cpu = median(summary, "get_c64", WP, "cpu_us_per_req")
    row("cpu", "CPU per proxied request <= 60 us", f"{_num(cpu)} us", _judge(cpu <= 60, cpu))
    added = added_latency(summary).get(WP, {}).get("p50", math.nan)
    row(
        "latency",
        "latency added at 1 connection, p50 <= 0.25 ms over direct",
        f"{_signed(added)} ms",
        _judge(added <= 0.25, added),
    )
    gbps = median(summary, "download", WP, "gb_per_s")
    growth = median(summary, "download", WP, "rss_growth_mib")
    row(
        "download",
        "1 GiB download >= 1 GB/s with RSS growth < 32 MiB",
        f"{_num(gbps, 2)} GB/s, RSS +{_num(growth, 1)} MiB",
        _judge(gbps >= 1.0 and growth < 32, gbps, growth),
    )
    bursts = raw.get("burst", {}).get(WP, [])
    wall = median(summary, "burst", WP, "wall_s")
    failed = sum(b["errors"] for b in bursts)
    n = bursts[0]["requests"] if bursts else 0
    row(
        "concurrency",
        f"{n:,} concurrent 1 s requests all complete within 1.5 s",
        f"{_num(wall, 2)} s, {failed} failed (all rounds)",
        _judge(failed == 0 and wall <= 1.5, wall),
    )
    colds = raw.get("cold_start", {}).get(cold_label, [])
    n_cold = colds[0]["requests"] if colds else 0
    logins = sorted({c["logins"] for c in colds})
    patches = sorted({c["patches"] for c in colds})
    cold_failed = sum(c["errors"] for c in colds)
    row(
        "cold_start",
        f"cold start, {n_cold:,} concurrent requests: exactly one login and one PATCH",
        f"logins {logins}, PATCHes {patches}, {cold_failed} failed ({cold_label})",
        _judge(logins == [1] and patches == [1] and cold_failed == 0, len(colds) or math.nan),
    )
    return rows


def calltype_rows(
    summary: Summary,
    raw: Mapping[str, Any],
    failures: Mapping[str, Mapping[str, str]],
) -> list[dict[str, Any]]:
    """One row per call type measured (or tried): figures per variant, and issue 16's verdict
    for workspace-proxy (the main variant; A/B copies get figures, not verdicts)."""
    download = {
        v: median(summary, "download", v, "cpu_ns_per_byte") for v in summary.get("download", {})
    }
    rows: list[dict[str, Any]] = []
    for call in CALL_TYPES:
        name = calltypes.scenario(call)
        if name not in summary and name not in failures:
            continue
        figures: dict[str, dict[str, float]] = {}
        rounds = raw.get(name, {})
        for variant in summary.get(name, {}):
            ns = median(summary, name, variant, "cpu_ns_per_byte")
            ref = download.get(variant, math.nan)
            figures[variant] = {
                "rps": median(summary, name, variant, "rps"),
                "cpu_us_per_call": median(summary, name, variant, "cpu_us_per_req"),
                "cpu_ns_per_byte": ns,
                "x_download_per_byte": ns / ref if ref else math.nan,
                "errors": float(sum(r.get("errors", 0) for r in rounds.get(variant, []))),
            }
        nginx_rps, nginx_from = median(summary, name, "nginx", "rps"), "calltypes"
        if math.isnan(nginx_rps) and call.same_as_get:
            # nginx not measured with the call types (quick runs): the same GET at 64 connections
            nginx_rps, nginx_from = median(summary, "get_c64", "nginx", "rps"), "get_c64"
        failure = failures.get(name, {}).get(WP)
        rows.append(
            {
                "key": call.key,
                "label": call.label,
                "how": call.how,
                "before_us": call.before_us,
                **_call_verdict(call, figures.get(WP), failure, nginx_rps),
                "variants": figures,
                "not_measured": dict(failures.get(name, {})),
                "x_nginx_from": nginx_from if call.min_x_nginx is not None else None,
            }
        )
    return rows


def _call_verdict(
    call: CallType, wp: Mapping[str, float] | None, failure: str | None, nginx_rps: float
) -> dict[str, Any]:
    """Issue 16's verdict on one call type through workspace-proxy: ``target``, ``pass``,
    ``measured`` (a line for the console) and ``note`` (what the table's columns do not show)."""
    if call.target_us is not None:
        target = f"<= {call.target_us:g} µs/call"
        if call.min_x_nginx is not None:
            target += f", >= {call.min_x_nginx:g}x nginx req/s"
    elif call.per_byte_target:
        target = f"<= {PER_BYTE_LIMIT:g}x the download's CPU/byte"
    else:
        target = "—"
    judged = target != "—"
    if wp is None:
        why = f"not measured: {failure}" if failure else "not measured"
        return {"target": target, "pass": False if judged and failure else None,
                "measured": why, "note": why}  # fmt: skip
    cpu, errors = wp["cpu_us_per_call"], wp["errors"]
    measured, notes = [f"{_num(cpu)} µs/call"], []
    ok: bool | None = None
    if call.target_us is not None:
        ok = _judge(cpu <= call.target_us, cpu)
    if call.min_x_nginx is not None:
        x = wp["rps"] / nginx_rps if nginx_rps else math.nan
        versus = "nginx not measured" if math.isnan(x) else f"{_num(x, 2)}x nginx"
        measured.append(versus)
        notes.append(versus)
        ok = _both(ok, _judge(x >= call.min_x_nginx, x))
    if call.per_byte:
        ns, x = wp["cpu_ns_per_byte"], wp["x_download_per_byte"]
        measured.append(f"{_num(ns, 2)} ns/byte = {_num(x, 2)}x the download's")
        if call.per_byte_target:
            ok = _judge(x <= PER_BYTE_LIMIT, x)
    if errors:
        measured.append(f"{errors:,.0f} errors")
        notes.append(f"{errors:,.0f} errors")
        ok = False if judged else None
    return {"target": target, "pass": ok, "measured": ", ".join(measured),
            "note": ", ".join(notes)}  # fmt: skip


def _both(a: bool | None, b: bool | None) -> bool | None:
    """Both targets met: False when either is missed, None when one cannot be judged."""
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _judge(ok: bool, *measured: float) -> bool | None:
    if any(math.isnan(m) for m in measured):
        return None
    return ok


# --- Markdown --------------------------------------------------------------------------------


def _missing(value: float | None) -> bool:
    """NaN in memory, null once written as JSON: a figure that was not measured."""
    return value is None or math.isnan(value)


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def _spread(s: Stat | None) -> str:
    """``±x%``: half the min..max range relative to the median (blank for a single round)."""
    if not s or s["n"] < 2 or not s["median"] or math.isnan(s["median"]):
        return ""
    return f" ±{(s['max'] - s['min']) / 2 / abs(s['median']) * 100:.0f}%"


COUNTS = frozenset(
    {"ok", "errors", "logins", "patches", "listen_overflows", "pin_failed", "teams_ok"}
)


def _cell(summary: Summary, scenario: str, variant: str, metric: str, digits: int) -> str:
    s = summary.get(scenario, {}).get(variant, {}).get(metric)
    if s is None:
        return "—"
    if metric in COUNTS:  # counts: the range of rounds, not a percentage of a median near 0
        spread = f" ({s['min']:,.0f}..{s['max']:,.0f})" if s["min"] != s["max"] else ""
        return _num(s["median"], 0) + spread
    return _num(s["median"], digits) + _spread(s)


def _verdict(ok: bool | None) -> str:
    return {True: "**PASS**", False: "**FAIL**", None: "n/a"}[ok]


def markdown(results: Mapping[str, Any], charts: Mapping[str, str] | None = None) -> str:
    """The page; ``charts``: chart key -> its path relative to the page (shown at the top)."""
    meta = results["meta"]
    summary: Summary = results["summary"]
    rat = results["ratios"]
    added = results["added_latency"]
    variants = _order(summary.get("get_c64", {}) or summary.get("get_c1", {}))
    tools = meta["tools"]
    lines = [
        "# Benchmarks",
        "",
        "_Generated by `python -m benchmarks.run"
        + (" --quick" if meta["quick"] else "")
        + "` — do not edit by hand; rerun `make bench` (several minutes) to refresh it"
        " (`make bench-quick` prints figures in about a minute and never rewrites this page)."
        " Raw figures: `benchmarks/results/latest.json`._",
        "",
        f"- **Date:** {meta['date']}",
        f"- **Machine:** {meta['machine']['line']}",
        f"- **Tools:** nginx {_ver(tools.get('nginx'))}; wrk {_ver(tools.get('wrk'))};"
        f" curl {_ver(tools.get('curl'))}; Python {tools.get('python')};"
        f" aiohttp {tools.get('aiohttp')}; uvloop {tools.get('uvloop') or 'not installed'}",
        f"- **Rounds:** {meta['rounds']} (figures are medians; ±x% is half the min-max range),"
        f" {meta['duration_s']:g} s per closed-loop run, load from {meta['load_tool']}",
        "- **Workers:** "
        + ", ".join(f"{k} {v}" for k, v in meta["workers"].items())
        + " (the machine's cores, one process per worker)",
        f"- **Load average** before/after the run: {meta.get('loadavg_before')} /"
        f" {meta.get('loadavg_after')} (other work on the machine makes figures noisier)",
        "",
    ]
    lines += [f"> {note}" for note in meta.get("notes", [])]
    if meta.get("notes"):
        lines.append("")
    lines += _glance_section(results, charts or {})
    lines += [
        "## Targets (issue 7)",
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
    ]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {_verdict(t['pass'])} |")
    lines += [
        "",
        "## Small JSON GET (`GET /api/4.0/user`, 579-byte answer)",
        "",
        "`direct` is the client talking to the upstream itself: what any proxy costs is the"
        " distance from that row. CPU is the process tree's own user+system time from"
        " `/proc/<pid>/stat` (all workers and the supervisor) divided by the requests served;"
        " for `direct` it is the upstream's. *Upstream busy* is the upstream's CPU time per"
        " wall-clock second (cores): well below 1 per worker means it was not the bottleneck.",
        "",
        "| Variant | req/s @1 | p50 @1 (ms) | p99 @1 (ms) | added p50 @1 (ms) | req/s @64 |"
        " p50 @64 (ms) | p99 @64 (ms) | CPU µs/req @64 | x direct @64 | x nginx @64 |"
        " upstream busy @64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        r64 = rat.get("get_c64", {}).get(v, {})
        lines.append(
            f"| {v} | {_cell(summary, 'get_c1', v, 'rps', 0)}"
            f" | {_cell(summary, 'get_c1', v, 'p50_ms', 3)}"
            f" | {_cell(summary, 'get_c1', v, 'p99_ms', 3)}"
            f" | {_signed(added.get(v, {}).get('p50', math.nan))}"
            f" | {_cell(summary, 'get_c64', v, 'rps', 0)}"
            f" | {_cell(summary, 'get_c64', v, 'p50_ms', 3)}"
            f" | {_cell(summary, 'get_c64', v, 'p99_ms', 3)}"
            f" | {_cell(summary, 'get_c64', v, 'cpu_us_per_req', 0)}"
            f" | {_num(r64.get('x_direct', math.nan), 3)}"
            f" | {_num(r64.get('x_nginx', math.nan), 3)}"
            f" | {_cell(summary, 'get_c64', v, 'upstream_cores_busy', 2)} |"
        )
    headline = _headline(summary)
    if headline:
        lines += ["", headline]
    lines += _connections_section(results)
    lines += _calltype_section(results)
    lines += [
        "",
        "## 1 GiB CSV download (`GET /api/4.0/queries/1/run/csv`)",
        "",
        "One request through each variant, body discarded by curl. RSS growth is the peak of the"
        " summed RSS of the variant's processes, sampled every 5 ms from `/proc`, minus the RSS"
        " just before the request.",
        "",
        "| Variant | GB/s | seconds | x direct | x nginx | RSS growth (MiB) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in _order(summary.get("download", {})):
        rd = rat.get("download", {}).get(v, {})
        lines.append(
            f"| {v} | {_cell(summary, 'download', v, 'gb_per_s', 2)}"
            f" | {_cell(summary, 'download', v, 'seconds', 2)}"
            f" | {_num(rd.get('x_direct', math.nan), 2)} | {_num(rd.get('x_nginx', math.nan), 2)}"
            f" | {_cell(summary, 'download', v, 'rss_growth_mib', 1)}"
            f" | {_cell(summary, 'download', v, 'rss_peak_mib', 1)} |"
        )
    n_burst = meta["burst_requests"]
    lines += [
        "",
        f"## {n_burst:,} concurrent requests that each take 1 s upstream",
        "",
        f"{n_burst:,} requests started at once from aiohttp clients (connector limit 0, one"
        " connection each, split over one client process per core that start together); the"
        " upstream answers after sleeping 1 s. Wall time is until the last answer: anything"
        " that queues behind a pool or a listen backlog shows up as whole extra seconds."
        " *Listen overflows* is the machine's TcpExt ListenOverflows counter over the burst:"
        " each is a SYN dropped by a full accept queue, which the client retries after 1 s.",
        "",
        "| Variant | wall (s) | median completion (s) | 200 OK | failed | listen overflows |",
        "|---|---|---|---|---|---|",
    ]
    for v in _order(summary.get("burst", {})):
        lines.append(
            f"| {v} | {_cell(summary, 'burst', v, 'wall_s', 2)}"
            f" | {_cell(summary, 'burst', v, 'p50_s', 2)}"
            f" | {_cell(summary, 'burst', v, 'ok', 0)}"
            f" | {_cell(summary, 'burst', v, 'errors', 0)}"
            f" | {_cell(summary, 'burst', v, 'listen_overflows', 0)} |"
        )
    n_cold = meta["cold_requests"]
    lines += [
        "",
        f"## Cold start: {n_cold:,} concurrent first requests against a fresh workspace-proxy",
        "",
        "Upstream is the bundled Looker emulator; logins and PATCHes are counted from its"
        " `GET /_emulator/stats` (from before the proxy started until after the burst).",
        "",
        "| Proxy | wall (s) | median completion (s) | 200 OK | failed | Looker logins |"
        " PATCH /session | listen overflows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in summary.get("cold_start", {}):
        lines.append(
            f"| {WP} {label} | {_cell(summary, 'cold_start', label, 'wall_s', 2)}"
            f" | {_cell(summary, 'cold_start', label, 'p50_s', 2)}"
            f" | {_cell(summary, 'cold_start', label, 'ok', 0)}"
            f" | {_cell(summary, 'cold_start', label, 'errors', 0)}"
            f" | {_cell(summary, 'cold_start', label, 'logins', 0)}"
            f" | {_cell(summary, 'cold_start', label, 'patches', 0)}"
            f" | {_cell(summary, 'cold_start', label, 'listen_overflows', 0)} |"
        )
    lines += _teams_section(results)
    lines += ["", "## Where the time goes", "", *COSTS]
    lines += ["", "## Setup", "", *SETUP, "", "## Running it", "", *RUNNING, ""]
    return "\n".join(lines)


def _calltype_section(results: Mapping[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = results.get("calltypes", [])
    if not rows:
        return []
    meta, summary = results["meta"], results["summary"]
    wp_workers = meta.get("workers", {}).get(WP, "?")
    ref_ns = median(summary, "download", WP, "cpu_ns_per_byte")
    refs = [v for v in ("nginx", "direct") if any(v in r["variants"] for r in rows)]
    extra = _order({v for r in rows for v in r["variants"] if v.startswith(WP) and v != WP})
    rounds = meta["rounds"]
    lines = [
        "",
        "## CPU per call type (issue 16)",
        "",
        f"_Machine: {meta['machine']['line']}; {rounds} round{'s' if rounds != 1 else ''} of"
        f" {meta.get('call_duration_s', meta['duration_s']):g} s per call type and variant,"
        f" 64 connections, load from {meta['load_tool']}; workspace-proxy {wp_workers}"
        f" workers; {meta['date']}._",
        "",
        "Each call type is one fixed HTTP/1.1 request, head and body, built in"
        " `benchmarks/calltypes.py` and replayed by wrk on all 64 keep-alive connections"
        " (a generated Lua script returns it as wrk's request, so a chunked body or a UTF-8"
        " header value goes out exactly as written); before it is measured, each type is sent"
        " on a few fresh connections and must get a 200 with an answer of the expected size"
        " (which also pins the passthrough and sudo sessions in every worker). *CPU µs/call* is"
        " the process"
        " tree's user+system time over the run divided by the requests served, as above."
        " Large bodies are judged per byte: the same CPU divided by the body bytes the calls"
        " moved (ns/byte, which is also CPU-seconds per GB), against the 1 GiB download's CPU"
        f" per byte through the same variant in this run ({_num(ref_ns, 2)} ns/byte for"
        " workspace-proxy); per-call overhead is included. *before (issue 16)* is what the"
        " issue measured for the previous design, where a front forwarded plain calls and relayed"
        " everything else to a second HTTP server, the aiohttp app (the relayed calls, passthrough,"
        " sudo, `HEAD` and chunked ones included, cost about what the non-ASCII header did). The"
        " upstream"
        " reads every uploaded body completely before it answers.",
        "",
        "| Call type | req/s @64 | CPU µs/call | CPU ns/byte (x download) | before (issue 16)"
        " | target | result |"
        + "".join(f" {v}: req/s, µs/call |" for v in refs)
        + "".join(f" {v}: req/s, µs/call |" for v in extra),
        "|---|---|---|---|---|---|---|" + "---|" * (len(refs) + len(extra)),
    ]
    for row in rows:
        wp = row["variants"].get(WP)
        failed = row["not_measured"].get(WP)
        if wp is None:
            cells = [f"not measured: {_md(failed or 'no result')}", "—", "—"]
        else:
            cells = [
                _num(wp["rps"]) + _errors(wp),
                _num(wp["cpu_us_per_call"]),
                (
                    f"{_num(wp['cpu_ns_per_byte'], 2)} ({_num(wp['x_download_per_byte'], 2)}x)"
                    if not _missing(wp["cpu_ns_per_byte"])
                    else "—"
                ),
            ]
        before = f"{row['before_us']:g} µs" if row["before_us"] is not None else "—"
        verdict = _verdict(row["pass"]) if row["target"] != "—" else "—"
        if row["note"] and wp is not None:
            verdict += f" ({_md(row['note'])})"
        line = f"| {row['label']} | " + " | ".join(cells)
        line += f" | {before} | {row['target']} | {verdict} |"
        for v in [*refs, *extra]:
            got = row["variants"].get(v)
            if got is None:
                why = row["not_measured"].get(v)
                line += f" {'not measured: ' + _md(why) if why else '—'} |"
            else:
                line += f" {_num(got['rps'])}, {_num(got['cpu_us_per_call'])}{_errors(got)} |"
        lines.append(line)
    per_byte = [
        f"{v} {_num(median(summary, 'download', v, 'cpu_ns_per_byte'), 2)}"
        for v in _order(summary.get("download", {}))
    ]
    if per_byte:
        lines += ["", "CPU per byte of the 1 GiB download in this run (ns/byte): "
                  + ", ".join(per_byte) + "."]  # fmt: skip
    plain = next((r for r in rows if r["x_nginx_from"]), None)
    if plain and plain["x_nginx_from"] == "get_c64":
        lines += [
            "",
            "nginx was not measured with the call types in this run: the plain GET's x nginx"
            " is against nginx's `GET /api/4.0/user` at 64 connections in the table above.",
        ]
    lines += ["", "How each call type is sent:", ""]
    lines += [f"- **{r['label']}**: {r['how']}." for r in rows]
    return lines


def _connections_section(results: Mapping[str, Any]) -> list[str]:
    summary: Summary = results["summary"]
    points = counts_of(summary, GET_PREFIX)
    if not set(points) - {1, 64}:
        return []
    variants = _order({v for c in points for v in summary[f"{GET_PREFIX}{c}"]})
    lines = [
        "",
        "### The same GET against connections",
        "",
        "Each cell: req/s, then CPU µs per call (as above), at that many keep-alive connections. "
        + _rounds_text(results)
        + ".",
        "",
        "| Variant | " + " | ".join(f"{c} conn{'s' if c > 1 else ''}" for c in points) + " |",
        "|---|" + "---|" * len(points),
    ]
    for v in variants:
        cells = []
        for c in points:
            name = f"{GET_PREFIX}{c}"
            if v not in summary[name]:
                cells.append("—")
                continue
            rps = median(summary, name, v, "rps")
            cpu = median(summary, name, v, "cpu_us_per_req")
            cells.append(f"{_num(rps)} / {_num(cpu)} µs")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def _rounds_text(results: Mapping[str, Any]) -> str:
    """Which connection counts were measured how: e.g. ``1 and 64 connections: medians of 3
    rounds of 5 s; 4, 16 and 256: 1 round of 2 s``."""
    summary: Summary = results["summary"]
    raw: Mapping[str, Any] = results.get("raw", {})
    groups: dict[tuple[int, int], list[int]] = {}
    for c in counts_of(summary, GET_PREFIX):
        name = f"{GET_PREFIX}{c}"
        rounds = max((len(r) for r in raw.get(name, {}).values()), default=0)
        runs = [run for r in raw.get(name, {}).values() for run in r]
        seconds = round(statistics.median(run["duration_s"] for run in runs)) if runs else 0
        groups.setdefault((rounds, seconds), []).append(c)
    parts = []
    for (rounds, seconds), counts in groups.items():
        what = f"medians of {rounds} rounds" if rounds > 1 else f"{rounds} round"
        parts.append(f"{_and(counts)} connections: {what} of {seconds} s")
    return "; ".join(parts)


def _and(items: Sequence[object]) -> str:
    words = [f"{i:,}" if isinstance(i, int) else str(i) for i in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _teams_section(results: Mapping[str, Any]) -> list[str]:
    summary: Summary = results["summary"]
    counts = counts_of(summary, teams.PREFIX)
    if not counts:
        return []
    meta = results["meta"]
    raw: Mapping[str, Any] = results.get("raw", {})
    one, every = teams.ONE, teams.ALL
    lines = [
        "",
        "## Cost against the number of teams configured",
        "",
        f"_{_machine(meta)}; workspace-proxy {meta.get('workers', {}).get(WP, '?')} workers,"
        f" {teams.CONNECTIONS} connections, `GET /api/4.0/user`,"
        f" {meta.get('sweep_rounds', 1)} round of {meta.get('sweep_duration_s', '?')} s per"
        " load and count._",
        "",
        "For each count, workspace-proxy is started with that many managed teams (each its own"
        " Looker API user and one caller, all in `dev`; `benchmarks/teams.py`), the generated"
        " config checked by `workspace-proxy check-config` first. *One team active*: every"
        " connection sends team 1's caller token; the other teams have never been called and"
        " hold no session. Then every team gets one first call, all at once: the proxy logs in"
        " and pins each team (single-flight per team), and `/readyz` must show every team `ok`"
        " after one attempt. *All teams active*: every connection takes the teams' caller"
        " tokens in turn (a wrk Lua script; the one-team load runs through the same script with"
        " a list of one). RSS is the sum over the proxy's processes (supervisor and workers)"
        " after each load.",
        "",
        "| Teams configured | check-config | one active: req/s | µs/call | all active: req/s"
        " | µs/call | RSS one / all (MiB) | pin every team (s) | pins failed | teams ok"
        " | pin attempts per team (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        name = teams.scenario(n)
        runs = raw.get(name, {}).get(every, [])
        check = runs[0].get("check_config", "—") if runs else "—"
        lines.append(
            f"| {n:,} | {check}"
            f" | {_cell(summary, name, one, 'rps', 0)}"
            f" | {_cell(summary, name, one, 'cpu_us_per_req', 0)}"
            f" | {_cell(summary, name, every, 'rps', 0)}"
            f" | {_cell(summary, name, every, 'cpu_us_per_req', 0)}"
            f" | {_num(median(summary, name, one, 'rss_mib'))}"
            f" / {_num(median(summary, name, every, 'rss_mib'))}"
            f" | {_cell(summary, name, every, 'pin_s', 3)}"
            f" | {_cell(summary, name, every, 'pin_failed', 0)}"
            f" | {_cell(summary, name, every, 'teams_ok', 0)}"
            f" | {_cell(summary, name, every, 'pin_attempts_max', 0)} |"
        )
    return lines


def _machine(meta: Mapping[str, Any]) -> str:
    return f"Machine: {meta['machine']['line']}; {meta['date']}"


# --- charts ----------------------------------------------------------------------------------

CHARTS: dict[str, str] = {
    "connections": "req/s and CPU per call against connections, per variant",
    "calltypes": "CPU per call type through workspace-proxy, before and after issue 16",
    "download": "1 GiB download: GB/s, CPU per byte and RSS growth per variant",
    "teams": "workspace-proxy's CPU per call, req/s, RSS and pin time against teams configured",
}
"""Chart key (``docs/charts/<key>.svg``) -> its alt text, in the order shown."""


def can_draw() -> bool:
    """matplotlib is installed (the ``bench`` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def _captions(results: Mapping[str, Any]) -> dict[str, str]:
    meta = results["meta"]
    workers = ", ".join(f"{k} {v}" for k, v in meta.get("workers", {}).items())
    call_s = meta.get("call_duration_s", meta["duration_s"])
    rounds = meta["rounds"]
    per = f"{meta.get('sweep_rounds', 1)} round of {meta.get('sweep_duration_s', '?')} s"
    return {
        "connections": "**Throughput and CPU per call against connections**"
        " (`GET /api/4.0/user`, 579-byte answer; req/s on a log scale; `direct`'s CPU is the"
        f" upstream's own). {_rounds_text(results)}; bars: min-max. Workers: {workers}.",
        "calltypes": "**CPU per call type** at 64 connections through workspace-proxy"
        f" ({rounds} rounds of {call_s:g} s; bars: min-max), beside what issue 16 measured for"
        " the previous design (a front that relayed every call but plain ones to the aiohttp"
        " app; the issue gives figures for the plain GET, the 1 KiB POST and the non-ASCII"
        " header) and nginx making the same call (it has no passthrough or sudo tokens)."
        " Dashed: the 60 µs target (40 µs for the plain GET).",
        "download": "**1 GiB CSV download**, one request through each variant: throughput"
        " (dashed: the 1 GB/s target), CPU per byte of the variant's processes (`direct`: the"
        " upstream's) and RSS growth during the download (dashed: the 32 MiB limit); medians"
        f" of {rounds} rounds, bars: min-max.",
        "teams": "**workspace-proxy against the number of teams configured**"
        f" ({meta.get('workers', {}).get(WP, '?')} workers, {teams.CONNECTIONS} connections,"
        f" {per} per load): CPU per call and req/s with one team active and with every team"
        " active (the connections take the teams' tokens in turn), the RSS of the proxy's"
        " processes, and the wall time to pin every team at once (one login and PATCH each).",
    }


def _glance_section(results: Mapping[str, Any], charts: Mapping[str, str]) -> list[str]:
    if not charts:
        return []
    captions = _captions(results)
    lines = [
        "## At a glance",
        "",
        "Drawn from the same run's figures as the tables below (`benchmarks/charts.py`,"
        " matplotlib); each chart's caption says how its figures were measured. Every chart"
        " gives each variant the same colour: direct grey, nginx green, naive orange,"
        " workspace-proxy blue.",
        "",
    ]
    for key, alt in CHARTS.items():
        if key in charts:
            lines += [
                f"![{alt}]({charts[key]})",
                "",
                f"{captions[key]} _{_machine(results['meta'])}._",
                "",
            ]
    return lines


def publish(results: Mapping[str, Any], docs: Path | None, charts_dir: Path | None) -> list[Path]:
    """Draw the charts into ``charts_dir`` and write the page to ``docs`` (either may be None);
    the files written."""
    written: list[Path] = []
    links: dict[str, str] = {}
    if charts_dir is not None:
        from benchmarks.charts import draw  # matplotlib: the bench extra, needed only here

        drawn = draw(results, charts_dir)
        written += drawn.values()
        if docs is not None:
            links = {
                key: Path(os.path.relpath(path, docs.parent)).as_posix()
                for key, path in drawn.items()
            }
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(markdown(results, links))
        written.append(docs)
    return written


def load(path: Path) -> dict[str, Any]:
    """Results saved by ``benchmarks.run`` (a missing figure, null in the file, becomes NaN)."""
    results: dict[str, Any] = json.loads(path.read_text())
    for by_variant in results.get("summary", {}).values():
        for metrics in by_variant.values():
            for s in metrics.values():
                s.update({k: math.nan for k, v in s.items() if v is None})
    tables = [f for by_variant in results.get("ratios", {}).values() for f in by_variant.values()]
    tables += results.get("added_latency", {}).values()
    tables += [f for row in results.get("calltypes", []) for f in row["variants"].values()]
    for figures in tables:
        figures.update({k: math.nan for k, v in figures.items() if v is None})
    return results


ROOT = Path(__file__).resolve().parents[1]
LATEST = ROOT / "benchmarks" / "results" / "latest.json"
DOCS = ROOT / "docs" / "benchmarks.md"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Write docs/benchmarks.md and its charts again from a run's saved results,"
        " without measuring.",
    )
    p.add_argument("--from", dest="source", default=str(LATEST), help="results JSON (latest.json)")
    p.add_argument("--docs", help="Markdown page ('' to skip; default docs/benchmarks.md)")
    p.add_argument("--charts", help="folder for the SVG charts ('' to skip; default beside --docs)")
    args = p.parse_args(argv)
    results = load(Path(args.source))
    if args.docs is None:
        if results["meta"].get("quick"):
            p.error("a quick run never replaces the published page: pass --docs (and --charts)")
        args.docs = str(DOCS)
    if args.charts is None:
        args.charts = str(Path(args.docs).parent / "charts") if args.docs else ""
    if args.charts and not can_draw():
        p.error("matplotlib is needed for the charts: pip install -e '.[bench]' (or --charts '')")
    docs = Path(args.docs) if args.docs else None
    for path in publish(results, docs, Path(args.charts) if args.charts else None):
        print(f"wrote {path}")
    return 0


def _errors(figures: Mapping[str, float]) -> str:
    n = figures.get("errors", 0)
    return f" ({n:,.0f} errors)" if n else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _headline(summary: Summary) -> str:
    """How far ``direct`` is ahead of the fastest proxy: the upstream is not what is measured."""
    direct = median(summary, "get_c64", "direct", "rps")
    proxies = {
        v: median(summary, "get_c64", v, "rps") for v in summary.get("get_c64", {}) if v != "direct"
    }
    proxies = {v: r for v, r in proxies.items() if not math.isnan(r) and r > 0}
    if math.isnan(direct) or not proxies:
        return ""
    fastest = max(proxies, key=lambda v: proxies[v])
    python = {v: r for v, r in proxies.items() if v != "nginx"}
    text = (
        f"At 64 connections `direct` serves {direct:,.0f} req/s: {direct / proxies[fastest]:.1f}x"
        f" the fastest proxy ({fastest})"
    )
    if python:
        best = max(python, key=lambda v: python[v])
        text += f" and {direct / python[best]:.0f}x the fastest Python proxy ({best})"
    return text + "."


def _order(names: Iterable[str]) -> list[str]:
    """The four standard variants first, then experiments in the order they ran."""
    names = list(names)
    return [v for v in VARIANTS if v in names] + [v for v in names if v not in VARIANTS]


def _signed(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.3f}"


def _ver(text: str | None) -> str:
    return text or "not available"


COSTS = [
    "Where the CPU goes, measured on this machine while building (py-spy on one worker, and "
    "quick runs of single changes, 2 workers, 64 connections). With aiohttp as both server and "
    "client a proxied call cost about 214 us: an aiohttp server answering by itself costs about "
    "35 us per request and aiohttp's client-and-streaming leg about 110 us, before any of the "
    "proxy's own work. Issue 7 put llhttp (httptools) and raw asyncio protocols under the plain "
    "calls (a 'front' that forwarded them itself and relayed everything else to the aiohttp "
    "app): 214 -> 80 -> 73 (uvloop) -> 64 (access lines in 100 ms batches, one timeout sweeper "
    "per listener) -> 60 (each header classified once) -> 53 (request metrics counted in a dict "
    "and exported once a second). Calls the front relayed still cost about 205 us.",
    "",
    "Issue 16 replaced the two paths with one (`decide` -> `flow` -> `exchange`/`leg` over "
    "`http1` and `server`): every call type now takes what used to be the plain calls' path. "
    "Its first cut cost 425k instructions per plain GET against 303k for the front (valgrind, "
    "one connection); the steps back, in instructions per call: 425k -> 372k (no `getpid` per "
    "request, checked targets and Looker heads cached, response headers filtered once) -> 365k "
    "(no reference cycle per request: the collector had 13 objects a call to find) -> 324k (the "
    "access line built from cached JSON pieces instead of one `json.dumps` of the whole line) -> "
    "300k (X-Forwarded-* lines and the session's Authorization line made once per connection and "
    "session). Then, at 64 connections in the same run as the previous design (60 us): 52 us "
    "(the decision for a forward remembered per configuration, re-checking the caller's token on "
    "every use) -> 48 us (upstream latencies counted per bucket and exported once a second). "
    "Later, in A/B runs against the code just before (5 interleaved rounds): 4-6 us less per "
    "call once the states of connections, requests and exchanges were compared against their "
    "enum members bound as module names (on Python 3.11 each `Enum.MEMBER` is looked up through "
    "the metaclass, about 70 ns, and a call made some 35 of them). Between runs the absolute "
    "figures move by about 5 us on this machine (the same code measured 48 and 57 us in two "
    "runs): compare figures within one run.",
    "",
    "What is left (perf on one worker): about 40 % kernel, mostly the four socket syscalls per "
    "call (read the caller, write Looker, read Looker, write the caller; each write wakes its "
    "peer) plus epoll, which nginx pays too; about 5 % llhttp; about half the Python "
    "interpreter, spread thin over some 60 functions a call (parsing callbacks, one per header "
    "both ways, the remembered decision and the token's re-check, the forwarding flow, the "
    "leg, the access line and the metrics; the record and its access line, the largest, about "
    "10 %). No single step is worth more than a few us: the 40 us target needs fewer layers "
    "per call, not another micro-optimisation.",
    "",
    "The 1 GiB download: once the head of an answer of known length is through, the rest is "
    "passed on without the parser, and the Looker socket wakes only when 128 KiB are waiting "
    "(`SO_RCVLOWAT`). Before that, some downloads on this busy 2-core machine ran at 0.8 GB/s "
    "with 1.3 s of CPU per GiB (many small reads); twelve download-only runs afterwards gave "
    "1.34-1.71 GB/s at about 0.55 s per GiB. The 2,000-request burst opens one Looker "
    "connection per request: Looker's address is looked up once per 10 s and connect timeouts "
    "are checked by the sweeper rather than by a timer per connection.",
]

SETUP = [
    "Everything runs on one machine over loopback (127.0.0.1), on free ports, and is stopped"
    " at the end of the run.",
    "",
    "- **Upstream** (the stand-in for Looker): nginx (1 worker, access log off) serving fixed"
    " Looker-shaped answers — the user JSON and a 1 MiB JSON answer as static files,"
    " `POST /api/4.0/login`, sudo's `POST /api/4.0/login/{id}` (each login a token of its own,"
    ' from `$request_id`) and `PATCH /api/4.0/session` (answering `"workspace_id": "dev"`)'
    " from `return 200` blocks, `HEAD /api/4.0/user` with `Content-Length: 0` (wrk cannot"
    " parse a HEAD answer that announces a body), `POST /api/4.0/queries` answered only after"
    " the whole body was read (the proxy module reads it into memory, then asks a second"
    " server block for the answer without it; `return` alone would answer before the body and"
    " discard it afterwards), the CSV as a 1 GiB sparse file via sendfile — and, for the 1 s"
    " path only, proxying to a bare-asyncio server that sleeps 1 s"
    " (`benchmarks/fixed_upstream.py`).",
    "- **direct**: the client talks to the upstream itself.",
    "- **nginx**: nginx as a reverse proxy, `worker_processes` = cores, upstream keep-alive"
    " (`keepalive 256`, HTTP/1.1), access log on (buffered), no temp files, request bodies"
    " streamed (`proxy_request_buffering off`, up to 64 MiB) as workspace-proxy streams them.",
    "- **naive**: `benchmarks/naive_proxy.py`, a plain ~50-line aiohttp forwarding proxy (hop-by-"
    "hop headers dropped, bodies streamed in 64 KiB chunks, unlimited client pool, no logging),"
    " one process per core on one port with `reuse_port=True`.",
    "- **workspace-proxy**: `python -m workspace_proxy serve -c <generated yaml> --workers"
    " <cores>` with a real config: one team pinned to `dev`, one caller whose proxy token is"
    " checked on every request, access log at `info` to a file, Prometheus metrics on."
    " `max_connections` and `max_concurrency` are raised to 4096 (defaults 1000 and 256) so"
    " the burst measures the proxy, not a configured cap. Two more teams serve the call types"
    " (sessions are pinned on first use, so no other scenario touches them): `bench-sudo`"
    " (managed, `allow_sudo: true`, its own caller) and `bench-passthrough` (`mode:"
    " passthrough`, one Looker client id).",
    "- **Load**: `wrk` (threads = min(cores, connections), a Lua `done()` reports exact"
    " percentiles; `-H Authorization: token …`; for the call types a generated script that"
    " returns one fixed request, head and body), or a multi-process Python client when wrk"
    " is missing. Load generator, proxy and upstream share the same cores, as they would on"
    " a sidecar host; absolute numbers are for this machine only, the ratios travel better.",
    "- **Order**: variants are interleaved and rotated every round, so drift hits them alike.",
]

RUNNING = [
    "```sh",
    "make bench-quick     # 1 round of short runs, call types through workspace-proxy only,"
    " shrunk sweeps (results/quick.json and results/quick-charts/ only)",
    "make bench           # 3 rounds of 5 s runs (3 s per call type; the sweeps 1 round of 2 s"
    " per point), several minutes; rewrites this page and docs/charts/",
    "make bench-report    # this page and its charts again from results/latest.json, without"
    " measuring",
    "python -m benchmarks.run --help",
    "```",
    "",
    "The charts are drawn by `benchmarks/charts.py` with matplotlib, the `bench` extra"
    " (`pip install -e '.[bench]'`; `make bench` and `make bench-quick` install it, `make test`"
    " does not). `python -m benchmarks.report --from FILE [--docs PAGE] [--charts DIR]` writes"
    " the page and charts from any saved results; a quick run's results never replace the"
    " published page unless `--docs` names it.",
    "",
    "nginx and wrk are installed with `apt-get` when missing (as root); without nginx the"
    " upstream is the asyncio fixed-answer server and the nginx variant is left out, without"
    " wrk a multi-process Python client generates the load; the page says which.",
    "",
    "A/B experiments: `--wp-variant LABEL=PYTHONPATH` (repeatable) adds a copy of the package"
    " as one more variant, interleaved with the others, e.g."
    " `python -m benchmarks.run --variants direct,workspace-proxy --scenarios get1,get64"
    " --rounds 5 --wp-variant fast=/tmp/wp-exp --out '' --docs ''`. `--wp-pythonpath DIR` runs"
    " the main workspace-proxy variant from a copy.",
    "",
    "Call types alone: `python -m benchmarks.run --variants direct,nginx,workspace-proxy"
    " --scenarios calltypes,download --out '' --docs ''` (the download gives the per-byte"
    " reference); `--call-types plain_get,post_1k` narrows them, `--call-references ''` leaves"
    " out direct and nginx, `--call-duration` sets the seconds per run.",
    "",
    "Sweeps alone: `python -m benchmarks.run --scenarios sweep,teams --connections 4,16,256"
    " --teams 1,10 --sweep-duration 2 --out '' --docs ''` (`--sweep-rounds` runs them in more"
    " rounds; connection counts that `get1` and `get64` measure in the same run are taken from"
    " them).",
]


if __name__ == "__main__":
    sys.exit(main())

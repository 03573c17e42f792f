"""The page's charts: SVG files drawn with matplotlib from a run's results.

Imported only to draw (matplotlib is the ``bench`` extra; ``make test`` does not install it).
Each chart reads the results the tables read (``results/latest.json``), so
``python -m benchmarks.report --from`` draws them again without measuring. Every variant has one
colour and one marker in every chart; medians are drawn, with error bars from the min to the max
of the rounds when there were several. The SVGs carry no date and fixed element ids: the same
figures draw the same file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from benchmarks import calltypes, teams
from benchmarks.report import GET_PREFIX, VARIANTS, WP, counts_of

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # only for type checkers (newer matplotlib)

COLOURS = {"direct": "#7f7f7f", "nginx": "#009e73", "naive": "#e69f00", WP: "#0072b2"}
"""Okabe-Ito colours (readable with colour-blindness): one per variant, in every chart."""
EXTRA_COLOURS = ("#cc79a7", "#56b4e9", "#000000", "#f0e442")
"""For A/B copies of workspace-proxy (``--wp-variant``), in the order they ran."""
MARKERS = {"direct": "s", "nginx": "^", "naive": "v", WP: "o"}
TARGET = "#d55e00"
"""Targets and limits: dashed lines in one colour no variant uses."""
BEFORE = "#a6c8e0"
"""workspace-proxy before issue 16: a pale tint of its blue, hatched."""
INK, MUTED = "#222222", "#666666"

STYLE: dict[RcKeyType, Any] = {
    "svg.hashsalt": "workspace-proxy-benchmarks",  # fixed element ids: stable diffs
    "svg.fonttype": "path",  # text as outlines: the same picture without the font installed
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelcolor": INK,
    "axes.edgecolor": "#999999",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "xtick.color": INK,
    "ytick.color": INK,
    "legend.frameon": False,
    "figure.facecolor": "white",
}

Results = Mapping[str, Any]
Stat = tuple[float, float, float]
"""(median, min, max) of one metric over the rounds."""


def draw(results: Results, out_dir: Path) -> dict[str, Path]:
    """Every chart the results have figures for, as ``out_dir/<key>.svg``: key -> path. A chart
    without figures is not drawn, and an older file of its name is removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with mpl.rc_context(STYLE):
        for key, chart in CHARTS.items():
            path = out_dir / f"{key}.svg"
            fig = chart(results)
            if fig is None:
                path.unlink(missing_ok=True)
                continue
            _footer(fig, results["meta"])
            # The figure's own size (no "tight" bounding box: that would move legends placed
            # relative to the figure's edge on top of the footer).
            fig.savefig(path, format="svg", metadata={"Date": None})
            written[key] = path
    return written


# --- figures out of the results --------------------------------------------------------------


def _stat(results: Results, scenario: str, variant: str, metric: str) -> Stat | None:
    s = results["summary"].get(scenario, {}).get(variant, {}).get(metric)
    if not s or _missing(s.get("median")):
        return None
    return float(s["median"]), float(s["min"]), float(s["max"])


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _variants(names: Sequence[str] | set[str]) -> list[str]:
    names = list(names)
    return [v for v in VARIANTS if v in names] + sorted(v for v in names if v not in VARIANTS)


def _colour(variant: str, extras: Sequence[str]) -> str:
    if variant in COLOURS:
        return COLOURS[variant]
    return EXTRA_COLOURS[list(extras).index(variant) % len(EXTRA_COLOURS)]


def _errors(stats: Sequence[Stat]) -> list[list[float]]:
    """matplotlib's asymmetric error bars, min and max around the median."""
    return [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]


def _thousands(value: float, _: object = None) -> str:
    """Tick labels: 500, 2k, 16k, 128k."""
    if value >= 1000:
        return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value / 1000:g}k"
    return f"{value:g}"


def _short(value: float) -> str:
    """A value label: 27k, 6.4k, 950."""
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _footer(fig: Figure, meta: Mapping[str, Any]) -> None:
    """The machine and date along the bottom edge, in a strip the layout leaves free."""
    strip = FOOTER_PT / (fig.get_figheight() * 72)
    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        engine.set(rect=(0, strip, 1, 1 - strip))
    fig.text(
        0.005,
        0.005,
        f"{meta['machine']['line']} · {meta['date']} · workspace-proxy benchmarks",
        fontsize=7,
        color=MUTED,
        ha="left",
        va="bottom",
    )


FOOTER_PT = 16
"""Height of the footer's strip (points)."""


def _label_bars(ax: Axes, ys: Sequence[float], stats: Sequence[Stat], fmt: str) -> None:
    """Each horizontal bar's median, written past the end of its bar and error bar."""
    for y, (m, _, hi) in zip(ys, stats, strict=True):
        ax.annotate(
            fmt.format(m),
            (max(m, hi), y),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7.5,
            color=INK,
            bbox=_BACKING,
        )


_BACKING = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85}
"""Behind value labels: a line passing under the text does not cross it out."""
TIMES = "\N{MULTIPLICATION SIGN}"


def _target(ax: Axes, x: float, label: str, *, vertical: bool = True) -> None:
    """A dashed target or limit line, labelled at its top (vertical) or left end ('': not
    labelled, when the panel's title says it)."""
    if not label:
        line = ax.axvline if vertical else ax.axhline
        line(x, color=TARGET, linestyle="--", linewidth=1.1, zorder=1)
    elif vertical:
        ax.axvline(x, color=TARGET, linestyle="--", linewidth=1.1, zorder=1)
        ax.annotate(
            label,
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -2),
            textcoords="offset points",
            color=TARGET,
            fontsize=7.5,
            va="top",
        )
    else:
        ax.axhline(x, color=TARGET, linestyle="--", linewidth=1.1, zorder=1)
        ax.annotate(
            label,
            (0.0, x),
            xycoords=("axes fraction", "data"),
            xytext=(3, 3),
            textcoords="offset points",
            color=TARGET,
            fontsize=7.5,
            ha="left",
        )


# --- 1. req/s and CPU per call against connections -------------------------------------------


def connections(results: Results) -> Figure | None:
    summary = results["summary"]
    points = counts_of(summary, GET_PREFIX)
    if not points:
        return None
    variants = _variants({v for c in points for v in summary[f"{GET_PREFIX}{c}"]})
    extras = [v for v in variants if v not in COLOURS]
    fig = Figure(figsize=(10, 4.3), layout="constrained")
    ax_rps, ax_cpu = fig.subplots(1, 2)
    for v in variants:
        for ax, metric in ((ax_rps, "rps"), (ax_cpu, "cpu_us_per_req")):
            got = [(c, _stat(results, f"{GET_PREFIX}{c}", v, metric)) for c in points]
            xs = [c for c, s in got if s is not None]
            stats = [s for _, s in got if s is not None]
            if not stats:
                continue
            ax.errorbar(
                xs,
                [m for m, _, _ in stats],
                yerr=_errors(stats),
                color=_colour(v, extras),
                marker=MARKERS.get(v, "D"),
                markersize=5,
                linewidth=2.2 if v == WP else 1.6,
                capsize=2.5,
                label=v,
                zorder=3 if v == WP else 2,
            )
    for ax in (ax_rps, ax_cpu):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(points))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("concurrent keep-alive connections (log scale)")
        ax.set_xlim(points[0] / 1.5, points[-1] * 1.5)
    ax_rps.set_yscale("log")
    ax_rps.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax_rps.yaxis.set_minor_formatter(FuncFormatter(_minor_thousands))
    ax_rps.set_ylabel("requests per second (log scale)")
    ax_rps.set_title("Throughput: higher is better")
    ax_cpu.set_ylim(bottom=0)
    ax_cpu.set_ylabel("CPU per call (µs, all the variant's processes)")
    ax_cpu.set_title("CPU per call: lower is better")
    _target(ax_cpu, 60, "issue 7 target: ≤ 60 µs per call", vertical=False)
    _label_wp(ax_rps, ax_cpu, results, points)
    fig.suptitle("GET /api/4.0/user (579-byte answer) against connections", fontweight="bold")
    fig.legend(
        *ax_rps.get_legend_handles_labels(),
        loc="outside lower center",
        ncol=len(variants),
    )
    return fig


def _minor_thousands(value: float, _: object = None) -> str:
    """Label 2x and 5x between the decades, so a log axis reads without counting."""
    lead = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return _thousands(value) if round(lead) in (2, 5) else ""


def _label_wp(ax_rps: Axes, ax_cpu: Axes, results: Results, points: Sequence[int]) -> None:
    """workspace-proxy's value at each of its points, and its standing at 64 connections (the
    headline) against nginx and the naive proxy in the throughput panel's empty corner."""
    for ax, metric, where in ((ax_rps, "rps", -11), (ax_cpu, "cpu_us_per_req", 7)):
        for c in points:
            got = _stat(results, f"{GET_PREFIX}{c}", WP, metric)
            if got is None:
                continue
            text = _short(got[0]) if metric == "rps" else f"{got[0]:.0f} µs"
            ax.annotate(
                text,
                (c, got[0]),
                xytext=(0, where),
                textcoords="offset points",
                ha="center",
                va="center",
                fontsize=7.5,
                color=COLOURS[WP],
                fontweight="bold",
                bbox=_BACKING,
            )
    at = 64 if 64 in points else points[-1]
    name = f"{GET_PREFIX}{at}"
    wp = _stat(results, name, WP, "rps")
    if wp is None:
        return
    versus = []
    for ref in ("nginx", "naive"):
        other = _stat(results, name, ref, "rps")
        if other is not None and other[0]:
            versus.append(f"{wp[0] / other[0]:.2f}{TIMES} {ref}")
    ax_rps.text(
        0.02,
        0.97,
        f"workspace-proxy at {at} connections:\n{wp[0]:,.0f} req/s"
        + (" = " + ", ".join(versus) if versus else ""),
        transform=ax_rps.transAxes,
        va="top",
        fontsize=8,
        color=COLOURS[WP],
    )


# --- 2. CPU per call type --------------------------------------------------------------------


def call_types(results: Results) -> Figure | None:
    rows = [
        r
        for r in results.get("calltypes", [])
        if r["key"] in calltypes.BY_KEY and not calltypes.BY_KEY[r["key"]].per_byte
    ]
    rows = [r for r in rows if _stat(results, calltypes.SCENARIO_PREFIX + r["key"], WP, "rps")]
    if not rows:
        return None
    fig = Figure(figsize=(9, 0.62 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    series: list[tuple[str, Callable[[Mapping[str, Any]], Stat | None], dict[str, Any]]] = [
        (
            "workspace-proxy before issue 16 (front + relay)",
            lambda r: (r["before_us"],) * 3 if r["before_us"] is not None else None,
            {"color": BEFORE, "hatch": "////", "edgecolor": COLOURS[WP], "linewidth": 0.6},
        ),
        (
            "workspace-proxy now",
            lambda r: _stat(results, calltypes.SCENARIO_PREFIX + r["key"], WP, "cpu_us_per_req"),
            {"color": COLOURS[WP]},
        ),
        (
            "nginx, same call",
            lambda r: _stat(
                results, calltypes.SCENARIO_PREFIX + r["key"], "nginx", "cpu_us_per_req"
            ),
            {"color": COLOURS["nginx"]},
        ),
    ]
    height = 0.26
    rows_y = list(range(len(rows)))[::-1]  # the first call type on top
    for i, (label, pick, style) in enumerate(series):
        got = [(y, pick(r)) for y, r in zip(rows_y, rows, strict=True)]
        ys = [y + (1 - i) * height for y, s in got if s is not None]
        stats = [s for _, s in got if s is not None]
        if not stats:
            continue
        values = [m for m, _, _ in stats]
        ranged = any(hi > lo for _, lo, hi in stats)
        ax.barh(
            ys,
            values,
            height=height,
            label=label,
            xerr=_errors(stats) if ranged else None,
            error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": INK},
            **style,
        )
        _label_bars(ax, ys, stats, "{:.0f}")
    ax.set_yticks(rows_y, labels=[r["label"] for r in rows])
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="y", visible=False)
    _target(ax, 60, "target ≤ 60 µs")
    for y, r in zip(rows_y, rows, strict=True):
        target = calltypes.BY_KEY[r["key"]].target_us
        if target is not None and target != 60:
            ax.plot([target, target], [y - 0.45, y + 0.45], color=TARGET, ls="--", lw=1.1)
            ax.annotate(
                f"≤ {target:g}",
                (target, y - 0.45),
                xytext=(2, 1),
                textcoords="offset points",
                color=TARGET,
                fontsize=7.5,
                va="bottom",
            )
    for y, r in zip(rows_y, rows, strict=True):
        if r["before_us"] is None:
            ax.annotate(
                "before issue 16: relayed, no figure",
                (0, y + height),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color=MUTED,
                style="italic",
            )
    ax.set_xlim(0, max(ax.get_xlim()[1], 70) * 1.06)
    ax.set_xlabel("CPU per call (µs, all the proxy's processes; lower is better)")
    ax.set_title("CPU per call type at 64 connections", loc="left")
    ax.legend(loc="upper right", fontsize=8)
    return fig


# --- 3. the 1 GiB download -------------------------------------------------------------------


def download(results: Results) -> Figure | None:
    variants = _variants(set(results["summary"].get("download", {})))
    if not variants:
        return None
    extras = [v for v in variants if v not in COLOURS]
    fig = Figure(figsize=(10.5, 0.45 * len(variants) + 1.9), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    panels = (
        ("gb_per_s", "GB/s (higher is better)", "{:.2f}", (1.0, "target ≥ 1 GB/s")),
        ("cpu_ns_per_byte", "CPU ns per byte (lower is better)", "{:.2f}", None),
        ("rss_growth_mib", "RSS growth, MiB (lower is better)", "{:.1f}", (32.0, "limit 32 MiB")),
    )
    ys = list(range(len(variants)))[::-1]
    for ax, (metric, title, fmt, target) in zip(axes, panels, strict=True):
        got = [
            (y, v, _stat(results, "download", v, metric)) for y, v in zip(ys, variants, strict=True)
        ]
        kept = [(y, v, s) for y, v, s in got if s is not None]
        stats = [s for _, _, s in kept]
        ax.barh(
            [y for y, _, _ in kept],
            [m for m, _, _ in stats],
            height=0.6,
            color=[_colour(v, extras) for _, v, _ in kept],
            xerr=_errors(stats) if any(hi > lo for _, lo, hi in stats) else None,
            error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": INK},
        )
        _label_bars(ax, [y for y, _, _ in kept], stats, fmt)
        if target is not None:
            _target(ax, target[0], target[1])
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="y", length=0)
    axes[0].set_yticks(ys, labels=variants)
    fig.suptitle("1 GiB CSV download, one request through each variant", fontweight="bold")
    return fig


# --- 4. cost against teams configured --------------------------------------------------------


def team_counts(results: Results) -> Figure | None:
    counts = counts_of(results["summary"], teams.PREFIX)
    if not counts:
        return None
    fig = Figure(figsize=(10, 6.4), layout="constrained")
    (ax_cpu, ax_rps), (ax_rss, ax_pin) = fig.subplots(2, 2)
    loads: dict[str, dict[str, Any]] = {
        teams.ONE: {"linestyle": "--", "marker": "o", "markerfacecolor": "white"},
        teams.ALL: {"linestyle": "-", "marker": "o"},
    }
    panels = (
        (
            ax_cpu,
            "cpu_us_per_req",
            "CPU per call (µs; lower is better; dashed: 60 µs target)",
            tuple(loads),
        ),
        (ax_rps, "rps", "requests per second (higher is better)", tuple(loads)),
        (ax_rss, "rss_mib", "RSS of the proxy's processes (MiB)", tuple(loads)),
        (ax_pin, "pin_s", "time to pin every team at once (s)", (teams.ALL,)),
    )
    for ax, metric, title, which in panels:
        series = {
            load: {
                n: got
                for n in counts
                if (got := _stat(results, teams.scenario(n), load, metric)) is not None
            }
            for load in which
        }
        for load, points in series.items():
            if not points:
                continue
            stats = list(points.values())
            ax.errorbar(
                list(points),
                [m for m, _, _ in stats],
                yerr=_errors(stats) if any(hi > lo for _, lo, hi in stats) else None,
                color=COLOURS[WP],
                linewidth=2,
                markersize=5,
                capsize=2.5,
                **loads[load],
            )
            others = [p for other, p in series.items() if other != load]
            for n, (m, _, _) in points.items():
                # each label on the side away from the other load's point
                near = [p[n][0] for p in others if n in p]
                above = not near or m > near[0] or (m == near[0] and load == teams.ALL)
                ax.annotate(
                    _teams_label(metric, m),
                    (n, m),
                    xytext=(0, 8 if above else -9),
                    textcoords="offset points",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color=COLOURS[WP],
                    bbox=_BACKING,
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(counts))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.set_xlim(counts[0] / 1.6, counts[-1] * 1.6)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
        ax.set_title(title, loc="left", fontsize=9)
        ax.set_xlabel("teams configured (log scale)")
    ax_rps.yaxis.set_major_formatter(FuncFormatter(_thousands))
    ax_cpu.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    _target(ax_cpu, 60, "", vertical=False)
    handles = [
        Line2D([], [], color=COLOURS[WP], lw=2, label=teams.LABELS[load], **style)
        for load, style in loads.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    fig.suptitle(
        f"workspace-proxy against the number of teams configured ({teams.CONNECTIONS}"
        " connections, GET /api/4.0/user)",
        fontweight="bold",
    )
    return fig


def _teams_label(metric: str, value: float) -> str:
    if metric == "rps":
        return _short(value)
    if metric == "pin_s":
        return f"{value * 1000:.0f} ms" if value < 0.1 else f"{value:.2f} s"
    return f"{value:.0f}"


CHARTS: dict[str, Callable[[Results], Figure | None]] = {
    "connections": connections,
    "calltypes": call_types,
    "download": download,
    "teams": team_counts,
}
"""Chart key (the file's name) -> how it is drawn; the keys of ``report.CHARTS``."""

"""deploy/observability: the Prometheus alert rules pass `promtool check rules`, every alert is
unit-tested firing and not firing and those tests pass `promtool test rules`, the Grafana
dashboard is well formed and its queries parse, and every metric and label the dashboard and
the rules use is one a real `workspace-proxy serve` exports.

promtool comes from Debian's prometheus package (see tests/promtool.py); when it cannot be had,
these tests fail rather than skip."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import promtool as promtool_installer
import pytest
import yaml
from harness import ProxyProcess, raw_config
from prometheus_client.parser import text_string_to_metric_families

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(300)  # a first run may download promtool

OBSERVABILITY = Path(__file__).resolve().parent.parent / "deploy" / "observability"
RULES = OBSERVABILITY / "workspace-proxy.rules.yaml"
RULE_TESTS = OBSERVABILITY / "workspace-proxy.rules.test.yaml"
DASHBOARD = OBSERVABILITY / "workspace-proxy.dashboard.json"
TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus adds to every series it scrapes."""
GRAFANA = {"__rate_interval": "1m", "__range": "1h", "job": ".*", "instance": ".*", "team": ".*"}
"""What Grafana puts in place of the dashboard's variables (any valid value will do)."""


@pytest.fixture(scope="module")
def promtool() -> str:
    path, steps = promtool_installer.ensure()
    if path is None:
        pytest.fail(
            "promtool is needed to check the alert rules and could not be had "
            "(Debian's prometheus package ships it):\n" + "\n".join(steps)
        )
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = OBSERVABILITY) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_pass_promtool_check(promtool: str) -> None:
    """`promtool check rules` accepts the rules file (syntax, PromQL, templates)."""
    output = run_promtool(promtool, "check", "rules", RULES.name)
    assert f"SUCCESS: {len(alerts())} rules found" in output


def test_the_promised_alerts_are_there() -> None:
    """A team that cannot pin, a 5xx ratio, a stuck refresh and a target down are alerted on,
    each with a severity, a summary and a description."""
    names = {rule["alert"] for rule in alerts()}
    assert names >= {
        "WorkspaceProxyTeamCannotPin",
        "WorkspaceProxyHighErrorRatio",
        "WorkspaceProxySessionRefreshStuck",
        "WorkspaceProxyTargetDown",
    }
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= rule["annotations"].keys(), rule["alert"]
    pin = next(r for r in alerts() if r["alert"] == "WorkspaceProxyTeamCannotPin")
    assert pin["for"] == "2m"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    """For each alert the promtool tests have a case where it fires and one where it is
    evaluated and does not."""
    spec = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert spec["rule_files"] == [RULES.name]
    cases: dict[str, set[bool]] = defaultdict(set)
    for test in spec["tests"]:
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    assert {rule["alert"]: cases[rule["alert"]] for rule in alerts()} == {
        rule["alert"]: {True, False} for rule in alerts()
    }


def test_alert_unit_tests_pass(promtool: str) -> None:
    """`promtool test rules` runs every case and all pass."""
    output = run_promtool(promtool, "test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in output


# --- the dashboard ----------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard, its variables' queries included."""
    queries = [t["expr"] for p in panels() for t in p["targets"]]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *(\w+)\)", var["query"]["query"])
            assert inner is not None, var
            queries.append(f"count by ({inner[2]}) ({inner[1]})")
    return queries


def grafana_free(query: str) -> str:
    """The query as Grafana sends it to Prometheus, its variables replaced."""
    return re.sub(r"\$(\w+)", lambda m: GRAFANA[m[1]], query)


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, panels inside the 24-column grid and not overlapping, every query on
    the dashboard's data source variable, every variable used defined."""
    board = dashboard()
    assert board["uid"] == "workspace-proxy"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], int] = {}
    for panel in board["panels"]:
        g = panel["gridPos"]
        assert g["x"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells[(x, y)])
                cells[(x, y)] = panel["id"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance", "team"}
    for panel in panels():
        assert panel["title"], panel["id"]
        assert panel["description"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__range"}
            assert used <= variables, (panel["title"], used)


def test_dashboard_shows_what_operators_need() -> None:
    """Request rate, errors by status, latency percentiles, in-flight, session age, pin
    attempts and failures, team state, next attempt, replays and session events each have a
    panel."""
    text = " ".join(dashboard_queries())
    for needed in (
        "rate(workspace_proxy_requests_total",
        "status=~",
        "histogram_quantile(0.99, sum by (team, le) (rate(workspace_proxy_upstream_latency",
        "workspace_proxy_in_flight_requests",
        "workspace_proxy_session_age_seconds",
        "workspace_proxy_pin_attempts_total",
        'outcome!="ok"',
        'team=~"$team", state="backing_off"}',
        "workspace_proxy_next_pin_attempt_seconds",
        "workspace_proxy_replays_total",
        "workspace_proxy_session_events_total",
    ):
        assert needed in text, needed


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL (promtool parses them as recording rules)."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_free(q)}
                    for i, q in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    output = run_promtool(promtool, "check", "rules", path.name, cwd=tmp_path)
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in output


# --- every metric and label referenced is exported ----------------------------------------------

KEYWORDS = {
    "sum", "max", "min", "count", "rate", "increase", "histogram_quantile",
    "by", "on", "and", "or", "unless", "bool", "without", "ignoring", "group_left", "group_right",
}  # fmt: skip
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")


@dataclass
class Reference:
    """What one query refers to: metrics with their label matchers, and grouping labels."""

    query: str
    matchers: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(metric, label, operator, value)"""
    metrics: set[str] = field(default_factory=set)
    grouping: set[str] = field(default_factory=set)


def references(query: str) -> Reference:
    """The metrics and labels a PromQL query uses; every identifier must be accounted for (a
    PromQL keyword or function, a metric, a label), so nothing escapes the check."""
    ref = Reference(query)
    rest = re.sub(r"\[[^\]]*\]", " ", query)  # range durations
    for metric, body in SELECTOR.findall(rest):
        ref.metrics.add(metric)
        matched = MATCHER.findall(body)
        assert "".join(f'{m[0]}{m[1]}"{m[2]}",' for m in matched) == re.sub(
            r'\s+(?=(?:[^"]*"[^"]*")*[^"]*$)', "", body
        ).rstrip(",") + ("," if matched else ""), f"cannot read matchers {body!r} in {query}"
        ref.matchers += [(metric, label, op, value) for label, op, value in matched]
    rest = SELECTOR.sub(lambda m: f" {m[1]} ", rest)
    for _, labels in GROUPING.findall(rest):
        ref.grouping |= {label.strip() for label in labels.split(",") if label.strip()}
    rest = GROUPING.sub(lambda m: f" {m[1]} ", rest)
    for name in IDENTIFIER.findall(rest):
        if name not in KEYWORDS:
            ref.metrics.add(name)
    return ref


def every_reference() -> Iterator[tuple[str, Reference]]:
    for rule in alerts():
        yield f"alert {rule['alert']}", references(rule["expr"])
    for query in dashboard_queries():
        yield "dashboard", references(grafana_free(query))


def test_the_query_reader_reads_what_it_must() -> None:
    """The reader above finds metrics, matchers and grouping labels, keywords aside."""
    ref = references(
        'max by (job, team) (rate(a_total{team=~".*", state!="ok"}[5m])) '
        "and on (team) b == 1 or histogram_quantile(0.9, sum by (le) (c_bucket))"
    )
    assert ref.metrics == {"a_total", "b", "c_bucket"}
    assert ref.grouping == {"job", "team", "le"}
    assert ref.matchers == [("a_total", "team", "=~", ".*"), ("a_total", "state", "!=", "ok")]


@dataclass
class Exposition:
    """What /metrics exported: label names and values seen per sample name."""

    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def parse(cls, text: str) -> Exposition:
        out = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.labels[sample.name] |= set(sample.labels)
                for label, value in sample.labels.items():
                    out.values[(sample.name, label)].add(value)
        return out


async def scrape_after_traffic(looker: LookerEmulator, tmp_path: Path) -> str:
    """/metrics of a real proxy after calls, a replay after a 401, and a failed pin."""
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-marketing-secret\n", encoding="utf-8")
    raw = raw_config(looker.base_url, teams=("analytics", "finance", "marketing"))
    raw["teams"]["marketing"]["looker_client_secret"] = {"file": str(wrong)}
    proc = await ProxyProcess.start(raw, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:

            async def call(team: str, path: str) -> int:
                form = {"client_id": f"{team}-caller", "client_secret": f"{team}-caller-secret"}
                async with http.post(f"{proc.url}/api/4.0/login", data=form) as resp:
                    token = (await resp.json())["access_token"]
                headers = {"Authorization": f"token {token}"}
                async with http.get(f"{proc.url}{path}", headers=headers) as resp:
                    await resp.read()
                    return resp.status

            assert [await call("finance", "/api/4.0/user") for _ in range(3)] == [200] * 3
            looker.revoke_all_tokens()  # the next call gets a 401 from Looker and is replayed
            assert await call("finance", "/api/4.0/user") == 200
            assert await call("marketing", "/api/4.0/user") == 503  # Looker refuses the login
            assert await call("finance", "/api/4.0/no_such_resource") == 404
            async with http.get(f"{proc.admin_url}/metrics") as resp:
                return await resp.text()
    finally:
        await proc.kill()


async def test_every_metric_and_label_used_is_exported(
    looker: LookerEmulator, tmp_path: Path
) -> None:
    """Each metric the rules and the dashboard query is in a real proxy's /metrics, with every
    label they match on or group by, and every label value they compare with literally."""
    exported = Exposition.parse(await scrape_after_traffic(looker, tmp_path))
    assert exported.values[("workspace_proxy_replays_total", "team")] == {"finance"}
    assert "rejected" in exported.values[("workspace_proxy_pin_attempts_total", "outcome")]
    problems: list[str] = []
    used: set[str] = set()
    for where, ref in every_reference():
        for metric in ref.metrics - {"up"}:  # `up` is Prometheus's own, one per target
            used.add(metric)
            if metric not in exported.labels:
                problems.append(f"{where}: {metric} is not exported")
        known = set().union(*(exported.labels.get(m, set()) for m in ref.metrics)) | TARGET_LABELS
        problems += [
            f"{where}: no metric of `{ref.query}` has a label {label}"
            for label in sorted(ref.grouping - known)
        ]
        for metric, label, op, value in ref.matchers:
            labels = TARGET_LABELS if metric == "up" else exported.labels.get(metric, set())
            if label not in labels | TARGET_LABELS:
                problems.append(f"{where}: {metric} has no label {label}")
            elif label not in TARGET_LABELS:
                seen = exported.values[(metric, label)]
                ok = any(re.fullmatch(value, v) for v in seen) if "~" in op else value in seen
                if not ok:
                    problems.append(
                        f"{where}: {metric}{{{label}{op}{value!r}}} matches none of {seen}"
                    )
    assert not problems
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", m) for m in exported.labels}
    unused = {f for f in families if f.startswith("workspace_proxy_")} - {
        re.sub(r"_(total|bucket|sum|count)$", "", m) for m in used
    }
    assert not unused, "exported but on no panel and in no rule"


# --- the README's instructions ----------------------------------------------------------------


def readme_section(heading: str) -> str:
    """The README's text under ``heading``, up to the next heading of any level."""
    text = (OBSERVABILITY.parent.parent / "README.md").read_text(encoding="utf-8")
    assert heading in text, f"README.md no longer has {heading!r}"
    section = text[text.index(heading) + len(heading) :]
    return re.split(r"^#{2,3} ", section, flags=re.M)[0]


def test_readme_observability_snippets_work(promtool: str, tmp_path: Path) -> None:
    """README 'Observability': the Prometheus configuration is valid and loads the rules, under
    the job name the target-down alert looks for; the promtool commands succeed as written."""
    section = readme_section("### Observability")
    [prometheus_yml] = re.findall(r"^```yaml\n(.*?)^```", section, re.S | re.M)
    config = yaml.safe_load(prometheus_yml)
    [job] = [scrape["job_name"] for scrape in config["scrape_configs"]]
    target_down = next(r for r in alerts() if r["alert"] == "WorkspaceProxyTargetDown")
    assert f'job="{job}"' in target_down["expr"]
    path = tmp_path / "prometheus.yml"
    path.write_text(
        prometheus_yml.replace("deploy/observability/", f"{OBSERVABILITY}/"), encoding="utf-8"
    )
    output = run_promtool(promtool, "check", "config", str(path), cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output
    assert f"Checking {RULES}\n  SUCCESS: {len(alerts())} rules found" in output
    [commands] = re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)
    root = OBSERVABILITY.parent.parent
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(promtool).parent), os.environ["PATH"]])}
    done = subprocess.run(
        ["bash", "-e", "-c", commands], cwd=root, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == 2, done.stdout

"""Prometheus metrics with bounded labels (team, route name, status code, outcome kind).

Each app gets its own registry, so tests and reloads never collide on global state. With
``--workers`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported:
every process then writes its values there and ``render()`` in the supervisor adds them up.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from workspace_proxy.status import State, Status

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "workspace_proxy_requests",
            "Requests answered, by team, route and status code.",
            ["team", "route", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "workspace_proxy_upstream_latency_seconds",
            "Time from sending a forwarded request to Looker until its response headers arrived.",
            ["team"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "workspace_proxy_in_flight_requests",
            "Requests being handled, by team.",
            ["team"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.session_events = Counter(
            "workspace_proxy_session_events",
            "Upstream session work: event is login (cold), refresh (ahead of expiry) or reauth "
            "(after a 401); outcome is ok or the failure kind.",
            ["team", "event", "outcome"],
            registry=r,
        )
        self.replays = Counter(
            "workspace_proxy_replays",
            "Requests replayed once under a new session after Looker answered 401.",
            ["team"],
            registry=r,
        )
        self.session_age = Gauge(
            "workspace_proxy_session_age_seconds",
            "Age of the pinned session each team's calls use; 0 while it has none.",
            ["team"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.pin_attempts = Counter(
            "workspace_proxy_pin_attempts",
            "Attempts to pin a team's session (login, PATCH /session, verify, and the logout "
            "of a failed one); outcome is ok or the failure kind.",
            ["team", "outcome"],
            registry=r,
        )
        self.team_state = Gauge(
            "workspace_proxy_team_state",
            "1 for the state each team's session is in (idle, ok, pinning, backing_off), "
            "0 for the others.",
            ["team", "state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.next_attempt = Gauge(
            "workspace_proxy_next_pin_attempt_seconds",
            "Seconds until a backing-off team's next attempt to pin; 0 otherwise.",
            ["team"],
            registry=r,
            multiprocess_mode="livemax",
        )

        self._children: dict[tuple[object, ...], Any] = {}
        self._served: dict[tuple[str, str, int], int] = {}
        self._latencies: dict[str, list[int]] = {}
        """Upstream latencies per team since the last ``publish``, counted per bucket."""
        self._latency_sums: dict[str, float] = {}
        self.in_flight_now: Callable[[], Mapping[str, int]] | None = None
        """Where ``publish`` reads the requests in flight per team (set by the app)."""

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: label lookup is the costly part of a metric update
        on the hot path, and the label values are bounded (teams, route names, status codes)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_done(self, team: str, route: str, status: int) -> None:
        """Count an answered request; exported by the next ``publish``."""
        key = (team, route, status)
        self._served[key] = self._served.get(key, 0) + 1

    def publish(self) -> None:
        """Export what was counted since the last call, and the requests in flight now.

        Per-request updates of prometheus-client's values (shared memory files with
        ``--workers``) cost several microseconds each; counting in a dict and exporting about
        once a second (the front's sweeper) or at each scrape costs next to nothing."""
        self._publish_latencies()
        served, self._served = self._served, {}
        for (team, route, status), n in served.items():
            self._child(self.requests, team, route, str(status)).inc(n)
        if self.in_flight_now is not None:
            for team, n in self.in_flight_now().items():
                self._child(self.in_flight, team).set(n)

    def upstream_answered(self, team: str, seconds: float) -> None:
        """Count one upstream latency in its bucket; exported by the next ``publish``."""
        counts = self._latencies.get(team)
        if counts is None:
            counts = self._latencies[team] = [0] * (len(_LATENCY_BUCKETS) + 1)
            self._latency_sums[team] = 0.0
        counts[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self._latency_sums[team] += seconds

    def _publish_latencies(self) -> None:
        """Add the latencies counted since the last call to the histogram: per bucket and once,
        through the child's bucket values (the same values ``observe`` adds to, one at a time);
        should a release of prometheus-client lay its histograms out otherwise, each latency is
        observed instead, at its bucket's upper bound (``tests/test_metrics.py`` notices)."""
        latencies, self._latencies = self._latencies, {}
        sums, self._latency_sums = self._latency_sums, {}
        for team, counts in latencies.items():
            child = self._child(self.upstream_latency, team)
            buckets, total = getattr(child, "_buckets", None), getattr(child, "_sum", None)
            if buckets is not None and total is not None and len(buckets) == len(counts):
                for value, n in zip(buckets, counts, strict=True):
                    if n:
                        value.inc(n)
                total.inc(sums[team])
                continue
            for bound, n in zip((*_LATENCY_BUCKETS, 2 * _LATENCY_BUCKETS[-1]), counts, strict=True):
                for _ in range(n):
                    child.observe(bound)

    def session_event(self, team: str, event: str, outcome: str) -> None:
        self.session_events.labels(team, event, outcome).inc()

    def pin_attempt(self, team: str, outcome: str) -> None:
        self.pin_attempts.labels(team, outcome).inc()

    def team_status(self, team: str, status: Status) -> None:
        """Export one team's session status (at each scrape)."""
        for state in State:
            self.team_state.labels(team, state.value).set(1 if status.state is state else 0)
        self.next_attempt.labels(team).set(status.next_attempt_in_s or 0.0)
        # 0 without a session: a series cannot be removed across worker processes, and the
        # last age kept would read as a session still in use.
        self.session_age.labels(team).set(status.session_age_s or 0.0)

    def render(self) -> bytes:
        self.publish()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            combined = CollectorRegistry(auto_describe=False)
            combined.register(_Instance(self.registry, directory))
            return generate_latest(combined)
        return generate_latest(self.registry)


class _Instance:
    """``--workers``: the values of every process (workers and supervisor, from the
    multiprocess files), and every metric no process has a value for yet, declared without
    samples as a single process shows it, so both export the same metrics."""

    def __init__(self, registry: CollectorRegistry, directory: str) -> None:
        self._registry = registry
        self._files = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        seen = set()
        for family in self._files.collect():  # type: ignore[no-untyped-call]
            seen.add(family.name)
            yield family
        for family in self._registry.collect():
            if family.name not in seen:
                yield Metric(family.name, family.documentation, family.type, family.unit)

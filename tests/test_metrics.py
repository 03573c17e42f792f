"""The metrics the proxy counts in memory and exports in bulk match what was observed."""

from __future__ import annotations

import re

from workspace_proxy.metrics import Metrics
from workspace_proxy.status import State, Status


def _samples(text: str, name: str) -> dict[str, float]:
    found = re.findall(rf"^{name}{{(.*?)}} (\S+)$", text, re.M)
    return {labels: float(value) for labels, value in found}


def test_upstream_latencies_are_exported_in_the_right_buckets() -> None:
    """Latencies counted per bucket reach the histogram exactly as one observe() each would
    (cumulative buckets, count and sum), through the bulk path, not the fallback."""
    metrics = Metrics()
    observed = [0.001, 0.005, 0.02, 0.02, 3.0, 1000.0]
    for seconds in observed:
        metrics.upstream_answered("analytics", seconds)
    reference = Metrics()
    for seconds in observed:
        reference.upstream_latency.labels("analytics").observe(seconds)
    text, expected = metrics.render().decode(), reference.render().decode()
    for suffix in ("_bucket", "_count", "_sum"):
        name = "workspace_proxy_upstream_latency_seconds" + suffix
        assert _samples(text, name) == _samples(expected, name), suffix
    assert _samples(text, "workspace_proxy_upstream_latency_seconds_count") == {
        'team="analytics"': 6.0
    }


def test_latencies_are_exported_once() -> None:
    """A second export adds nothing: counts are moved, not copied."""
    metrics = Metrics()
    metrics.upstream_answered("finance", 0.2)
    metrics.publish()
    metrics.publish()
    text = metrics.render().decode()
    assert _samples(text, "workspace_proxy_upstream_latency_seconds_count") == {
        'team="finance"': 1.0
    }


def _status(state: State, age: float | None) -> Status:
    return Status(state, "dev", age, 1 if age is not None else None, None, None, 1)


def test_session_age_drops_to_zero_when_the_session_is_gone() -> None:
    """A team that lost its session does not keep exporting the age of the one it had."""
    metrics = Metrics()
    metrics.team_status("analytics", _status(State.OK, 1234.5))
    ages = _samples(metrics.render().decode(), "workspace_proxy_session_age_seconds")
    assert ages == {'team="analytics"': 1234.5}
    metrics.team_status("analytics", _status(State.BACKING_OFF, None))
    ages = _samples(metrics.render().decode(), "workspace_proxy_session_age_seconds")
    assert ages == {'team="analytics"': 0.0}

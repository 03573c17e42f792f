"""Turning tracing on and off, end to end against a real OTLP receiver (``otlp``): the
``tracing`` block and the OTEL_* variables (validated with the rest of the configuration, the
variables winning), the standard switches, `serve` importing no OpenTelemetry module while
tracing is off (so no provider, no tracer, no exporter thread, nothing exported) and exporting
what it holds when it stops, a collector that does not keep up, a reload, and the README's
Tracing snippets run as written. The span model: ``test_tracing.py``."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import structlog
import yaml
from harness import ENV, Proxy, ProxyProcess, free_port, raw_config
from otlp import (
    CALLER_PARENT,
    CALLER_SPAN,
    CALLER_TRACE,
    OtlpReceiver,
    flushed,
    headers_named,
    one,
    serve,
    traced,
)
from pytest_aiohttp import AiohttpServer
from spy import SpyLooker

from workspace_proxy.config import Tracing
from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.errors import ConfigError
from workspace_proxy.loading import summary
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def otlp(aiohttp_server: AiohttpServer) -> OtlpReceiver:
    return await serve(aiohttp_server)


# --- turning it on and off --------------------------------------------------------------------


def tracing_of(block: object = None, **env: str) -> Tracing | None:
    raw = raw_config("http://127.0.0.1:19999")
    if block is not None:
        raw["tracing"] = block
    return parse_config(raw, env={**ENV, **env}).tracing


def test_tracing_is_off_unless_asked_for() -> None:
    """No block and no endpoint variable: off, whatever the other OTEL_* variables say (they
    are not even checked then)."""
    assert tracing_of() is None
    assert tracing_of(OTEL_TRACES_SAMPLER="xray", OTEL_SERVICE_NAME="x") is None
    assert tracing_of(OTEL_EXPORTER_OTLP_ENDPOINT="") is None  # empty is unset


def test_the_block_and_the_variables_turn_it_on_and_the_variables_win() -> None:
    """`tracing: {}` takes the defaults (OpenTelemetry's: localhost:4318, every trace, parent-
    based); an endpoint variable turns tracing on alone; each variable overrides its key."""
    assert tracing_of({}) == Tracing(traces_url="http://localhost:4318/v1/traces")
    assert tracing_of(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318/otlp/") == Tracing(
        endpoint="http://c:4318/otlp/", traces_url="http://c:4318/otlp/v1/traces"
    )
    full = "https://collector.example.com/custom/traces"
    assert tracing_of(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=full) == Tracing(traces_url=full)
    block = {"endpoint": "http://a:4318", "sampling_ratio": 0.5, "service_name": "bi-proxy"}
    assert tracing_of(block) == Tracing(
        endpoint="http://a:4318",
        sampling_ratio=0.5,
        service_name="bi-proxy",
        traces_url="http://a:4318/v1/traces",
    )
    assert tracing_of(
        block,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://b:4318",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.01",
        OTEL_SERVICE_NAME="from-env",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_TRACES_EXPORTER="otlp",
    ) == Tracing(
        endpoint="http://b:4318",
        sampling_ratio=0.01,
        service_name="from-env",
        traces_url="http://b:4318/v1/traces",
        sampler="traceidratio",
    )
    # The argument of a sampler without a ratio is ignored, as OpenTelemetry's SDKs do.
    on = tracing_of(block, OTEL_TRACES_SAMPLER="always_on", OTEL_TRACES_SAMPLER_ARG="x")
    assert on is not None
    assert (on.sampler, on.sampling_ratio) == ("always_on", 0.5)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_SDK_DISABLED": "true"},
        {"OTEL_SDK_DISABLED": "TRUE"},
        {"OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_the_standard_switches_turn_it_off_whatever_else_says(env: dict[str, str]) -> None:
    """OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: off, block and endpoint or not."""
    assert tracing_of({}, OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318", **env) is None


def test_every_tracing_problem_is_reported_at_once() -> None:
    """The block's mistakes and the variables' are all reported, each by its name."""
    block = {"endpoint": "grpc://c:4317", "sampling_ratio": 1.5, "service_name": " ", "x": 1}
    with pytest.raises(ConfigError) as info:
        tracing_of(
            block,
            OTEL_TRACES_EXPORTER="zipkin",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/json",
            OTEL_EXPORTER_OTLP_ENDPOINT="collector:4318",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c:99999/v1/traces",
            OTEL_TRACES_SAMPLER="xray",
        )
    assert info.value.problems == [
        "tracing.x: unknown key (allowed: endpoint, sampling_ratio, service_name)",
        "tracing.endpoint: must be an http(s) URL with a host, and no query or fragment",
        "tracing.sampling_ratio: must be at most 1",
        "tracing.service_name: must be a non-empty string",
        "OTEL_TRACES_EXPORTER: must be otlp or none, got 'zipkin'",
        "OTEL_EXPORTER_OTLP_PROTOCOL: must be http/protobuf (the proxy's exporter), got 'grpc'",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: must be http/protobuf (the proxy's exporter), got "
        "'http/json'",
        "OTEL_EXPORTER_OTLP_ENDPOINT: must be an http(s) URL with a host, and no query or fragment",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: has an invalid port: 'http://c:99999/v1/traces'",
        "OTEL_TRACES_SAMPLER: must be one of parentbased_traceidratio, parentbased_always_on, "
        "parentbased_always_off, traceidratio, always_on, always_off",
    ]
    for arg in ("1.5", "-0.1", "nan", "one"):
        with pytest.raises(ConfigError) as info:
            tracing_of({}, OTEL_TRACES_SAMPLER_ARG=arg)
        assert info.value.problems == ["OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1"]


def test_check_config_names_the_tracing_it_will_do() -> None:
    """check-config's summary says where spans go, how they are sampled and under what name."""
    raw = raw_config("http://127.0.0.1:19999", tracing={"sampling_ratio": 0.01})
    text = summary(parse_config(raw, env={**ENV, "OTEL_SERVICE_NAME": "bi"}))
    assert (
        "  tracing: OTLP/HTTP to http://localhost:4318/v1/traces, sampler "
        "parentbased_traceidratio (ratio 0.01), service bi"
    ) in text.splitlines()
    assert "tracing" not in summary(parse_config(raw_config("http://127.0.0.1:19999"), env=ENV))


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, True),
        ({"OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
    ],
    ids=["endpoint", "sdk-disabled", "exporter-none"],
)
async def test_an_endpoint_variable_alone_turns_it_on_and_the_switches_off(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver, env: dict[str, str], on: bool
) -> None:
    """The environment alone: spans reach the receiver it names, or, switched off, there is no
    tracer at all, Looker gets the caller's trace context exactly as sent, and nothing is ever
    exported (not even when the proxy stops)."""
    variables = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.base_url, **env}
    proxy = await make_proxy(spy, env_overrides=variables)
    app = proxy.client.server.app
    assert (app.tracing is not None) is on
    assert app.view.policy.tracing is on
    token = await proxy.login("analytics")
    headers = {"traceparent": CALLER_PARENT, "tracestate": "rojo=1"}
    assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await proxy.client.close()  # stops the app: a tracer exports what it still holds
    raw = next(raw for method, path, raw in spy.seen if path == "/api/4.0/user")
    sent = [(k, v) for k, v in raw if k.lower().startswith(b"trace")]
    if on:
        assert {s.name for s in otlp.trace(CALLER_TRACE)} >= {"GET user", "looker GET user"}
        assert sent[0][1] != CALLER_PARENT.encode()
    else:
        assert (otlp.paths, otlp.spans) == ([], [])
        assert sent == [(b"traceparent", CALLER_PARENT.encode()), (b"tracestate", b"rojo=1")]


REPORT_MODULES = """\
import atexit, sys

def report():
    count = sum(name.startswith("opentelemetry") for name in sys.modules)
    print("otel-modules:", count, flush=True)

atexit.register(report)
"""
"""A ``sitecustomize`` for ``serve``: at exit, how many OpenTelemetry modules were imported."""


@pytest.mark.parametrize("on", [False, True], ids=["off", "on"])
async def test_serve_imports_no_opentelemetry_while_tracing_is_off(
    looker: LookerEmulator, otlp: OtlpReceiver, tmp_path: Path, on: bool
) -> None:
    """`workspace-proxy serve` as a process: with tracing off, calls are served and not one
    OpenTelemetry module is imported by exit (so no provider, no tracer, no exporter thread);
    with tracing on, the spans reach the receiver when the proxy stops."""
    (tmp_path / "sitecustomize.py").write_text(REPORT_MODULES, encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
    if on:
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{otlp.base_url}/v1/traces"
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0, "grace_s": 5})
    proxy = await ProxyProcess.start(raw, tmp_path, env=env)
    try:
        async with aiohttp.ClientSession() as http:
            form = {
                "client_id": "analytics-caller",
                "client_secret": ENV["ANALYTICS_CALLER_SECRET"],
            }
            async with http.post(f"{proxy.url}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}", "traceparent": CALLER_PARENT}
            async with http.get(f"{proxy.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200
        assert await proxy.stop() == 0, "\n".join(proxy.lines)
    finally:
        await proxy.kill()
    (report,) = [line for line in proxy.lines if line.startswith("otel-modules:")]
    imported = int(report.split()[1])
    if on:
        assert imported > 0
        assert {s.name for s in otlp.trace(CALLER_TRACE)} >= {"GET user", "looker GET user", "pin"}
    else:
        assert imported == 0, report
        assert (otlp.paths, otlp.spans) == ([], [])


# --- the README's snippets ----------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
README_COLLECTOR = "http://127.0.0.1:4318"


def readme_blocks(language: str) -> list[str]:
    """The ```language blocks of the README's Tracing section."""
    text = README.read_text(encoding="utf-8")
    heading = "### Tracing (OpenTelemetry)\n"
    assert heading in text, "README.md no longer has its Tracing section"
    section = re.split(r"^#{2,3} ", text[text.index(heading) + len(heading) :], flags=re.M)[0]
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


async def test_readme_tracing_block_is_valid_and_traces(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """README 'Tracing': the `tracing` block is a valid section (the values its comments give),
    and a proxy configured with it (the collector's address aside) exports the calls' spans."""
    (block,) = readme_blocks("yaml")
    settings = yaml.safe_load(block)["tracing"]
    assert tracing_of(settings) == Tracing(
        endpoint=README_COLLECTOR,
        sampling_ratio=0.01,
        service_name="workspace-proxy",
        traces_url=f"{README_COLLECTOR}/v1/traces",
    )
    proxy = await make_proxy(spy, tracing={**settings, "endpoint": otlp.base_url})
    token = await proxy.login("analytics")
    headers = {"traceparent": CALLER_PARENT}  # at 1 %, the caller's decision makes it recorded
    assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await flushed(proxy)
    call = one(otlp.trace(CALLER_TRACE), "GET user")
    assert (call.parent, call.resource["service.name"]) == (CALLER_SPAN, "workspace-proxy")


async def test_readme_tracing_variables_run_as_written(
    spy: SpyLooker, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    """README 'Tracing': the shell snippet, run by bash as written (the collector's address and
    the config file aside), serves with tracing on: the spans reach the collector under the
    service name it sets, the caller's trace continued, by the time the proxy has stopped."""
    (block,) = readme_blocks("sh")
    assert README_COLLECTOR in block
    assert "config/example.yaml" in block
    port, admin = free_port(), free_port()
    config = raw_config(
        spy.base_url,
        listen={"host": "127.0.0.1", "port": port},
        admin={"host": "127.0.0.1", "port": admin},
        shutdown={"drain_s": 0, "grace_s": 5},
    )
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    script = block.replace(README_COLLECTOR, otlp.base_url).replace(
        "config/example.yaml", str(path)
    )
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to run the README's shell snippets"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    bin_dir = str(Path(sys.executable).parent)
    proc = await asyncio.create_subprocess_exec(
        bash, "-e", "-c", script,
        env={**clean, **ENV, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any('"listening"' in line for line in lines):
                raw = await proc.stdout.readline()
                assert raw, "\n".join(lines)
                lines.append(raw.decode())
        proxy = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            form = {
                "client_id": "analytics-caller",
                "client_secret": ENV["ANALYTICS_CALLER_SECRET"],
            }
            async with http.post(f"{proxy}/api/4.0/login", data=form) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}", "traceparent": CALLER_PARENT}
            async with http.get(f"{proxy}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200
        os.killpg(proc.pid, signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    output = "".join(lines) + rest.decode()
    assert '"stopped"' in output, output
    call = one(otlp.trace(CALLER_TRACE), "GET user")
    assert call.parent == CALLER_SPAN
    assert call.resource["service.name"] == "workspace-proxy-bi"


async def test_a_collector_that_does_not_keep_up_costs_spans_not_calls_or_log_lines(
    looker: LookerEmulator, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    """`serve` with a small span queue and a collector that holds the first export: calls are
    served as usual, the spans that do not fit are dropped, and the SDK's warning about it is
    logged once, not once per span (a log line per dropped span would flood stdout when a
    collector goes down at full load; the SDK limits it itself)."""
    otlp.hold = asyncio.Event()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.base_url,
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
    }
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0, "grace_s": 5})
    proxy = await ProxyProcess.start(raw, tmp_path, env=env)
    try:
        async with aiohttp.ClientSession() as http:
            form = {
                "client_id": "analytics-caller",
                "client_secret": ENV["ANALYTICS_CALLER_SECRET"],
            }
            async with http.post(f"{proxy.url}/api/4.0/login", data=form) as resp:
                headers = {"Authorization": f"token {(await resp.json())['access_token']}"}
            async with http.get(f"{proxy.url}/api/4.0/user", headers=headers) as resp:
                assert resp.status == 200
            await otlp.held.wait()  # the exporter's thread is stuck: the queue fills up
            for _ in range(40):
                async with http.get(f"{proxy.url}/api/4.0/user", headers=headers) as resp:
                    assert resp.status == 200
        otlp.hold.set()
        assert await proxy.stop() == 0, "\n".join(proxy.lines)
    finally:
        otlp.hold.set()
        await proxy.kill()
    dropped = [line for line in proxy.lines if re.search(r"Queue (is )?full", line)]
    assert len(dropped) == 1, "\n".join(dropped)
    assert len(otlp.spans) < 40


async def test_a_reload_keeps_the_tracing_the_proxy_started_with(
    spy: SpyLooker, make_proxy: MakeProxy, otlp: OtlpReceiver
) -> None:
    """Tracing is set up at start: a reload without the block says it needs a restart, and
    calls go on being traced (and Looker on getting the proxy's traceparent)."""
    proxy = await make_proxy(spy, **traced(otlp))
    app = proxy.client.server.app
    with structlog.testing.capture_logs() as events:
        await app.reload(parse_config(raw_config(spy.base_url), env=ENV))
    assert "tracing_change_needs_restart" in [e["event"] for e in events]
    assert app.tracing is not None
    assert app.view.policy.tracing
    token = await proxy.login("analytics")
    headers = {"traceparent": CALLER_PARENT}
    assert (await proxy.call("GET", "/api/4.0/user", token, headers=headers)).status == 200
    await flushed(proxy)
    upstream = one(otlp.trace(CALLER_TRACE), "looker GET user")
    raw = next(raw for method, path, raw in spy.seen if path == "/api/4.0/user")
    (sent,) = headers_named(raw, b"traceparent")
    assert upstream.named_by(sent)

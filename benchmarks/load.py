"""Load generators: wrk (preferred) or a multi-process aiohttp client, downloads and bursts.

Every loop here is bounded in time or count.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import math
import multiprocessing
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from benchmarks.system import rss_bytes

_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class LoadResult:
    tool: str
    connections: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


USE_WRK = True
"""Set False to use the Python client even when wrk is installed."""


def have_wrk() -> bool:
    return USE_WRK and shutil.which("wrk") is not None


def closed_loop(
    url: str,
    *,
    connections: int,
    duration_s: float,
    headers: Mapping[str, str],
    threads: int,
    workdir: Path,
) -> LoadResult:
    """Keep ``connections`` keep-alive connections busy for ``duration_s`` seconds."""
    if have_wrk():
        return _wrk(url, connections, duration_s, headers, threads, workdir)
    return _python_load(url, connections, duration_s, headers, threads)


def _wrk(
    url: str,
    connections: int,
    duration_s: float,
    headers: Mapping[str, str],
    threads: int,
    workdir: Path,
) -> LoadResult:
    script = workdir / "report.lua"
    if not script.exists():
        script.write_text(_WRK_SCRIPT)
    threads = max(1, min(threads, connections))
    seconds = max(1, round(duration_s))  # wrk takes whole seconds
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(script)]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    line = next((s for s in done.stdout.splitlines() if s.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    r = json.loads(line.removeprefix("WRKJSON "))
    elapsed = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=r["requests"],
        errors=errors,
        rps=r["requests"] / elapsed,
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
    )


def _python_load(
    url: str, connections: int, duration_s: float, headers: Mapping[str, str], processes: int
) -> LoadResult:
    processes = max(1, min(processes, connections))
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        futures = [pool.submit(_py_worker, url, dict(headers), n, duration_s) for n in shares]
        parts = [f.result(timeout=duration_s + 60) for f in futures]
    elapsed = max(p[3] for p in parts) if parts else time.perf_counter() - started
    latencies = sorted(x for p in parts for x in p[2])
    count = sum(p[0] for p in parts)

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return LoadResult(
        tool="python-aiohttp",
        connections=connections,
        duration_s=round(elapsed, 3),
        requests=count,
        errors=sum(p[1] for p in parts),
        rps=count / elapsed,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        max_ms=latencies[-1] * 1000 if latencies else float("nan"),
    )


def _py_worker(
    url: str, headers: dict[str, str], connections: int, duration_s: float
) -> tuple[int, int, list[float], float]:
    return asyncio.run(_py_worker_async(url, headers, connections, duration_s))


async def _py_worker_async(
    url: str, headers: dict[str, str], connections: int, duration_s: float
) -> tuple[int, int, list[float], float]:
    latencies: list[float] = []
    errors = 0
    target = URL(url, encoded=True)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        started = time.perf_counter()
        stop_at = started + duration_s

        async def one_connection() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < stop_at:
                try:
                    async with session.get(target, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return len(latencies), errors, latencies, elapsed


# --- one large download ----------------------------------------------------------------------


@dataclass
class DownloadResult:
    tool: str
    status: int
    bytes: int
    seconds: float
    gb_per_s: float
    rss_baseline_mib: float
    rss_peak_mib: float
    rss_growth_mib: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RssSampler:
    """Samples the summed RSS of a process tree every ``interval_s`` in a thread; keeps the peak."""

    def __init__(self, pids: Callable[[], list[int]], interval_s: float = 0.005) -> None:
        self._pids = pids()
        self._interval = interval_s
        self.baseline = rss_bytes(self._pids)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_bytes(self._pids))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self._pids))


def download(
    url: str, headers: Mapping[str, str], pids: Callable[[], list[int]], timeout_s: float = 120
) -> DownloadResult:
    """Fetch ``url`` once, discard the body; the RSS of ``pids()`` is sampled meanwhile."""
    with RssSampler(pids) as rss:
        if shutil.which("curl"):
            tool = "curl"
            status, size, seconds = _curl(url, headers, timeout_s)
        else:
            tool = "python-http.client"
            status, size, seconds = _http_client_download(url, headers, timeout_s)
    mib = 1024 * 1024
    return DownloadResult(
        tool=tool,
        status=status,
        bytes=size,
        seconds=round(seconds, 4),
        gb_per_s=size / seconds / 1e9 if seconds else 0.0,
        rss_baseline_mib=round(rss.baseline / mib, 2),
        rss_peak_mib=round(rss.peak / mib, 2),
        rss_growth_mib=round((rss.peak - rss.baseline) / mib, 2),
    )


def _curl(url: str, headers: Mapping[str, str], timeout_s: float) -> tuple[int, int, float]:
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", f"{timeout_s:g}"]
    argv += ["-w", "%{http_code} %{size_download} %{time_total}"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=timeout_s + 10, check=False
    )
    parts = done.stdout.split()
    if len(parts) != 3:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stdout} {done.stderr}")
    return int(parts[0]), int(parts[1]), float(parts[2])


def _http_client_download(
    url: str, headers: Mapping[str, str], timeout_s: float
) -> tuple[int, int, float]:
    target = URL(url)
    conn = http.client.HTTPConnection(target.host or "127.0.0.1", target.port, timeout=timeout_s)
    buf = memoryview(bytearray(1024 * 1024))
    size = 0
    try:
        started = time.perf_counter()
        conn.request("GET", target.raw_path_qs, headers=dict(headers))
        resp = conn.getresponse()
        while n := resp.readinto(buf):
            size += n
        return resp.status, size, time.perf_counter() - started
    finally:
        conn.close()


# --- many concurrent requests at once ----------------------------------------------------------


@dataclass
class BurstResult:
    requests: int
    ok: int
    errors: int
    statuses: dict[str, int]
    wall_s: float
    p50_s: float
    max_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BurstClient:
    """Client processes for bursts: ``n`` requests started at once, one connection each.

    The requests are split over ``processes`` aiohttp clients (connector limit 0: no client-side
    pool) that start together at an agreed wall-clock instant, so the client's own CPU (a few
    hundred microseconds per new connection and request in aiohttp) delays the answers as
    little as possible. The processes are started and warmed once, then reused.
    """

    def __init__(self, processes: int) -> None:
        self.processes = max(1, processes)
        self._pool = ProcessPoolExecutor(
            self.processes, mp_context=multiprocessing.get_context("spawn")
        )

    def __enter__(self) -> BurstClient:
        list(self._pool.map(_ready, range(self.processes)))  # interpreter start and imports
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def burst(
        self, url: str, headers: Mapping[str, str], n: int, *, timeout_s: float = 60
    ) -> BurstResult:
        k = min(self.processes, n)
        shares = [n // k + (i < n % k) for i in range(k)]
        start_at = time.time() + 0.2
        futures = [
            self._pool.submit(_burst_worker, url, dict(headers), m, start_at, timeout_s)
            for m in shares
        ]
        parts = [f.result(timeout=timeout_s + 30) for f in futures]
        statuses: collections.Counter[str] = collections.Counter()
        durations: list[float] = []
        for counts, times in parts:
            statuses.update(counts)
            durations.extend(times)
        ok = statuses.get("200", 0)
        return BurstResult(
            requests=n,
            ok=ok,
            errors=n - ok,
            statuses=dict(statuses),
            wall_s=round(max(durations), 4) if durations else math.nan,
            p50_s=round(statistics.median(durations), 4) if durations else math.nan,
            max_s=round(max(durations), 4) if durations else math.nan,
        )


def _ready(_: int) -> bool:
    return True


def _burst_worker(
    url: str, headers: dict[str, str], n: int, start_at: float, timeout_s: float
) -> tuple[dict[str, int], list[float]]:
    return asyncio.run(_burst_async(url, headers, n, start_at, timeout_s))


async def _burst_async(
    url: str, headers: dict[str, str], n: int, start_at: float, timeout_s: float
) -> tuple[dict[str, int], list[float]]:
    statuses: collections.Counter[str] = collections.Counter()
    durations: list[float] = []
    target = URL(url, encoded=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:

        async def one() -> None:
            try:
                async with session.get(target, headers=headers) as resp:
                    await resp.read()
                    statuses[str(resp.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[exc.__class__.__name__] += 1
            durations.append(time.time() - start_at)

        await asyncio.sleep(max(0.0, start_at - time.time()))
        await asyncio.gather(*(one() for _ in range(n)))
    return dict(statuses), durations

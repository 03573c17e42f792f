"""Startup time and memory of ``workspace-proxy emulator``, measured as a user would see them.

Run: ``.venv/bin/python tests/emulator_startup.py [--runs N]``. Each run starts
``python -m workspace_proxy emulator --port P`` and reports the time from exec to the first
``GET /versions`` answered 200 (the port is polled every 2 ms: a measurement, not a test), the
process's RSS then (from /proc), and its RSS once a 4.0 call and a 3.1 call have been answered
(what loading both specs costs). Medians over the runs are printed. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path

POLL_S = 0.002


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


def request(port: int, method: str, path: str, **kwargs: object) -> tuple[int, bytes]:
    connection = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, **kwargs)  # type: ignore[arg-type]
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def one_run() -> tuple[float, float, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workspace_proxy", "emulator", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if request(port, "GET", "/versions")[0] == 200:
                    break
            except ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError("the emulator exited") from None
                time.sleep(POLL_S)
        startup_ms = (time.perf_counter() - started) * 1000
        rss_first = rss_mib(proc.pid)
        form = "client_id=analytics-client-id&client_secret=analytics-client-secret"
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        _, body = request(port, "POST", "/api/4.0/login", body=form, headers=form_type)
        token = json.loads(body)["access_token"]
        for path in ("/api/4.0/connections", "/api/3.1/connections"):
            request(port, "GET", path, headers={"Authorization": f"token {token}"})
        return startup_ms, rss_first, rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    runs = [one_run() for _ in range(args.runs)]
    startup, first, both = (statistics.median(column) for column in zip(*runs, strict=True))
    print(
        f"emulator startup to first GET /versions 200: {startup:.0f} ms (median of {args.runs}); "
        f"RSS then {first:.1f} MiB, after a 4.0 and a 3.1 call {both:.1f} MiB"
    )


if __name__ == "__main__":
    main()

"""Machine facts, tool versions and per-process accounting read from /proc.

CPU time and RSS are read for a whole process tree (the process the harness started, its
descendants and the members of its process group), so multi-worker servers are summed.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the usual small race is acceptable for a benchmark)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- machine and tools -----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        return None
    return None


def machine() -> dict[str, object]:
    cores = os.cpu_count() or 1
    return {
        "cores": cores,
        "cpu_model": cpu_model(),
        "memory_gib": memory_gib(),
        "kernel": platform.release(),
        "line": f"{cores} cores, {cpu_model()}, {memory_gib()} GiB RAM, Linux {platform.release()}",
    }


def _first_line(cmd: list[str], *, any_exit: bool = False) -> str | None:
    """First line a command prints (stdout, else stderr); None if it fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    if (done.returncode != 0 and not any_exit) or not text:
        return None
    return text.splitlines()[0]


def _version(text: str | None) -> str | None:
    """The first token that looks like a version: ``nginx version: nginx/1.22.1`` -> 1.22.1."""
    if text is None:
        return None
    for token in text.replace("/", " ").split():
        if token[:1].isdigit() and "." in token:
            return token
    return text


def tool_versions(python: str = sys.executable) -> dict[str, str | None]:
    import aiohttp

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }
    for name, cmd in {
        "nginx": ["nginx", "-v"],
        "wrk": ["wrk", "-v"],
        "curl": ["curl", "--version"],
    }.items():
        # `wrk -v` prints its version and exits 1
        found = shutil.which(cmd[0])
        versions[name] = _version(_first_line(cmd, any_exit=True)) if found else None
    versions["workspace_proxy"] = _first_line(
        [python, "-c", "import workspace_proxy as w; print(w.__version__, w.__file__)"]
    )
    versions["uvloop"] = _first_line([python, "-c", "import uvloop; print(uvloop.__version__)"])
    return versions


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def ensure_tools(say: Callable[[str], None], *, install: bool = True) -> dict[str, bool]:
    """nginx and wrk, installed with apt-get when missing (root only). Reports what is missing."""
    wanted = {"nginx": "nginx-light", "wrk": "wrk"}
    missing = [tool for tool in wanted if shutil.which(tool) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = [wanted[t] for t in missing]
        say(f"installing {' '.join(packages)} with apt-get ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for attempt in ("install", "update+install"):
            if attempt == "update+install":
                _run_quiet(["apt-get", "update", "-qq"], env)
            if _run_quiet(["apt-get", "install", "-y", "-qq", *packages], env):
                break
        if shutil.which("nginx") is None and "nginx" in missing:
            # nginx-light is Debian's smallest build; plain `nginx` exists on Ubuntu and newer.
            _run_quiet(["apt-get", "install", "-y", "-qq", "nginx"], env)
    have = {tool: shutil.which(tool) is not None for tool in wanted}
    for tool, ok in have.items():
        if not ok:
            say(f"NOTE: {tool} is not available and could not be installed")
    return have


def _run_quiet(cmd: list[str], env: dict[str, str]) -> bool:
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# --- /proc accounting ------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, utime+stime in ticks) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])


def process_tree(root: int) -> list[int]:
    """``root``, its descendants and the other members of its process group."""
    parents: dict[int, list[int]] = {}
    group: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        st = _stat(pid)
        if st is None:
            continue
        parents.setdefault(st[0], []).append(pid)
        if st[1] == root:
            group.append(pid)
    found = {root}
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.update(group)
    return sorted(p for p in found if _stat(p) is not None)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of the processes, in seconds (gone processes count 0)."""
    ticks = 0
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            ticks += st[2]
    return ticks / CLOCK_TICKS


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def listen_overflows() -> int:
    """Machine-wide count of connections dropped because an accept queue was full.

    (TcpExt ListenOverflows from /proc/net/netstat.) A dropped SYN is retried by the client
    after 1 s, so a burst that overflows a listen backlog gains whole seconds."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0

"""promtool, Prometheus's rule checker and rule unit-test runner, for the observability tests.

Found on PATH or in this Python environment's ``bin`` directory; otherwise extracted there from
Debian's ``prometheus`` package: ``apt-get download`` fetches the package (after an
``apt-get update`` if the package lists do not have it yet) and only its static ``promtool``
binary is kept. Nothing is installed system-wide and no Prometheus service is started (which
``apt-get install prometheus`` would do, with a dozen JavaScript packages for its web UI).
``python tests/promtool.py`` installs it by hand."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "prometheus"
TIMEOUT_S = 300


def target_dir() -> Path:
    """Where an extracted promtool goes: the virtualenv's bin, else a per-user cache."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    return Path.home() / ".cache" / "workspace-proxy" / "bin"


def find() -> str | None:
    """A promtool that runs, from PATH or from ``target_dir()``."""
    for candidate in (shutil.which("promtool"), target_dir() / "promtool"):
        if candidate is not None and _runs(str(candidate)):
            return str(candidate)
    return None


def ensure() -> tuple[str | None, list[str]]:
    """(promtool's path or None, what was done to get it)."""
    found = find()
    if found is not None:
        return found, []
    log: list[str] = []
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return None, ["apt-get and dpkg-deb are not available: install promtool by hand"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with tempfile.TemporaryDirectory(prefix="promtool-") as tmp:
        for attempt in ("download", "update+download"):
            if attempt == "update+download":
                log.append(_run(["apt-get", "update", "-qq"], env, tmp))
            log.append(_run(["apt-get", "download", "-qq", PACKAGE], env, tmp))
            debs = sorted(Path(tmp).glob(f"{PACKAGE}_*.deb"))
            if debs:
                break
        else:
            return None, log
        extracted = Path(tmp) / "root"
        log.append(_run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], env, tmp))
        binary = extracted / "usr" / "bin" / "promtool"
        if not binary.is_file():
            return None, [*log, f"{debs[0].name} has no usr/bin/promtool"]
        target_dir().mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, target_dir() / "promtool")
    return find(), [*log, f"extracted promtool from {debs[0].name} into {target_dir()}"]


def _run(cmd: list[str], env: dict[str, str], cwd: str) -> str:
    try:
        done = subprocess.run(
            cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd)}: {exc}"
    return f"{' '.join(cmd)}: exit {done.returncode} {done.stderr.strip()[-300:]}"


def _runs(path: str) -> bool:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


if __name__ == "__main__":
    path, steps = ensure()
    print("\n".join(steps))
    print(path or "promtool could not be had", file=sys.stdout if path else sys.stderr)
    sys.exit(0 if path else 1)

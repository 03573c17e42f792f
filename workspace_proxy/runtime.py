"""Private runtime directories, named after the process that owns them.

``serve --workers`` keeps its broker socket, the workers' control sockets and the metrics files
in ``workspace-proxy-<pid>-<random>`` (0700) in the temporary directory (0.1 also made
``workspace-proxy-front-<pid>-<random>`` ones: those are cleaned up too). A process killed with
SIGKILL cannot remove its own, so every start removes those of ours (same uid, not a symlink)
whose owner is no longer alive, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from typing import Final

import structlog

log = structlog.get_logger("workspace_proxy.runtime")
_NAME: Final = re.compile(r"workspace-proxy-(?:front-)?([1-9][0-9]{0,9})-[A-Za-z0-9_]+")


def new_runtime_dir() -> str:
    """A new private (0700) directory named after this process, in the temporary directory."""
    return tempfile.mkdtemp(prefix=f"workspace-proxy-{os.getpid()}-")


def supervisor_runtime_dir() -> str:
    """The ``--workers`` supervisor's directory, with its ``metrics`` subdirectory; those of
    killed instances are removed first. Imports nothing of prometheus_client: the caller sets
    ``PROMETHEUS_MULTIPROC_DIR`` to the ``metrics`` directory before anything imports it."""
    remove_stale()
    path = new_runtime_dir()
    os.makedirs(os.path.join(path, "metrics"))
    return path


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove our directories in ``parent`` (default: the temporary directory) whose owner
    process is dead; returns their paths."""
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    if removed:
        log.info("stale_runtime_dirs_removed", paths=removed)
    return removed


def remove_worker_files(runtime: str, pid: int) -> None:
    """What an exited worker leaves in the supervisor's directory: its control socket."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(runtime, f"control-{pid}.sock"))
    remove_stale(runtime)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True

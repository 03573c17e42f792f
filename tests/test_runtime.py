"""Runtime directories: named after their owner; stale ones (dead owner) removed, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from workspace_proxy.runtime import new_runtime_dir, remove_stale


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    return int(child.stdout)


def test_only_our_directories_of_dead_owners_are_removed(tmp_path: Path) -> None:
    """Removed: ours (by name) of a dead pid, directories owned by us. Kept: a live owner's,
    other names, another uid's, a symlink (and its target), a file."""
    dead, alive = _dead_pid(), os.getpid()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    made = {
        "stale": tmp_path / f"workspace-proxy-{dead}-abc_12",
        "stale_front": tmp_path / f"workspace-proxy-front-{dead}-x9",
        "live": tmp_path / f"workspace-proxy-{alive}-abc",
        "old_style": tmp_path / "workspace-proxy-abcdefgh",
        "not_ours": tmp_path / f"other-proxy-{dead}-abc",
        "other_uid": tmp_path / f"workspace-proxy-{dead}-uid",
    }
    for path in made.values():
        path.mkdir()
        (path / "inside").write_text("x")
    os.chown(made["other_uid"], 54321, 54321)
    link = tmp_path / f"workspace-proxy-{dead}-link"
    link.symlink_to(elsewhere)
    file = tmp_path / f"workspace-proxy-{dead}-file"
    file.write_text("x")
    removed = remove_stale(str(tmp_path))
    assert sorted(removed) == sorted(str(made[k]) for k in ("stale", "stale_front"))
    assert not made["stale"].exists()
    assert not made["stale_front"].exists()
    for key in ("live", "old_style", "not_ours", "other_uid"):
        assert (made[key] / "inside").exists(), key
    assert link.is_symlink()
    assert (elsewhere / "keep").exists()
    assert file.exists()


def test_new_runtime_dir_is_private_and_named_after_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the temporary directory, 0700, named after this process, kept while it lives."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = Path(new_runtime_dir())
    assert path.parent == tmp_path
    assert path.name.startswith(f"workspace-proxy-{os.getpid()}-")
    assert path.stat().st_mode & 0o777 == 0o700
    assert remove_stale() == []
    assert path.exists()

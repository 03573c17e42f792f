"""`make demo` (workspace-proxy demo) tells its story and exits 0: guarded like any feature."""

from __future__ import annotations

import asyncio
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


async def test_demo_passes() -> None:
    """The demo's emulator, proxy and stock SDK agree: production direct, dev through the proxy."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workspace_proxy",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 100)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "Demo passed." in text
    assert "[FAIL]" not in text
    assert text.count("[ok]") == 4
    assert "ran in production" not in text.split("2. Through workspace-proxy")[1]

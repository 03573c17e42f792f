"""The client examples in README.md, run as written against a real `workspace-proxy serve`.

The ```sh blocks that address the proxy (127.0.0.1:8080) are taken from README.md, the port is
replaced with the test proxy's and the secrets the README leaves to the reader are filled in;
nothing else is changed. The proxy's config adds the README's caller `tableau-analytics` to team
analytics (workspace dev)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import ENV, ProxyProcess, assert_every_call_pinned, raw_config

from workspace_proxy.emulator import LookerEmulator

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).parent.parent / "README.md"
README_PROXY = "127.0.0.1:8080"
CALLER = "tableau-analytics"
SECRET = ENV["ANALYTICS_CALLER_SECRET"]
RUN_TIMEOUT_S = 30
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.DOTALL | re.MULTILINE)


def examples(after: str) -> list[str]:
    """The ```sh blocks that follow the text `after`, up to the next heading, that use the proxy."""
    text = README.read_text()
    assert after in text, f"README.md no longer has {after!r}"
    section, fenced = [], False
    for line in text[text.index(after) :].splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            break  # the next heading (a `#` inside a code block is a shell comment)
        section.append(line)
    blocks = [b for b in SH_BLOCK.findall("".join(section)) if README_PROXY in b]
    assert blocks, f"README.md has no ```sh block using {README_PROXY} after {after!r}"
    return blocks


@pytest.fixture
async def served(looker: LookerEmulator, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    """`workspace-proxy serve` as a child process, with the README's caller in team analytics."""
    raw = raw_config(looker.base_url, shutdown={"drain_s": 0, "grace_s": 5})
    raw["teams"]["analytics"]["callers"].append(
        {"client_id": CALLER, "client_secret": {"env": "ANALYTICS_CALLER_SECRET"}}
    )
    proxy = await ProxyProcess.start(raw, tmp_path)
    yield proxy
    try:
        assert await proxy.stop() == 0, "\n".join(proxy.lines)
    finally:
        await proxy.kill()


async def run_sh(script: str, cwd: Path) -> str:
    """Run a shell snippet with bash (-e, pipefail); `python` is this virtualenv's python."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.fail("bash is needed to run the README's shell examples")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "LOOKERSDK_"))
    }
    proc = await asyncio.create_subprocess_exec(
        bash, "-e", "-o", "pipefail", "-c", script,
        cwd=cwd,
        env={**inherited, "PATH": path, "NO_PROXY": "127.0.0.1,localhost", "SECRET": SECRET},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"README example ran longer than {RUN_TIMEOUT_S} s") from None
    assert proc.returncode == 0, f"exit {proc.returncode}\n{script}\n{out.decode()}{err.decode()}"
    return out.decode()


def for_proxy(block: str, proxy: ProxyProcess) -> str:
    """The test proxy's port for the README's, and the secret for any `...SECRET=...`."""
    block = block.replace(README_PROXY, f"127.0.0.1:{proxy.port}")
    return re.sub(r"\b(\w*SECRET)=\.\.\.", rf"\1={SECRET}", block)


async def test_readme_curl_example_shows_the_dev_session(
    looker: LookerEmulator, served: ProxyProcess, tmp_path: Path
) -> None:
    """README 'With curl': log in to the proxy, then GET /session shows workspace_id dev."""
    if shutil.which("curl") is None:
        pytest.fail(
            "curl is not installed; the README's curl examples need it: apt-get install curl"
        )
    [block] = examples("With curl")
    assert "$SECRET" in block, "the example reads the caller secret from $SECRET"
    output = await run_sh(for_proxy(block, served), tmp_path)
    session = json.loads(output)
    assert session["workspace_id"] == "dev", output
    assert assert_every_call_pinned(looker) == 1
    assert looker.logins == 1, "curl's login was answered by the proxy"


async def test_readme_python_sdk_example_prints_dev(
    looker: LookerEmulator, served: ProxyProcess, tmp_path: Path
) -> None:
    """README 'Point a client at it': the stock looker_sdk one-liner prints dev."""
    block = examples("Point a client at it")[0]  # the "With curl" block follows it
    assert "LOOKERSDK_CLIENT_SECRET=..." in block
    output = await run_sh(for_proxy(block, served), tmp_path)
    assert output.strip() == "dev", output
    assert assert_every_call_pinned(looker) == 1

"""README.md, followed as a newcomer follows it: every ```sh block is run, in order, as
written, in one shell, in a copy of the repository, on the bundled emulator.

The blocks are sent one after the other to one `bash` (as a reader pastes them into one
terminal), so exports, the virtualenv it activates and the background jobs it starts (`&`,
later `kill %2`) carry over from block to block; `set -e` is on, so a failing command fails the
test with the output so far. The copy is a fresh one (the repository's files, no `.venv`): the
README's own first block creates the virtualenv and installs the proxy and the SDK from PyPI.
The shell's PATH has no virtualenv of ours on it.

Two comments in README.md steer the run, and nothing else does:

- ``<!-- readme-test: wait for "TEXT" -->`` before a block that starts or signals a background
  process: once the block has run, the test waits until TEXT has appeared in the output since
  the block began (the emulator's banner, the proxy's `listening` or `config_reloaded` line),
  as a reader would see it before going on. A block that starts a background job without it
  fails the test.
- ``<!-- readme-test: skip: REASON -->``: the block is not run, for the reason given. Which
  blocks are skipped is pinned below (``SKIPPED``): a new skip fails the test until it is
  listed there too.

What the blocks print is checked where the README says what they print (``EXPECTED``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import promtool
import pytest

pytestmark = pytest.mark.timeout(600)

ROOT: Final = Path(__file__).resolve().parent.parent
README: Final = ROOT / "README.md"
MARK: Final = re.compile(
    r"^<!-- readme-test: (?:wait for \"(?P<wait>.+)\"|skip: (?P<skip>.+)) -->$"
)
SKIPPED: Final = {
    "make test": "the developer's commands (make test runs this very test)",
    "docker build": "needs a container engine",
    "export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318": "tests/test_tracing_setup.py",
}
"""The first word(s) of each block that is not run, and why (the README says why in full)."""
PORTS: Final = (8080, 9090, 19999)
"""What the README's configuration listens on: the proxy, its admin listener, the emulator."""
EXPECTED: Final = [
    ("pip install . looker-sdk", "Successfully installed"),
    ("workspace-proxy emulator &", "analytics-client-id  analytics-client-secret"),
    ("workspace-proxy emulator &", "GET  /_emulator/faults"),
    ("check-config proxy.yaml\n", "team analytics: workspace dev; callers: analytics-caller"),
    ("init40().session().workspace_id", "\ndev\n"),
    ("/api/4.0/session   #", '"workspace_id": "dev"'),
    ("_emulator/audit", "GET /api/4.0/session dev"),
    ("workspace-proxy status            #", "analytics  managed  dev         dev"),
    ("workspace-proxy status            #", "idle (never needed yet)"),
    ("kill -HUP %2                      #", '"added": ["marketing"]'),
    ("me().display_name", "\nMarketing\n"),
    ("api/4.0/user\n", "HTTP/1.1 503 Service Unavailable"),
    ("api/4.0/user\n", "Retry-After: 30"),
    ("api/4.0/user\n", "This is a configuration error, not an outage: Looker refused"),
    ("workspace-proxy status\n", "FAILING (configuration), next attempt in 30s"),
    ("workspace-proxy status\n", "marketing: to fix: Looker refused the team's API credentials"),
    ('["display_name"])\'   # -> Marketing', "\nMarketing\n"),
    ("kill %2 %1; wait", '"event": "stopped"'),
    ("promtool test rules", "SUCCESS"),
]
"""(a piece of a block, a piece of what that block must print)."""
BLOCK_TIMEOUT_S: Final = 120.0
WAIT_TIMEOUT_S: Final = 30.0


@dataclass
class Block:
    line: int
    """Where it starts in README.md."""
    text: str
    wait: str | None = None
    skip: str | None = None

    @property
    def first(self) -> str:
        return self.text.strip().splitlines()[0]


def readme_blocks() -> list[Block]:
    """Every ```sh block of README.md with the readme-test comment just above it, if any."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            i += 1
            continue
        lang, start = line[3:].strip(), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        assert lang not in ("bash", "shell", "console", "shell-session"), (
            f"README.md:{start + 1}: write shell blocks as ```sh, so that they are run"
        )
        if lang == "sh":
            above = lines[start - 1] if start else ""
            mark = MARK.match(above)
            assert mark or not above.startswith("<!-- readme-test"), f"README.md:{start}: {above}"
            text = "\n".join(lines[start + 1 : end]) + "\n"
            wait, skip = (mark.group("wait"), mark.group("skip")) if mark else (None, None)
            blocks.append(Block(start + 2, text, wait, skip))
        i = end + 1
    return blocks


def repository_copy(target: Path) -> None:
    """The repository's files as a fresh clone has them (tracked and new ones, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (target / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / os.fsdecode(name))


def shell_env(extra_path: list[str]) -> dict[str, str]:
    """A newcomer's environment: ours, without our virtualenv, Looker or proxy settings."""
    ours = {str(Path(sys.executable).parent), os.environ.get("VIRTUAL_ENV", "") + "/bin"}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in ours]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOOKERSDK_", "WP_", "PYTEST_", "PROMETHEUS_"))
        and k.upper() not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        and not k.upper().endswith(("_PROXY", "_SECRET"))
    }
    return {**env, "PATH": os.pathsep.join([*extra_path, *path]), "NO_PROXY": "127.0.0.1"}


class Shell:
    """One bash reading commands from a pipe; its output (and its jobs') kept line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._grew = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str]) -> Shell:
        bash = shutil.which("bash")
        assert bash is not None, "bash is needed to run the README's shell blocks"
        proc = await asyncio.create_subprocess_exec(
            bash, "--noprofile", "--norc",
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its jobs too: all stopped at the end, whatever happens
        )  # fmt: skip
        shell = cls(proc)
        await shell.send("set -e -o pipefail\n")
        return shell

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._grew.set()

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        await self.proc.stdin.drain()

    async def until(self, text: str, since: int, timeout_s: float) -> None:
        """Until a line since ``since`` contains ``text``; fails if the shell exits first."""
        async with asyncio.timeout(timeout_s):
            while not any(text in line for line in self.lines[since:]):
                if self.reader.done():
                    raise AssertionError("the shell exited (set -e: a command failed)")
                self._grew.clear()
                await asyncio.wait(
                    [asyncio.ensure_future(self._grew.wait()), self.reader],
                    return_when=asyncio.FIRST_COMPLETED,
                )

    def output(self, since: int = 0) -> str:
        return "\n".join(self.lines[since:]) + "\n"

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
async def shell(tmp_path: Path) -> AsyncIterator[Shell]:
    busy = [port for port in PORTS if not _free(port)]
    if busy:
        pytest.fail(
            f"the README's configuration listens on 127.0.0.1 ports {', '.join(map(str, PORTS))};"
            f" {', '.join(map(str, busy))} in use: stop what holds them and run the test again"
        )
    clone = tmp_path / "workspace-proxy"
    repository_copy(clone)
    found, notes = await asyncio.to_thread(promtool.ensure)
    assert found, "promtool is needed for the README's rules blocks: " + "; ".join(notes)
    shell = await Shell.start(clone, shell_env([str(Path(found).parent)]))
    try:
        yield shell
    finally:
        shell.stop()
        await shell.proc.wait()
        shell.reader.cancel()
        await asyncio.gather(shell.reader, return_exceptions=True)


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_every_shell_block_is_run_or_skipped_for_a_listed_reason() -> None:
    """No block is skipped silently; a block starting a background job waits for its line."""
    blocks = readme_blocks()
    skipped = {b.first.split(" ", 2)[0] + " " + b.first.split(" ", 2)[1] for b in blocks if b.skip}
    assert skipped == set(SKIPPED), "a skipped README block must be listed in SKIPPED"
    for block in blocks:
        starts_job = any(
            line.split("#")[0].rstrip().endswith("&") for line in block.text.splitlines()
        )
        signals_job = "kill -HUP" in block.text
        assert block.wait or block.skip or not (starts_job or signals_job), (
            f'README.md:{block.line}: say what to wait for: <!-- readme-test: wait for "..." -->'
        )
    run = [b.text for b in blocks if not b.skip]
    for piece, _ in EXPECTED:
        assert any(piece in text for text in run), f"no README block has {piece!r} any more"


async def test_the_readme_works_as_written(shell: Shell) -> None:
    """From a fresh copy: install, start the emulator and the proxy, call through it with the
    stock SDK and curl, see the status, add a team, break it, find out why, fix it, stop; then
    the README's other commands. Every block exits 0, in order, and prints what the README says
    it prints; nothing is left running."""
    outputs: list[tuple[Block, str]] = []
    for index, block in enumerate(readme_blocks()):
        if block.skip:
            continue
        since = len(shell.lines)
        done = f"::readme-block-{index}-done::"
        await shell.send(f"{block.text}echo '{done}'\n")
        try:
            await shell.until(done, since, BLOCK_TIMEOUT_S)
            if block.wait:
                await shell.until(block.wait, since, WAIT_TIMEOUT_S)
        except (AssertionError, TimeoutError):
            raise AssertionError(
                f"README.md:{block.line}: this block did not run through:\n{block.text}\n"
                f"--- its output ---\n{shell.output(since)}"
            ) from None
        outputs.append((block, shell.output(since)))
    await shell.send("exit\n")
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        assert await shell.proc.wait() == 0, shell.output()
        await shell.reader  # every writer, background jobs too, has closed the output
    with pytest.raises(ProcessLookupError):
        os.killpg(shell.proc.pid, 0)  # nothing the README started is still running
    for piece, expected in EXPECTED:
        block, output = next((b, o) for b, o in outputs if piece in b.text)
        assert expected in output, f"README.md:{block.line}: {expected!r} not in:\n{output}"

"""Editors' YAML support, for real: yaml-language-server (the engine of VS Code's YAML extension
by Red Hat, and of Neovim's, Emacs's, Helix's and Zed's YAML support) is run as a language
server over stdio, as an editor runs it, on the examples in config/ and on broken copies.

It finds config/schema.json through each file's `# yaml-language-server: $schema=./schema.json`
modeline, as an editor would; it must report nothing on the examples, report each mistake on
its line, complete keys with their descriptions, and show a key's description on hover.

tests/editor/package.json and package-lock.json pin the server; `npm ci` installs it outside
the work tree (beside this Python environment) the first time and whenever they change. A
missing node/npm or a failed install fails the tests: they are never skipped."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)  # the first `npm ci` downloads the server

ROOT = Path(__file__).resolve().parent.parent
PINNED = Path(__file__).resolve().parent / "editor"
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
SIDECAR = (ROOT / "config" / "sidecar.yaml").read_text(encoding="utf-8")
MIN_NODE_MAJOR = 20
INSTALL_TIMEOUT_S = 100
ANSWER_TIMEOUT_S = 20
SETTINGS = {
    "validate": True,
    "hover": True,
    "completion": True,
    "schemaStore": {"enable": False},  # no network: only the modeline's schema
    "schemas": {},
}


def install_dir() -> Path:
    base = Path(sys.prefix) if sys.prefix != sys.base_prefix else Path.home() / ".cache"
    return base / "workspace-proxy-editor-test"


@pytest.fixture(scope="module")
def server() -> Path:
    """yaml-language-server's launcher, installed from tests/editor's pinned versions."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"node and npm are needed to run yaml-language-server (node: {node}, npm: {npm}); "
            f"install Node.js >= {MIN_NODE_MAJOR} with npm (e.g. apt-get install nodejs npm)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        pytest.fail(f"node {version} is too old: yaml-language-server needs >= {MIN_NODE_MAJOR}")
    target = install_dir()
    launcher = target / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
    digest = hashlib.sha256(version.encode())
    for name in ("package.json", "package-lock.json"):
        digest.update((PINNED / name).read_bytes())
    stamp = target / ".installed"
    if stamp.is_file() and stamp.read_text() == digest.hexdigest() and launcher.is_file():
        return launcher
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(PINNED / name, target / name)
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=target,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`npm ci` in {target} took more than {INSTALL_TIMEOUT_S} s")
    if done.returncode != 0:
        pytest.fail(f"`npm ci` in {target} failed ({done.returncode}):\n{done.stderr}")
    stamp.write_text(digest.hexdigest())
    return launcher


class LanguageServer:
    """A language server on stdio, driven as an editor drives it (JSON-RPC, LSP framing)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ids = 0
        self.answers: dict[int, asyncio.Future[Any]] = {}
        self.diagnostics: dict[str, list[dict[str, Any]]] = {}
        self.published = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        self.ids += 1
        answer = self.answers[self.ids] = asyncio.get_running_loop().create_future()
        self._send({"id": self.ids, "method": method, "params": params})
        return await asyncio.wait_for(answer, ANSWER_TIMEOUT_S)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            length = 0
            while (line := await self.proc.stdout.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if not line:
                return
            message = json.loads(await self.proc.stdout.readexactly(length))
            method = message.get("method")
            if "id" in message and method is not None:  # the server asks the editor
                items = (
                    message["params"].get("items", [])
                    if method == "workspace/configuration"
                    else []
                )
                result = [SETTINGS if i.get("section") == "yaml" else None for i in items] or None
                self._send({"id": message["id"], "result": result})
            elif "id" in message:
                self.answers.pop(message["id"]).set_result(message.get("result"))
            elif method == "textDocument/publishDiagnostics":
                self.diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
                self.published.set()

    async def open(self, path: Path) -> list[tuple[int, str]]:
        """Open ``path`` as an editor does; its diagnostics as (line, message), sorted."""
        uri = path.as_uri()
        self.diagnostics.pop(uri, None)
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        document = {"uri": uri, "languageId": "yaml", "version": 1, "text": text}
        self.notify("textDocument/didOpen", {"textDocument": document})
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            while uri not in self.diagnostics:
                self.published.clear()
                await self.published.wait()
        return sorted((d["range"]["start"]["line"], d["message"]) for d in self.diagnostics[uri])


@pytest.fixture
async def editor(server: Path) -> AsyncIterator[LanguageServer]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(server), "--stdio",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    lsp = LanguageServer(proc)
    capabilities = {
        "textDocument": {
            "publishDiagnostics": {},
            "completion": {"completionItem": {"snippetSupport": False}},
            "hover": {"contentFormat": ["plaintext", "markdown"]},
        },
        "workspace": {"configuration": True},
    }
    await lsp.request(
        "initialize",
        {"processId": os.getpid(), "rootUri": ROOT.as_uri(), "capabilities": capabilities},
    )
    lsp.notify("initialized", {})
    lsp.notify("workspace/didChangeConfiguration", {"settings": {"yaml": SETTINGS}})
    yield lsp
    proc.kill()
    await proc.wait()
    lsp.reader.cancel()
    await asyncio.gather(lsp.reader, return_exceptions=True)


def beside_the_schema(tmp_path: Path, name: str, text: str) -> Path:
    """A YAML file next to a copy of config/schema.json (its modeline says ./schema.json)."""
    shutil.copy(ROOT / "config" / "schema.json", tmp_path / "schema.json")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return text.splitlines().index(needle)


async def test_the_examples_have_no_problems_in_an_editor(editor: LanguageServer) -> None:
    """Every config/*.yaml, opened in place, loads the schema named by its modeline and gets
    no diagnostic."""
    for path in EXAMPLES:
        assert await editor.open(path) == [], path.name


TEAM = "    workspace: production"
MISTAKES = [
    # (replaced in config/sidecar.yaml, by, line the editor flags, what it says)
    (TEAM, "    workspace: staging", "    workspace: staging", "Value is not accepted."),
    (TEAM, f"{TEAM}\n    colour: x", "    colour: x", "Property colour is not allowed."),
    (
        TEAM,
        f"{TEAM}\n    max_concurrency: 0",
        "    max_concurrency: 0",
        "Value is below the minimum",
    ),
    (
        TEAM,
        f"{TEAM}\n    looker_client_ids: [x]",
        "    looker_client_ids: [x]",
        "Property looker_client_ids is not allowed.",  # a key of the other team mode
    ),
    (
        TEAM,
        f"{TEAM}\n    git_branch: {{project: p, name: n}}",
        TEAM,  # where the team's mapping starts: a conflict of two of its keys
        "Matches a schema that is not allowed.",
    ),
    ("teams:", "listen: {port: 70000}\nteams:", "listen: {port: 70000}", "Value is above the max"),
    ("teams:", "log_level: loud\nteams:", "log_level: loud", "Value is not accepted."),
    (
        "teams:",
        "teams:\n  bad name!: {mode: passthrough, workspace: dev, looker_client_ids: [x]}",
        "  bad name!: {mode: passthrough, workspace: dev, looker_client_ids: [x]}",
        "String does not match the pattern",
    ),
]


async def test_an_editor_flags_each_mistake_on_its_line(
    editor: LanguageServer, tmp_path: Path
) -> None:
    """Each mistake made to config/sidecar.yaml is reported alone, on its line."""
    for i, (old, new, flagged, message) in enumerate(MISTAKES):
        assert old in SIDECAR
        text = SIDECAR.replace(old, new, 1)
        [(line, said)] = await editor.open(beside_the_schema(tmp_path, f"mistake-{i}.yaml", text))
        assert (line, said[: len(message)]) == (line_of(text, flagged), message), new


async def test_an_editor_flags_a_missing_required_key(
    editor: LanguageServer, tmp_path: Path
) -> None:
    """A managed team without callers is reported as such."""
    text = SIDECAR.replace("    callers:", "    callerz:", 1)
    found = await editor.open(beside_the_schema(tmp_path, "missing.yaml", text))
    assert [m for _, m in found] == [
        'Missing property "callers".',
        "Property callerz is not allowed.",
    ]


async def test_an_editor_completes_keys_and_shows_descriptions(
    editor: LanguageServer, tmp_path: Path
) -> None:
    """Completion in `shutdown:` offers the key not yet written with its description; hovering a
    key shows the description from its docstring in workspace_proxy/config.py."""
    text = "# yaml-language-server: $schema=./schema.json\nshutdown:\n  drain_s: 5\n  \n"
    path = beside_the_schema(tmp_path, "partial.yaml", text)
    await editor.open(path)
    document = {"uri": path.as_uri()}
    completion = await editor.request(
        "textDocument/completion",
        {"textDocument": document, "position": {"line": 3, "character": 2}},
    )
    offered = {item["label"]: item.get("documentation") for item in completion["items"]}
    assert offered == {
        "grace_s": "Then wait at most this long for in-flight requests before exiting."
    }
    hover = await editor.request(
        "textDocument/hover", {"textDocument": document, "position": {"line": 2, "character": 4}}
    )
    assert "keep serving (readiness already 503) this long" in hover["contents"]["value"]

"""The reliability record: what the fault matrix, hostile-input and isolation tests observed.

Tests call ``record(category, case, expected, status=..., answer=..., looker=..., afterwards=...)``
with values they *observed* (status line, the answer's message, what reached Looker, what the
next request got). ``install(config)`` — called by a session-scoped autouse fixture in each
recording module — registers a small pytest plugin that remembers every recording test's outcome
and, at the end of the session, writes ``docs/reliability.md``:

- only when all recording modules ran completely (nothing deselected, nothing left unrun) and every
  recording test passed or is a known bug (strict ``xfail``), otherwise the old file is left alone
  and the terminal summary says why;
- sorted, without timestamps, ports, ids or timings, so an unchanged proxy gives the same bytes.

The verdict column comes from the test outcome, never from the test's own claim: a test that
records and then passes is "ok", a strict xfail is "KNOWN BUG" with its reason.

Also the raw-socket helpers the recording tests share (``raw_exchange``, ``RawAnswer``) and
``audit_summary``, which turns emulator audit entries into a stable description.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from harness import ENV, Proxy, ProxyServer, raw_config, timing
from multidict import CIMultiDict
from pytest_aiohttp import AiohttpClient
from yarl import URL

from workspace_proxy.app import create_app
from workspace_proxy.emulator import AuditEntry
from workspace_proxy.session import Clock
from workspace_proxy.validation import parse_config

TABLE: Final = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
MODULES: Final = (
    "test_attacks.py",
    "test_faults_matrix.py",
    "test_hostile.py",
    "test_isolation.py",
)
CATEGORIES: Final = {
    "attack": "Attacks on the pin, byte for byte (tests/test_attacks.py)",
    "fault": "Fault matrix (tests/test_faults_matrix.py)",
    "hostile": "Hostile HTTP (tests/test_hostile.py)",
    "isolation": "Team isolation (tests/test_isolation.py)",
}
_PLUGIN_NAME: Final = "workspace_proxy_reliability"
_MAX_CELL: Final = 110


# --- recording -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    category: str
    case: str
    expected: str
    status: str
    answer: str
    looker: str
    afterwards: str
    nodeid: str


_ROWS: dict[tuple[str, str], Row] = {}


def current_test() -> str:
    """The running test's node id (pytest sets PYTEST_CURRENT_TEST for every phase)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    return current.rsplit(" (", 1)[0]


def record(
    category: str,
    case: str,
    expected: str,
    *,
    status: str,
    answer: str,
    looker: str,
    afterwards: str,
) -> None:
    """Remember one observed outcome; ``case`` must be unique within ``category``."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}")
    row = Row(category, case, expected, status, answer, looker, afterwards, nodeid=current_test())
    previous = _ROWS.get((category, case))
    if previous is not None and previous.nodeid != row.nodeid:
        raise ValueError(f"case {case!r} recorded by {previous.nodeid} and {row.nodeid}")
    _ROWS[(category, case)] = row


# --- describing observations ---------------------------------------------------------------------


def clip(text: str, limit: int = _MAX_CELL) -> str:
    """One line, at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


NO_SESSION: Final = (
    "workspace-proxy could not obtain a Looker session pinned to the team's workspace: ",
    "workspace-proxy cannot pin a Looker session to the team's workspace: ",
)
"""The proxy's fixed 503 preambles: an outage, a configuration error."""


def short(message: str) -> str:
    """A message without the proxy's fixed 503 preamble."""
    for preamble in NO_SESSION:
        message = message.removeprefix(preamble)
    return message


def answer_of(body: bytes) -> str:
    """The message of a Looker-shaped body, else a short description of what came back."""
    if not body:
        return "(empty body)"
    try:
        parsed = json.loads(body)
    except ValueError:
        first = body.decode("utf-8", "backslashreplace").strip().splitlines()[0]
        return clip(f"plain text: {first}")
    if is_looker_shaped(parsed):
        return clip(short(str(parsed["message"])))
    return "(a JSON answer from Looker, not an error)"


def is_looker_shaped(parsed: object) -> bool:
    return (
        isinstance(parsed, dict)
        and isinstance(parsed.get("message"), str)
        and isinstance(parsed.get("documentation_url"), str)
    )


def audit_summary(entries: Iterable[AuditEntry]) -> str:
    """``nothing`` or e.g. ``2x GET /api/4.0/user as user 2 in dev → 200`` (stable order)."""
    counts = Counter(
        f"{e.method} {e.path}"
        + (f" as user {e.user_id} in {e.workspace}" if e.user_id else " (no session)")
        + f" → {e.status}"
        for e in entries
    )
    if not counts:
        return "nothing"
    return "; ".join(f"{n}x {what}" for what, n in sorted(counts.items()))


def status_of(status: int, headers: CIMultiDict[str] | None = None) -> str:
    """``503, Retry-After: 1``; 0 is a connection closed without any answer."""
    if status == 0:
        return "no answer (connection closed)"
    text = str(status)
    if headers is not None and "Retry-After" in headers:
        text += f", Retry-After: {headers['Retry-After']}"
    return text


# --- raw HTTP on a real socket -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """The final (non-1xx) answer read off a socket; status 0 when none came."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    @property
    def json(self) -> object:
        return json.loads(self.body)

    @property
    def looker_shaped(self) -> bool:
        try:
            return is_looker_shaped(self.json)
        except ValueError:
            return False

    @property
    def message(self) -> str:
        return "" if self.status == 0 else answer_of(self.body)

    def describe(self) -> str:
        return status_of(self.status, self.headers)


async def read_answer(reader: asyncio.StreamReader) -> RawAnswer:
    """Read one HTTP/1.x response (skipping 1xx), framed by Content-Length, chunks or EOF."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return RawAnswer(0, CIMultiDict(), b"")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status >= 200 or status == 101:
            break
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.add(name.strip(), value.strip())
    if "Content-Length" in headers:
        body = await reader.readexactly(int(headers["Content-Length"]))
    elif headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        body = await reader.read()
    return RawAnswer(status, headers, body)


async def raw_exchange(url: str, request: bytes, *, wait_s: float = 10) -> RawAnswer:
    """Send ``request`` byte for byte on a new connection and read the answer (not until EOF)."""
    target = URL(url)
    assert target.host is not None
    assert target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()  # the server may answer and close before reading it all
        async with asyncio.timeout(wait_s):
            return await read_answer(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def status_with(http: aiohttp.ClientSession, url: str, token: str) -> int:
    """GET ``url`` with a proxy token; the status (the body is read and dropped)."""
    async with http.get(url, headers={"Authorization": f"token {token}"}) as resp:
        await resp.read()
        return resp.status


# --- a proxy with adjusted settings --------------------------------------------------------------


async def serve_proxy(
    aiohttp_client: AiohttpClient,
    looker_url: str,
    *,
    clock: Clock | None = None,
    env: dict[str, str] | None = None,
    looker: dict[str, Any] | None = None,
    teams: dict[str, dict[str, Any]] | None = None,
    **top: Any,
) -> Proxy:
    """The real proxy app on a real socket, like conftest's ``make_proxy``, but with keys of the
    ``looker`` section and of single teams overridden (``make_proxy`` replaces whole sections)."""
    raw = raw_config(looker_url, **top)
    raw["looker"].update(looker or {})
    for name, keys in (teams or {}).items():
        raw["teams"][name].update(keys)
    config = parse_config(raw, env={**ENV, **(env or {})})
    app = create_app(config) if clock is None else create_app(config, **timing(clock))
    return Proxy(await aiohttp_client(ProxyServer(app)), config)


# --- the table writer ----------------------------------------------------------------------------


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


class _Plugin:
    """Remembers outcomes of recording tests; writes the table at the end of the session."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self.verdict = ""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if _module_of(report.nodeid) not in MODULES:
            return
        wasxfail = getattr(report, "wasxfail", None)
        if report.failed:
            outcome = "failed"
        elif wasxfail is not None:
            outcome = "xfailed" if report.skipped else "xpassed"
            self.reasons[report.nodeid] = str(wasxfail)
        elif report.skipped:
            outcome = "skipped"
        elif report.when == "call":
            outcome = "passed"
        else:
            return
        if self.outcomes.get(report.nodeid) != "failed":
            self.outcomes[report.nodeid] = outcome

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        problem = self._incomplete(session)
        if problem:
            self.verdict = f"docs/reliability.md not written: {problem}"
            return
        text = render(_ROWS.values(), self.outcomes, self.reasons)
        old = TABLE.read_text(encoding="utf-8") if TABLE.exists() else None
        if old != text:
            TABLE.parent.mkdir(parents=True, exist_ok=True)
            partial = TABLE.with_name(f".{TABLE.name}.{os.getpid()}")
            partial.write_text(text, encoding="utf-8")
            partial.replace(TABLE)  # atomic: a concurrent run never sees half a table
        state = "unchanged" if old == text else "written"
        self.verdict = f"docs/reliability.md {state}: {len(_ROWS)} cases"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.verdict:
            terminalreporter.write_line(f"reliability: {self.verdict}")

    def _incomplete(self, session: pytest.Session) -> str:
        if hasattr(session.config, "workerinput"):
            return "run under xdist (each worker sees only part of the run)"
        items = [i for i in session.items if _module_of(i.nodeid) in MODULES]
        for module in MODULES:
            ran = [i for i in items if _module_of(i.nodeid) == module]
            if not ran:
                return f"{module} did not run"
            expected = _test_count(getattr(ran[0], "module", None))
            if len(ran) != expected:
                return f"only {len(ran)} of {expected} tests of {module} selected (partial run)"
        bad = sorted(
            f"{i.nodeid} ({self.outcomes.get(i.nodeid, 'not run')})"
            for i in items
            if self.outcomes.get(i.nodeid) not in ("passed", "xfailed")
        )
        if bad:
            return "not every recording test passed: " + ", ".join(bad)
        unrecorded = sorted({r.nodeid for r in _ROWS.values()} - {i.nodeid for i in items})
        if unrecorded:
            return "rows from unknown tests: " + ", ".join(unrecorded)
        return ""


def _test_count(module: object) -> int:
    """How many test items a module defines: test functions times their parametrize cases."""
    count = 0
    for name, obj in vars(module).items():
        if name.startswith("test_") and callable(obj):
            cases = 1
            for mark in getattr(obj, "pytestmark", []):
                if mark.name == "parametrize":
                    cases *= len(mark.args[1])
            count += cases
    return count


def install(config: pytest.Config) -> None:
    """Register the table writer once per session (idempotent)."""
    if not config.pluginmanager.has_plugin(_PLUGIN_NAME):
        config.pluginmanager.register(_Plugin(), _PLUGIN_NAME)


def _cell(text: str) -> str:
    return clip(text).replace("|", "\\|")


def render(rows: Iterable[Row], outcomes: dict[str, str], reasons: dict[str, str]) -> str:
    """The whole markdown document; a pure function of the rows and the tests' outcomes."""
    ordered = sorted(rows, key=lambda r: (r.category, r.case.lower(), r.case))
    bugs = [r for r in ordered if outcomes.get(r.nodeid) == "xfailed"]
    lines = [
        "# Reliability: faults, hostile input, team isolation",
        "",
        "<!-- Generated by the test run (tests/reliability.py); do not edit by hand. -->",
        "",
        "Every row is one case tried by `tests/test_faults_matrix.py`, `tests/test_hostile.py` or",
        "`tests/test_isolation.py` against the real proxy and the bundled Looker emulator, on",
        "real sockets. *Status*, *Answer*, *Reached Looker* and *Afterwards* are what the run",
        "observed; *Verdict* is the test's outcome: `ok`, or `KNOWN BUG` for a strict `xfail`",
        "(the expected behaviour is not there yet). The file is only rewritten when all of these",
        "tests ran and passed (or are known bugs), so it cannot drift from the code.",
        "",
        f"**{len(ordered)} cases: {len(ordered) - len(bugs)} ok, {len(bugs)} known bugs.**",
        "",
    ]
    if bugs:
        lines.append("Known bugs:")
        lines.append("")
        for row in bugs:
            reason = reasons.get(row.nodeid, "").removeprefix("reason: ")
            lines.append(f"- {row.case}: {reason}")
        lines.append("")
    for category, title in CATEGORIES.items():
        section = [r for r in ordered if r.category == category]
        if not section:
            continue
        lines += [
            f"## {title}",
            "",
            "| Case | Expected | Status | Answer | Reached Looker | Afterwards | Verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in section:
            verdict = "ok" if outcomes.get(r.nodeid) == "passed" else "KNOWN BUG"
            cells = (r.case, r.expected, r.status, r.answer, r.looker, r.afterwards, verdict)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


async def raw_answers(url: str, request: bytes, *, wait_s: float = 10) -> list[RawAnswer]:
    """Send ``request`` and read every answer until the server closes the connection."""
    target = URL(url)
    assert target.host is not None
    assert target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port)
    answers: list[RawAnswer] = []
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(wait_s):
            for _ in range(10):
                answer = await read_answer(reader)
                if answer.status == 0:
                    break
                answers.append(answer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answers

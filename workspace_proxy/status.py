"""Where each team stands, as an operator sees it: the states of its session, the row
``/readyz`` shows for it, and the table ``workspace-proxy status`` prints from ``/readyz``.

Pure data and text (the one I/O is ``fetch``, the command's GET of ``/readyz``); knows nothing
of sessions or requests. Never holds a token.
"""

from __future__ import annotations

import enum
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

MANAGED: Final = "managed"
PASSTHROUGH: Final = "passthrough"


class State(enum.Enum):
    """Where a team's session stands (``/readyz``, ``workspace_proxy_team_state``)."""

    IDLE = "idle"
    """No session was needed yet (or the last one expired unused)."""
    PINNING = "pinning"
    """An attempt (login, PATCH, verify) is under way and no session can be handed out."""
    OK = "ok"
    """A pinned session is being handed out."""
    REFRESHING = "refreshing"
    """A pinned session is being handed out while its successor is being pinned."""
    BACKING_OFF = "backing_off"
    """The last attempt failed (an outage: it may pass); the next one is due at
    ``next_attempt_in_s``."""
    FAILING = "failing"
    """The last attempt failed for a reason that is a configuration error (``fix`` says what
    to change); attempts are spaced minutes apart until it is fixed."""


@dataclass(frozen=True, slots=True)
class Status:
    """A team's session as an operator sees it (never a token)."""

    state: State
    workspace: str
    """The workspace the team is configured for."""
    session_age_s: float | None
    """Since the session in use was pinned (passthrough: the newest caller session); None
    without one."""
    generation: int | None
    """The session in use (passthrough: how many caller sessions were pinned)."""
    next_attempt_in_s: float | None
    """When backing off or failing: seconds until the next attempt may start."""
    last_error: str | None
    """Why the last attempt failed, when it did."""
    attempts: int
    """Attempts to pin so far (each is a login, a PATCH, a verify, and a logout if it failed)."""
    mode: str = MANAGED
    branch: str | None = None
    """The dev branch the team pins, ``project/name``."""
    verified: str | None = None
    """The workspace Looker confirmed for the session in use (None without one)."""
    fix: str | None = None
    """What to change, when the last attempt failed for a configuration error."""

    @property
    def permanent(self) -> bool:
        return self.fix is not None

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "workspace": self.workspace,
            "verified_workspace": self.verified,
            "branch": self.branch,
            "state": self.state.value,
            "session_age_s": _rounded(self.session_age_s),
            "generation": self.generation,
            "next_attempt_in_s": _rounded(self.next_attempt_in_s),
            "last_error": self.last_error,
            "fix": self.fix,
            "pin_attempts": self.attempts,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def readiness(rows: Mapping[str, tuple[bool, Status]]) -> tuple[int, dict[str, object]]:
    """``/readyz``'s status and body from each team's (ready, status). Passthrough teams are
    shown but do not decide the status: their sessions are their callers' own."""
    teams = {name: {"ready": ready, **status.as_json()} for name, (ready, status) in rows.items()}
    ok = all(ready for ready, status in rows.values() if status.mode != PASSTHROUGH)
    return (200 if ok else 503), {"status": "ok" if ok else "degraded", "teams": teams}


# --- `workspace-proxy status` ------------------------------------------------------------------


class Unreachable(Exception):
    """Nothing usable answered at the admin address."""


DEFAULT_ADMIN: Final = ("127.0.0.1", 9090)
"""The admin listener's address when the config does not set one (``Config.admin``)."""


def admin_url(given: str | None, config_path: str | None) -> str:
    """The admin listener's URL: ``given``; else the ``admin`` section of the config file at
    ``config_path`` (read as plain YAML: no variable or secret file is needed); else the
    default. ValueError when the file cannot be read."""
    if given:
        return given.rstrip("/")
    host, port = DEFAULT_ADMIN
    scheme = "http"
    if config_path:
        try:
            raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read {config_path}: {exc.__class__.__name__}") from None
        admin = raw.get("admin") if isinstance(raw, dict) else None
        if isinstance(admin, dict):
            given_host, given_port = admin.get("host"), admin.get("port")
            host = given_host if isinstance(given_host, str) else host
            port = given_port if isinstance(given_port, int) else port
            scheme = "https" if admin.get("tls") else scheme
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: ask on loopback
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def fetch(url: str, *, timeout_s: float = 5.0, ca_file: str | None = None) -> dict[str, Any]:
    """GET ``url`` (``/readyz``) and its JSON body, whatever its status (503 too). An https
    listener's certificate is verified against ``ca_file`` when given, else the system's CAs.
    ValueError when ``ca_file`` cannot be read as PEM certificates."""
    try:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot read --cafile {ca_file}: {exc.strerror or exc}") from None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:  # noqa: S310
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLCertVerificationError):
            hint = "" if ca_file else "; --cafile names the CA that signed it"
            message = f"its certificate does not verify: {reason.verify_message}{hint}"
            raise Unreachable(message) from None
        raise Unreachable(f"{reason}") from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise Unreachable("the answer is not JSON: is this the proxy's admin listener?") from None
    if not isinstance(body, dict):
        raise Unreachable("the answer is not a JSON object: is this the proxy's admin listener?")
    return body


_HEAD: Final = ("TEAM", "MODE", "WORKSPACE", "VERIFIED", "BRANCH", "GEN", "AGE", "STATE")


def table(readyz: Mapping[str, Any], where: str) -> str:
    """The text ``workspace-proxy status`` prints for a ``/readyz`` body."""
    teams: Mapping[str, Any] = readyz.get("teams") or {}
    status = readyz.get("status", "?")
    lines = [f"workspace-proxy at {where}: {status}, {len(teams)} team(s)"]
    if not teams:
        return "\n".join(lines)
    rows = [_HEAD, *(_row(name, t) for name, t in sorted(teams.items()))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEAD))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for name, team in sorted(teams.items()):
        if team.get("last_error"):
            lines.append(f"{name}: {team['last_error']}")
        if team.get("fix"):
            lines.append(f"{name}: to fix: {team['fix']}")
    return "\n".join(lines)


def _row(name: str, team: Mapping[str, Any]) -> Sequence[str]:
    return (
        name,
        str(team.get("mode") or MANAGED),
        str(team.get("workspace") or "-"),
        str(team.get("verified_workspace") or "-"),
        str(team.get("branch") or "-"),
        "-" if team.get("generation") is None else str(team["generation"]),
        duration(team.get("session_age_s")),
        _state(team),
    )


def _state(team: Mapping[str, Any]) -> str:
    state = str(team.get("state"))
    after = duration(team.get("next_attempt_in_s"))
    if state == State.IDLE.value:
        return "idle (never needed yet)"
    if state == State.BACKING_OFF.value:
        return f"backing off, next attempt in {after}"
    if state == State.FAILING.value:
        return f"FAILING (configuration), next attempt in {after}"
    return state


def duration(seconds: object) -> str:
    """``42s``, ``4m05s``, ``2h03m``; ``-`` for none."""
    if not isinstance(seconds, int | float):
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"

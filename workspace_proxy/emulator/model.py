"""Public value types of the Looker emulator: API users, audit entries, fault knobs.

Also loads users from YAML; everything here is plain data, no aiohttp."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml


@dataclass(frozen=True)
class ApiUser:
    """A Looker user with API3 credentials."""

    id: str
    client_id: str
    client_secret: str
    display_name: str
    is_admin: bool = False
    can_develop: bool = True
    """False: PATCH /session to dev answers 422 (a user without Looker's develop permission)."""


DEFAULT_USERS: tuple[ApiUser, ...] = (
    ApiUser("1", "admin-client-id", "admin-client-secret", "Admin", is_admin=True),
    ApiUser("2", "analytics-client-id", "analytics-client-secret", "Analytics"),
    ApiUser("3", "finance-client-id", "finance-client-secret", "Finance"),
    ApiUser("4", "marketing-client-id", "marketing-client-secret", "Marketing"),
)


@dataclass(frozen=True)
class AuditEntry:
    """One request as the emulator saw it; status 0 while it is still being answered."""

    method: str
    path: str
    user_id: str | None
    token_fingerprint: str | None
    workspace: str | None
    status: int
    target: str = ""
    """The request target exactly as it arrived (still percent-encoded, with its query)."""


@dataclass
class Faults:
    """Scripted misbehaviour; tests set the attributes directly."""

    login_failures: int = 0
    login_failure_status: int = 500
    login_retry_after: int | None = None
    login_timeout: bool = False
    hold_login: asyncio.Event | None = None
    patch_session_failures: int = 0
    patch_session_status: int = 500
    patch_session_wrong_workspace: str | None = None
    hold_session_patch: asyncio.Event | None = None
    latency_s: float = 0.0
    reset_after_bytes: int | None = None
    token_ttl_override: float | None = None

    def reset(self) -> None:
        """Put every knob back to its default, in place."""
        for field in fields(self):
            setattr(self, field.name, field.default)


def token_fingerprint(token: str) -> str:
    """Short, non-reversible name for a token, safe to log and compare."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


_USER_KEYS = frozenset(f.name for f in fields(ApiUser))
_REQUIRED_USER_KEYS = ("id", "client_id", "client_secret", "display_name")


def load_users(path: str) -> tuple[ApiUser, ...]:
    """Read a YAML list of users; any problem is a ValueError naming the file and entry."""
    try:
        with open(path, encoding="utf-8") as stream:
            raw = yaml.safe_load(stream)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read users file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty YAML list of users")
    users = tuple(_parse_user(path, index, entry) for index, entry in enumerate(raw))
    _check_unique(path, users)
    return users


def _parse_user(path: str, index: int, entry: object) -> ApiUser:
    where = f"{path}: entry {index}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a mapping with keys {', '.join(_REQUIRED_USER_KEYS)}")
    if isinstance(entry.get("id"), str | int) and not isinstance(entry.get("id"), bool):
        where = f"{where} (id {str(entry['id'])!r})"
    unknown = sorted(str(key) for key in entry if key not in _USER_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key in _REQUIRED_USER_KEYS:
        value = entry.get(key)
        if key == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
        values[key] = value
    flags: list[bool] = []
    for key, default in (("is_admin", False), ("can_develop", True)):
        flag = entry.get(key, default)
        if not isinstance(flag, bool):
            raise ValueError(f"{where}: {key!r} must be true or false")
        flags.append(flag)
    return ApiUser(**values, is_admin=flags[0], can_develop=flags[1])


def _check_unique(path: str, users: tuple[ApiUser, ...]) -> None:
    for attribute in ("id", "client_id"):
        seen: set[str] = set()
        for index, user in enumerate(users):
            value = getattr(user, attribute)
            if value in seen:
                raise ValueError(f"{path}: entry {index}: duplicate {attribute} {value!r}")
            seen.add(value)

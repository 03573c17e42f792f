"""Value checks of the validation pass: each checks one value and reports what is wrong.

Every problem goes to a :class:`Problems` as ``path.to.key: message`` and the check returns a
usable value (the default, or None) so that one pass finds every problem. Mappings (unknown and
missing keys), numbers against their field's :class:`~workspace_proxy.fieldspec.Spec`, booleans,
choices, and secrets (``{env: NAME}`` or ``{file: PATH}``, resolved here).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, TypeVar

from workspace_proxy.config import SECRET_SOURCES, Secret
from workspace_proxy.fieldspec import key_spec, yaml_fields

_PLAIN_KEY = re.compile("[A-Za-z0-9_-]+")

T = TypeVar("T")
Env = Mapping[str, str]


class Problems:
    """Collects every problem of one validation pass."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}" if path else message)


def join(path: str, key: str | int) -> str:
    """Where a value is, for problems: ``teams.analytics.workspace``; a key that is not a
    plain word (a dot, a space, a control character) is quoted, ``teams["a.b"]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{json.dumps(key)}]"
    return f"{path}.{key}" if path else key


def mapping(
    raw: object,
    path: str,
    allowed: AbstractSet[str],
    problems: Problems,
    *,
    required: AbstractSet[str] = frozenset(),
) -> dict[str, Any]:
    """Return ``raw`` as a dict; report a wrong type, unknown and missing keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(path or "<top level>", f"must be a mapping, got {_type_name(raw)}")
        return {}
    for key in raw:
        if not isinstance(key, str) or key not in allowed:
            hint = f" (allowed: {', '.join(sorted(allowed))})"
            problems.add(join(path, str(key)), "unknown key" + hint)
    for key in sorted(required - raw.keys()):
        problems.add(join(path, key), "required")
    return {k: v for k, v in raw.items() if isinstance(k, str) and k in allowed}


def _type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _number(
    raw: Mapping[str, Any],
    key: str,
    path: str,
    default: T,
    problems: Problems,
    *,
    minimum: float,
    maximum: float | None = None,
) -> T:
    if key not in raw:
        return default
    value = raw[key]
    want_int = isinstance(default, int)
    ok = isinstance(value, int) if want_int else isinstance(value, int | float)
    if not ok or isinstance(value, bool):
        problems.add(join(path, key), f"must be {'an integer' if want_int else 'a number'}")
        return default
    if isinstance(value, float) and not math.isfinite(value):  # (an int is: math.isinf
        problems.add(join(path, key), "must be a finite number")  # overflows on 10**400)
        return default
    if value < minimum:
        problems.add(join(path, key), f"must be at least {minimum:g}")
        return default
    if maximum is not None and value > maximum:
        problems.add(join(path, key), f"must be at most {maximum:g}")
        return default
    return value  # type: ignore[no-any-return]


def setting(raw: Mapping[str, Any], owner: object, key: str, path: str, problems: Problems) -> Any:
    """The number ``key`` of ``raw``, checked against its field's spec; ``owner`` is the
    dataclass instance whose value is the default."""
    spec = key_spec(type(owner), key)
    return _number(
        raw,
        key,
        path,
        getattr(owner, key),
        problems,
        minimum=-math.inf if spec.minimum is None else spec.minimum,
        maximum=spec.maximum,
    )


def numbers(cls: type[T], raw: Mapping[str, Any], path: str, problems: Problems) -> T:
    """A section whose keys are all numbers (timeouts, retry, shutdown, limits)."""
    default = cls()
    return cls(**{f.name: setting(raw, default, f.name, path, problems) for f in yaml_fields(cls)})


def boolean(raw: Mapping[str, Any], key: str, path: str, default: bool, problems: Problems) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        problems.add(join(path, key), "must be true or false")
        return default
    return value


def choice(
    raw: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...], problems: Problems
) -> str | None:
    value = raw.get(key)
    if value not in choices:
        problems.add(join(path, key), f"must be one of {', '.join(choices)}")
        return None
    return str(value)


def resolve_secret(
    raw: object, path: str, env: Env, problems: Problems, *, allow_plain: bool = False
) -> Secret | None:
    """Resolve ``{env: NAME}`` or ``{file: PATH}`` (or a plain string where allowed)."""
    if allow_plain and isinstance(raw, str):
        if not raw:
            problems.add(path, "must not be empty")
            return None
        return Secret(raw)
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in SECRET_SOURCES:
        form = "a string, " if allow_plain else ""
        problems.add(path, f"must be {form}{{env: VARIABLE}} or {{file: /path/to/secret}}")
        return None
    kind, ref = next(iter(raw.items()))
    if not isinstance(ref, str) or not ref:
        problems.add(join(path, kind), "must be a non-empty string")
        return None
    if kind == "env":
        value = env.get(ref)
        if value is None:
            problems.add(path, f"environment variable {ref} is not set: export it, then start")
            return None
    else:
        try:
            value = Path(ref).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            where = "" if Path(ref).is_absolute() else f" (in {Path.cwd()})"
            problems.add(path, f"secret file {ref} does not exist{where}: create it")
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.add(path, f"cannot read secret file {ref}: {exc.__class__.__name__}")
            return None
    if not value:
        problems.add(path, f"{kind} {ref} is empty")
        return None
    return Secret(value)

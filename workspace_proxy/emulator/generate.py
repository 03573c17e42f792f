"""Values built from a spec schema: stable, small, and marked with the caller's workspace.

`example(spec, schema, workspace)` is deterministic: the same schema, item number and workspace
always give the same value. Strings carry the workspace (`"[dev:title 1]"`) wherever the schema
lets them be free text; ids are the item number (`"1"`), foreign keys (`*_id`) name item 1,
which every generated collection has. Lists have LIST_ITEMS items at the top and one below;
objects nest MAX_DEPTH levels deep, below which only scalars and required fields are filled.
In `write` mode (a request body) readOnly fields are left out; otherwise write-only ones are.
The few array properties that carry an `enum` of strings (a slip in the spec: no value satisfies
both) are left out too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .spec import Schema, Spec

LIST_ITEMS = 3
MAX_DEPTH = 3
BASE_URL = "https://looker.example.com"


@dataclass(frozen=True)
class Gen:
    """What a generated value depends on besides its schema."""

    spec: Spec
    workspace: str
    write: bool = False


def example(spec: Spec, schema: Schema, workspace: str, *, n: int = 1, write: bool = False) -> Any:
    """A value valid for `schema`: item number `n` as seen from `workspace`."""
    return _value(Gen(spec, workspace, write), schema, "value", n, 0)


def marker(workspace: str, name: str, n: int = 1) -> str:
    """Free text that says which workspace produced it: `[dev:title 1]`."""
    return f"[{workspace}:{name} {n}]"


def is_container(spec: Spec, schema: Schema) -> bool:
    resolved = spec.resolve(schema)
    return resolved.get("type") in ("object", "array") or "properties" in resolved


def _value(gen: Gen, schema: Schema, name: str, n: int, depth: int) -> Any:
    schema = gen.spec.resolve(schema)
    kind = schema.get("type")
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "array":
        if depth >= MAX_DEPTH:
            return []
        count = LIST_ITEMS if depth == 0 else 1
        items = schema.get("items", {})
        return [_value(gen, items, name, i, depth + 1) for i in range(1, count + 1)]
    if kind == "object" or "properties" in schema:
        return _object(gen, schema, name, n, depth)
    if kind == "integer":
        return 1 if name.endswith("_id") else n
    if kind == "number":
        return n + 0.5
    if kind == "boolean":
        return False
    return _text(gen, schema, name, n)


def _object(gen: Gen, schema: Schema, name: str, n: int, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    required = set(schema.get("required", ()))
    for key, prop in schema.get("properties", {}).items():
        if _wanted(gen, prop, depth, required=key in required):
            out[key] = _value(gen, prop, key, n, depth + 1)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and not out and depth < MAX_DEPTH:
        resolved = gen.spec.resolve(extra)
        if resolved.get("type") == "boolean":  # `can`: what the caller may do
            return {"show": True, "index": True}
        out[f"{name}_{n}"] = _value(gen, extra, name, n, depth + 1)
    return out


def _wanted(gen: Gen, prop: Schema, depth: int, *, required: bool) -> bool:
    if prop.get("readOnly") and gen.write:
        return False
    if prop.get("type") == "array" and prop.get("enum"):
        return False  # an enum of strings on an array (a spec slip): no value satisfies both
    if required:
        return True
    if prop.get("x-looker-write-only") and not gen.write:
        return False
    return depth < MAX_DEPTH or not is_container(gen.spec, prop)


def _text(gen: Gen, schema: Schema, name: str, n: int) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return f"2026-01-{1 + (n - 1) % 28:02d}T00:00:00.000+00:00"
    if fmt == "date":
        return f"2026-01-{1 + (n - 1) % 28:02d}"
    if fmt in ("uri", "uri-reference") or name.endswith("url"):
        return f"{BASE_URL}/{gen.workspace}/{name}/{n}"
    if name == "id":
        return str(n)
    if name.endswith("_id"):
        return "1"
    return marker(gen.workspace, name, n)


def fit(spec: Spec, schema: Schema, value: Any) -> Any:
    """`value` fitted to `schema`: digit strings become integers where it types them so (3.1's
    ids), and nulls it does not allow for a property are left out."""
    schema = spec.resolve(schema)
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, list) and kind == "array":
        return [fit(spec, schema.get("items", {}), item) for item in value]
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {
            k: fit(spec, properties[k], v) if k in properties else v
            for k, v in value.items()
            if v is not None or k not in properties or properties[k].get("nullable")
        }
    return value

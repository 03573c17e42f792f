"""Request checks driven by the spec, as Looker answers them: a small, honest subset.

- path parameters typed integer (3.1 ids) that are not digits: 404, as for an unknown id;
- required query parameters missing, or an integer/boolean one that does not parse: 400;
- request bodies: JSON that does not parse or a missing required body: 400; otherwise every
  problem found against the schema is listed in one 422 `ValidationError`: required fields
  missing, values of the wrong JSON type, values outside an `enum`. Read-only fields are
  ignored (Looker ignores them), and so are fields the schema does not name.

Formats (date-time, uri) and lengths are not checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .call import ApiError, error_detail
from .content import Json
from .spec import Operation, Schema, Spec

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def check_path(op: Operation, params: Mapping[str, str]) -> None:
    for name, schema in op.path_params.items():
        if schema.get("type") == "integer" and not params.get(name, "").isdigit():
            raise ApiError(404, "Not found")


def check_query(op: Operation, query: Mapping[str, str]) -> None:
    for param in op.query:
        raw = query.get(param.name)
        if raw is None:
            if param.required:
                raise ApiError(400, f"Missing required parameter '{param.name}'")
            continue
        kind = param.schema.get("type")
        if kind == "integer" and not raw.lstrip("-").isdigit():
            raise ApiError(400, f"Parameter '{param.name}' must be an integer")
        if kind == "boolean" and raw.lower() not in ("true", "false"):
            raise ApiError(400, f"Parameter '{param.name}' must be true or false")


def parse_body(op: Operation, raw: bytes) -> Any:
    """The request body as the operation takes it (JSON, text or a form), or None if absent."""
    if op.body is None:
        return None
    if not raw.strip():
        if op.body.required:
            raise ApiError(400, "Request body is required")
        return None
    if op.body.media_type != "application/json":
        return raw.decode("utf-8", errors="replace")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "Request body is not valid JSON") from exc


def check_body(spec: Spec, op: Operation, body: Any) -> None:
    """422 ValidationError listing every problem of a JSON body against the operation's schema."""
    if op.body is None or body is None or op.body.media_type != "application/json":
        return
    problems = _problems(spec, op.body.schema, body, "")
    if problems:
        raise ApiError(422, "Validation Failed", errors=problems)


def _problems(spec: Spec, schema: Schema, value: Any, where: str) -> list[Json]:
    schema = spec.resolve(schema)
    kind = schema.get("type") or ("object" if "properties" in schema else None)
    if value is None:
        if schema.get("nullable") or kind in (None, "any"):
            return []
        return [error_detail(where or "body", "invalid", f"{where or 'body'} must not be null")]
    expected = _JSON_TYPES.get(str(kind))
    if expected is not None and (
        not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
    ):
        message = f"{where or 'body'} must be of type {kind}"
        return [error_detail(where or "body", "invalid", message)]
    enum = schema.get("enum")
    if enum and kind != "array" and value not in enum:
        allowed = ", ".join(map(str, enum))
        return [error_detail(where, "invalid", f"{where} must be one of: {allowed}")]
    if isinstance(value, list):
        items = dict(schema.get("items", {}))
        if enum and kind == "array":  # the spec's enums on arrays are meant for their items
            items["enum"] = enum
        return [
            problem
            for index, item in enumerate(value)
            for problem in _problems(spec, items, item, f"{where}[{index}]")
        ]
    if isinstance(value, dict):
        return _object_problems(spec, schema, value, where)
    return []


def _object_problems(spec: Spec, schema: Schema, value: dict[str, Any], where: str) -> list[Json]:
    prefix = f"{where}." if where else ""
    properties: Mapping[str, Schema] = schema.get("properties", {})
    problems = [
        error_detail(f"{prefix}{name}", "missing", "This field is required.")
        for name in schema.get("required", ())
        if name not in value and not properties.get(name, {}).get("readOnly")
    ]
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        prop = properties.get(key)
        if prop is None and isinstance(extra, dict):
            prop = extra
        if prop is not None and not prop.get("readOnly"):
            problems += _problems(spec, prop, item, f"{prefix}{key}")
    return problems

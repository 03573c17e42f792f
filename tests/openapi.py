"""The shipped Looker specs read straight from the package data, and a maintained validator.

Answers are validated with openapi-schema-validator's OAS 3.0 read validator (nullable,
readOnly/writeOnly, OAS formats), request bodies with its write validator. The only thing
taught to it is the spec's own `type: "any"` (23 properties: "numeric or string", a list of
floats...), which is not an OAS type: it accepts any value."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import validators
from jsonschema.protocols import Validator
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker

VERSIONS = ("4.0", "3.1")
METHOD_ORDER = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _with_any(cls: Any) -> Any:
    return validators.extend(
        cls, type_checker=cls.TYPE_CHECKER.redefine("any", lambda _c, _i: True)
    )


ReadValidator = _with_any(OAS30ReadValidator)
WriteValidator = _with_any(OAS30WriteValidator)


@cache
def document(version: str) -> dict[str, Any]:
    spec_file = resources.files("workspace_proxy.emulator") / f"specs/Looker.{version}.oas.json"
    return dict(json.loads(spec_file.read_bytes()))


@dataclass(frozen=True)
class Op:
    version: str
    method: str
    path: str
    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw["operationId"])

    def success(self) -> dict[int, dict[str, Any]]:
        """Documented 2xx status -> media type -> schema."""
        return {
            int(code): {
                media: dict(body.get("schema", {}))
                for media, body in answer.get("content", {}).items()
            }
            for code, answer in self.raw["responses"].items()
            if code.startswith("2")
        }

    def params(self, where: str) -> list[dict[str, Any]]:
        return [p for p in self.raw.get("parameters", ()) if p["in"] == where]


def operations(version: str) -> Iterator[Op]:
    """Every operation of a version's spec: reads, then creates, updates and deletes (those of
    nested items before those of the items they are in)."""
    found = [
        Op(version, method.upper(), path, op)
        for path, item in document(version)["paths"].items()
        for method, op in item.items()
    ]
    found.sort(key=lambda o: o.path, reverse=True)
    found.sort(key=lambda o: o.path if o.method != "DELETE" else "")
    yield from sorted(found, key=lambda o: METHOD_ORDER.index(o.method))


def validator(version: str, schema: dict[str, Any], *, write: bool = False) -> Validator:
    cls = WriteValidator if write else ReadValidator
    root = {**schema, "components": document(version)["components"]}
    return cls(root, format_checker=oas30_format_checker)  # type: ignore[no-any-return]


def problems(version: str, schema: dict[str, Any], value: Any, *, write: bool = False) -> list[str]:
    """What the maintained validator finds wrong with `value` (empty: valid)."""
    found = validator(version, schema, write=write).iter_errors(value)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in found]


def is_raw_string(version: str, schema: dict[str, Any]) -> bool:
    """A `type: string` answer: the spec's way of saying "the raw body" (the SDKs return it as
    text unparsed, e.g. run_query's JSON rows or a 204's empty body)."""
    while "$ref" in schema:
        schema = document(version)["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema.get("type") == "string"

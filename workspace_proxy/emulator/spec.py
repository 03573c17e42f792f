"""The Looker OpenAPI 3.0 specs shipped with the emulator, parsed once each, on first use.

`load(version)` reads `specs/Looker.<version>.oas.json` (package data) and lists its operations
as Operation values: what the router, the request checks and the answer generator need. The
parsed documents are cached for the life of the process and never changed."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

Schema = Mapping[str, Any]
VERSIONS = ("4.0", "3.1")
_METHODS = ("get", "post", "put", "patch", "delete")
_PARAM = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    required: bool
    schema: Schema


@dataclass(frozen=True)
class Body:
    """A request body: its media type and schema."""

    media_type: str
    schema: Schema
    required: bool


@dataclass(frozen=True)
class Operation:
    """One operation of one spec version."""

    version: str
    method: str
    """Upper case."""
    template: str
    """The path after `/api/<version>`, e.g. `/users/{user_id}`."""
    operation_id: str
    path_params: Mapping[str, Schema]
    query: tuple[Param, ...]
    body: Body | None
    status: int
    """The first documented success status: the one the emulator answers."""
    content: Mapping[str, Schema]
    """Media type -> schema of that answer; empty when it has no body."""
    statuses: frozenset[int]
    """Every documented status."""

    @property
    def segments(self) -> tuple[str, ...]:
        """Path segments; a parameter is `{name}`."""
        return tuple(self.template.strip("/").split("/"))


def shape(template: str) -> str:
    """A template with its parameter names dropped: `/users/{user_id}` -> `/users/{}`."""
    return _PARAM.sub("{}", template)


class Spec:
    """One parsed spec: its operations and its component schemas."""

    def __init__(self, version: str, document: Mapping[str, Any]) -> None:
        self.version = version
        self.schemas: Mapping[str, Schema] = document["components"]["schemas"]
        self.operations = tuple(_operations(version, document["paths"]))
        self.shapes = frozenset(shape(op.template) for op in self.operations)
        """The shapes of every path that has an operation."""

    def resolve(self, schema: Schema) -> Schema:
        """Follow `$ref`s (`#/components/schemas/X`) to a schema that has none."""
        while "$ref" in schema:
            schema = self.schemas[str(schema["$ref"]).rsplit("/", 1)[-1]]
        return schema


@functools.cache
def load(version: str) -> Spec:
    """The spec of an API version ("4.0" or "3.1"), parsed on first use."""
    if version not in VERSIONS:
        raise ValueError(f"no Looker spec for API version {version!r}")
    data = resources.files("workspace_proxy.emulator").joinpath(f"specs/Looker.{version}.oas.json")
    return Spec(version, json.loads(data.read_bytes()))


def _operations(version: str, paths: Mapping[str, Any]) -> Iterator[Operation]:
    for template, item in paths.items():
        for method in _METHODS:
            if method in item:
                yield _operation(version, method.upper(), template, item[method])


def _operation(version: str, method: str, template: str, raw: Mapping[str, Any]) -> Operation:
    params = raw.get("parameters", ())
    path_params = {p["name"]: p.get("schema", {}) for p in params if p["in"] == "path"}
    query = tuple(
        Param(p["name"], bool(p.get("required")), p.get("schema", {}))
        for p in params
        if p["in"] == "query"
    )
    body = None
    if "requestBody" in raw:
        media_type, media = next(iter(raw["requestBody"]["content"].items()))
        required = bool(raw["requestBody"].get("required"))
        body = Body(media_type, media.get("schema", {}), required)
    responses = raw["responses"]
    status = min(int(code) for code in responses if code.startswith("2"))
    content = {
        media_type: media.get("schema", {})
        for media_type, media in responses[str(status)].get("content", {}).items()
    }
    statuses = frozenset(int(code) for code in responses if code.isdigit())
    return Operation(
        version, method, template, raw["operationId"], path_params, query, body, status,
        content, statuses,
    )  # fmt: skip

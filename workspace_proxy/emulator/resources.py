"""Generic resources: which ids exist, and what callers wrote to them.

Collections come from the spec's shape: a path parameter that follows a literal segment names an
item of a collection when the spec has operations on both the item path (`/users/{user_id}`)
and the collection path (`/users`). An item's key is that parameter's value; its key field is
the property the parameter names (`user_id` -> `id`, `connection_name` -> `name`).

Collections of hand-modelled content (projects, models, looks, dashboards, queries, users,
workspaces) hold the ids that content has, as the caller may see them (HAND_KEYS: a user who is
not an admin sees only themselves); every other collection starts with the
items SEEDED. A POST on a collection path creates an item (id FIRST_CREATED, then up), PATCH and
PUT on an item path record the fields written, DELETE removes it: the store keeps, per concrete
collection path, the fields callers wrote, so what was created can be read back, listed,
updated and deleted. Hand-modelled content itself is fixed: writes to it answer as documented
but do not change it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import content
from .call import ApiError, Call
from .generate import example
from .spec import Operation, Schema, Spec, shape

SEEDED = ("1", "2", "3")
FIRST_CREATED = 101


@dataclass(frozen=True)
class Ref:
    """An item named in a request path."""

    collection: str
    """The concrete collection path, e.g. `/users/2/credentials_api3`."""
    shape: str
    """The collection's shape, e.g. `/users/{}/credentials_api3`."""
    key: str
    param: str


@dataclass
class Collection:
    """What callers did to one concrete collection."""

    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)
    next_id: int = FIRST_CREATED


class Store:
    """Collections by concrete path; shared by API versions, kept across restarts."""

    def __init__(self) -> None:
        self._collections: dict[str, Collection] = {}

    def get(self, path: str) -> Collection:
        return self._collections.setdefault(path, Collection())


def _own_tasks(call: Call) -> Iterable[str]:
    user = call.authenticate().user
    return (t.id for t in call.emu.query_tasks.values() if t.user_id == user.id)


def _workspace(call: Call) -> str:
    return call.authenticate().workspace


def _visible_users(call: Call) -> Iterable[str]:
    """An admin sees every user; anyone else only themselves (Looker's `see_users`)."""
    me = call.authenticate().user
    return (u.id for u in call.emu.users if me.is_admin or u.id == me.id)


HAND_KEYS: Mapping[str, Callable[[Call], Iterable[str]]] = {
    "/projects": lambda call: (p.id for p in content.visible_projects(_workspace(call))),
    "/lookml_models": lambda call: (m.name for m in content.visible_models(_workspace(call))),
    "/looks": lambda _call: content.LOOK_IDS,
    "/dashboards": lambda _call: content.DASHBOARD_IDS,
    "/queries": lambda call: call.emu.queries,
    "/query_tasks": _own_tasks,
    "/running_queries": _own_tasks,
    "/users": _visible_users,
    "/workspaces": lambda _call: content.WORKSPACES,
}


def concrete(segments: tuple[str, ...], params: Mapping[str, str]) -> str:
    return "/" + "/".join(params[s[1:-1]] if s.startswith("{") else s for s in segments)


def refs(spec: Spec, op: Operation, params: Mapping[str, str]) -> list[Ref]:
    """The items a request path names, outermost first."""
    segments, found = op.segments, []
    for index, segment in enumerate(segments):
        if index == 0 or not segment.startswith("{") or segments[index - 1].startswith("{"):
            continue
        item_shape = shape("/" + "/".join(segments[: index + 1]))
        collection_shape = shape("/" + "/".join(segments[:index]))
        if item_shape in spec.shapes and collection_shape in spec.shapes:
            name = segment[1:-1]
            path = concrete(segments[:index], params)
            found.append(Ref(path, collection_shape, params[name], name))
    return found


def keys(call: Call, ref: Ref) -> list[str]:
    """The keys that exist in a collection, in order."""
    collection = call.emu.store.get(ref.collection)
    hand = HAND_KEYS.get(ref.shape)
    base = [str(k) for k in hand(call)] if hand is not None else list(SEEDED)
    return [k for k in base if k not in collection.deleted] + collection.created


def require(call: Call, found: list[Ref]) -> None:
    """404 unless every item the path names exists."""
    for ref in found:
        if ref.key not in keys(call, ref):
            raise ApiError(404, "Not found")


def key_field(spec: Spec, schema: Schema, param: str) -> str | None:
    """The property of an item that its key parameter names."""
    properties = spec.resolve(schema).get("properties", {})
    for candidate in (param, param.rsplit("_", 1)[-1]):
        if candidate in properties:
            return candidate
    return None


def item(call: Call, spec: Spec, schema: Schema, key: str, param: str, written: Any) -> Any:
    """An item's answer: generated for its number, with what callers wrote on top."""
    workspace = _workspace(call)
    value = example(spec, schema, workspace, n=int(key) if key.isdigit() else 1)
    resolved = spec.resolve(schema)
    if not isinstance(value, dict):
        return value
    properties = resolved.get("properties", {})
    value.update({k: v for k, v in (written or {}).items() if k in properties})
    name = key_field(spec, schema, param)
    if name is not None:
        typed = properties[name].get("type") == "integer" and key.isdigit()
        value[name] = int(key) if typed else key
    return value


def answer(call: Call, spec: Spec, op: Operation, found: list[Ref], body: Any) -> Any:
    """What a generic operation answers (None: no body), after recording any write."""
    schema = op.content.get("application/json", {"type": "string"})
    last = op.segments[-1]
    if found and last == f"{{{found[-1].param}}}":  # an item path
        ref = found[-1]
        collection = call.emu.store.get(ref.collection)
        if op.method == "DELETE":
            _delete(collection, ref)
        elif op.method in ("PATCH", "PUT") and isinstance(body, dict):
            collection.written.setdefault(ref.key, {}).update(body)
        return item(call, spec, schema, ref.key, ref.param, collection.written.get(ref.key))
    if not last.startswith("{") and shape(op.template) + "/{}" in spec.shapes:
        return _collection(call, spec, op, schema, body)
    return example(spec, schema, _workspace(call))


def _collection(call: Call, spec: Spec, op: Operation, schema: Schema, body: Any) -> Any:
    path = concrete(op.segments, call.params)
    collection = call.emu.store.get(path)
    item_op = next(
        (o for o in spec.operations if shape(o.template) == shape(op.template) + "/{}"), None
    )
    param = item_op.segments[-1][1:-1] if item_op is not None else "id"
    if op.method == "POST" and (body is None or isinstance(body, dict)):
        key = _create(collection, spec, op, schema, param, body or {})
        return item(call, spec, schema, key, param, collection.written[key])
    resolved = spec.resolve(schema)
    if op.method == "GET" and resolved.get("type") == "array":
        ref = Ref(path, shape(op.template), "", param)
        items = resolved.get("items", {})
        return [
            item(call, spec, items, key, param, collection.written.get(key))
            for key in keys(call, ref)
        ]
    return example(spec, schema, _workspace(call))


def _create(
    collection: Collection, spec: Spec, op: Operation, schema: Schema, param: str, body: Any
) -> str:
    name = key_field(spec, schema, param)
    given = body.get(name) if name not in (None, "id") else None
    if isinstance(given, str | int) and not isinstance(given, bool):
        key = str(given)
        if key in collection.written and 409 in op.statuses:
            raise ApiError(409, "Resource Already Exists")
    else:
        key = str(collection.next_id)
        collection.next_id += 1
    if key not in collection.created:
        collection.created.append(key)
    collection.deleted.discard(key)
    collection.written[key] = dict(body)
    return key


def _delete(collection: Collection, ref: Ref) -> None:
    collection.written.pop(ref.key, None)
    if ref.key in collection.created:
        collection.created.remove(ref.key)
    elif ref.shape not in HAND_KEYS:
        collection.deleted.add(ref.key)

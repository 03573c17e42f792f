"""The handler of every operation that is not hand-modelled: checked, recorded, generated.

It checks the request against the spec (checks.py) and that the ids in its path exist
(resources.py), records writes, and answers the operation's first documented success status
with a body built from the schema for it (generate.py): JSON, or for text, image and PDF
answers a small placeholder (media.py), always naming the caller's workspace."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from . import checks, resources
from .call import Call, pick_fields
from .generate import marker
from .media import media_type_for, placeholder
from .spec import Operation, load


async def answer(call: Call) -> web.StreamResponse:
    """Answer a routed, authenticated call of a generated operation."""
    op = call.operation
    spec = load(op.version)
    checks.check_path(op, call.params)
    found = resources.refs(spec, op, call.params)
    resources.require(call, found)
    checks.check_query(op, call.request.query)
    body = checks.parse_body(op, await call.request.read())
    checks.check_body(spec, op, body)
    value = resources.answer(call, spec, op, found, body)
    return encode(call, op, value)


def encode(call: Call, op: Operation, value: Any) -> web.Response:
    """The answer in the media type the operation documents (or the result format asks for)."""
    if op.status == 204 or not op.content:
        return web.Response(status=op.status)
    media_type = choose_media_type(call, op)
    if media_type == "application/json":
        schema = load(op.version).resolve(op.content[media_type])
        if schema.get("type") == "string":  # a raw answer: a JSON string that names the ws
            value = marker(call.authenticate().workspace, op.operation_id)
        return web.json_response(pick_fields(call, value), status=op.status)
    text = marker(call.authenticate().workspace, op.operation_id)
    return web.Response(
        status=op.status,
        body=placeholder(media_type, text),
        content_type=media_type,
        charset="utf-8" if media_type.startswith("text/") else None,
    )


def choose_media_type(call: Call, op: Operation) -> str:
    offered = tuple(op.content)
    wanted = call.params.get("result_format") or call.request.query.get("format")
    if wanted:
        chosen = media_type_for(wanted, offered)
        if chosen is not None:
            return chosen
    first = offered[0]
    return "text/plain" if first == "text" else first

"""Hand-modelled queries: create and read them, run them (streamed, with a byte-count knob
for big downloads), and query tasks that report "added", then "running", then their result.

Results start every row with the workspace that ran them."""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from aiohttp import web

from . import content, results
from .call import ApiError, Call, json_object, ok, optional_str, reason, str_list, validation_error
from .content import Json
from .results import Query, QueryTask


async def create_query(call: Call) -> web.StreamResponse:
    workspace = call.authenticate().workspace
    body = await json_object(call.request)
    model, view = optional_str(body, "model"), optional_str(body, "view")
    if not model:
        raise validation_error("model", "missing", "model is required")
    if not view:
        raise validation_error("view", "missing", "view is required")
    if content.find_model(workspace, model) is None:
        message = f"Model '{model}' not found in the {workspace} workspace"
        raise validation_error("model", "not_found", message)
    limit = body.get("limit")
    filter_expression = optional_str(body, "filter_expression")
    filters = body.get("filters") or {}
    if not isinstance(filters, dict) or not all(isinstance(v, str) for v in filters.values()):
        raise validation_error("filters", "invalid", "filters must map field names to strings")
    query = Query(
        id=str(len(call.emu.queries) + 1),
        model=model,
        view=view,
        fields=str_list(body, "fields"),
        limit=None if limit is None else str(limit),
        filters={str(k): v for k, v in filters.items()},
        sorts=str_list(body, "sorts"),
        slug=secrets.token_hex(4)[:7],
        client_id=secrets.token_hex(11),
        filter_expression=filter_expression or None,
    )
    call.emu.queries[query.id] = query
    return ok(call, results.query(query, call.origin))


def query_of(call: Call) -> Query:
    query = call.emu.queries.get(call.params["query_id"])
    if query is None:
        raise ApiError(404, "Not found")
    return query


async def get_query(call: Call) -> web.StreamResponse:
    return ok(call, results.query(query_of(call), call.origin))


_TEXT_FORMATS = {"csv": (",", "text/csv"), "txt": ("\t", "text/plain")}


async def run_query(call: Call) -> web.StreamResponse:
    query, workspace = query_of(call), call.authenticate().workspace
    if content.find_model(workspace, query.model) is None:
        raise ApiError(404, "Not found")
    result_format = call.params["result_format"]
    size = emulator_bytes(call.request)
    rows = results.row_count(call.request.query.get("limit", query.limit))
    if result_format in _TEXT_FORMATS:
        sep, content_type = _TEXT_FORMATS[result_format]
        if size is None:
            return await stream(call, [results.table(query, workspace, rows, sep)], content_type)
        return await stream(call, results.bulk_table(query, workspace, sep, size), content_type)
    if size is not None:
        raise ApiError(400, "emulator_bytes needs result_format csv or txt")
    if result_format == "json":
        return web.json_response(results.json_rows(query, workspace, rows))
    if result_format == "sql":
        return web.Response(text=results.sql(query, workspace), content_type="text/plain")
    raise ApiError(400, f"Unsupported result format '{result_format}'")


def emulator_bytes(request: web.Request) -> int | None:
    raw = request.query.get("emulator_bytes")
    if raw is None:
        return None
    if not raw.isdigit():
        raise ApiError(400, "emulator_bytes must be a non-negative integer")
    return int(raw)


async def stream(
    call: Call, pieces: Iterable[bytes | memoryview], content_type: str
) -> web.StreamResponse:
    """Chunked response; with `faults.reset_after_bytes` the connection dies mid-body."""
    response = web.StreamResponse()
    response.content_type, response.charset = content_type, "utf-8"
    response.enable_chunked_encoding()
    await response.prepare(call.request)
    if call.request.method == "HEAD":
        return response  # the head of the GET, no body (aiohttp writes what it is given)
    cut = call.emu.take_reset_after_bytes()
    sent = 0
    for piece in pieces:
        if cut is not None and sent + len(piece) >= cut:
            piece = piece[: cut - sent]
        if piece:
            await response.write(piece)
            sent += len(piece)
        if cut is not None and sent >= cut:
            break
    if cut is not None and call.request.transport is not None:
        # close() flushes what was written, then drops the connection before the last chunk.
        call.request.transport.close()
    return response


# --- query tasks ----------------------------------------------------------------------------


async def create_query_task(call: Call) -> web.StreamResponse:
    """Runs the query in the session's workspace (production with ?force_production=true)."""
    session = call.authenticate()
    body = await json_object(call.request)
    if isinstance(body.get("query_id"), int) and not isinstance(body["query_id"], bool):
        body["query_id"] = str(body["query_id"])  # 3.1's ids are integers
    query_id, result_format = optional_str(body, "query_id"), optional_str(body, "result_format")
    if not query_id:
        raise validation_error("query_id", "missing", "query_id is required")
    if not result_format:
        raise validation_error("result_format", "missing", "result_format is required")
    if result_format not in results.RESULT_FORMATS:
        message = f"result_format must be one of {', '.join(results.RESULT_FORMATS)}"
        raise validation_error("result_format", "invalid", message)
    if result_format not in results.TASK_FORMATS:
        raise ApiError(400, f"Unsupported result format '{result_format}'")
    query = call.emu.queries.get(query_id)
    if query is None:
        raise ApiError(404, "Not found")
    forced = call.request.query.get("force_production", "").lower() == "true"
    workspace = content.PRODUCTION if forced else session.workspace
    task = QueryTask(
        id=secrets.token_hex(16),
        query_id=query.id,
        user_id=session.user.id,
        workspace=workspace,
        result_format=result_format,
        force_production=forced,
        polls_left=call.emu.query_task_polls,
        error=results.compile_error(query, workspace),
        number=len(call.emu.query_tasks) + 1,
    )
    call.emu.query_tasks[task.id] = task
    return ok(call, results.query_task(task, query, call.origin))


def own_task(call: Call, task_id: str) -> QueryTask | None:
    """The caller's query task of that id; other users' tasks are not theirs to see."""
    task = call.emu.query_tasks.get(task_id)
    return task if task is not None and task.user_id == call.authenticate().user.id else None


async def query_task(call: Call) -> web.StreamResponse:
    task = own_task(call, call.params["query_task_id"])
    if task is None:
        raise ApiError(404, "Not found")
    task.observe()
    return ok(call, results.query_task(task, call.emu.queries[task.query_id], call.origin))


async def query_task_results(call: Call) -> web.StreamResponse:
    """The result once complete; 202 while running; a failed run is a 400 with its message."""
    task = own_task(call, call.params["query_task_id"])
    if task is None:
        raise ApiError(404, "Not found")
    task.observe()
    result = results.task_result(task, call.emu.queries[task.query_id])
    if result["status"] == "error" and task.result_format != "json_detail":
        raise ApiError(400, task.error or reason(400))
    if result["status"] in ("complete", "error"):
        data = result["data"]
        if isinstance(data, str):
            return web.Response(text=data, content_type="text/plain")
        return web.json_response(data)
    if result["status"] == "killed":
        raise ApiError(404, "Not found")
    return web.Response(status=202, text="", content_type="text/plain")  # not finished yet


async def query_task_multi_results(call: Call) -> web.StreamResponse:
    """Task id -> {status[, data]}; ids that are not the caller's are "missing"."""
    call.authenticate()
    ids = [i for raw in call.request.query.getall("query_task_ids", ()) for i in raw.split(",")]
    ids = [i.strip() for i in ids if i.strip()]
    if not ids:
        raise ApiError(400, "query_task_ids is required")
    out: Json = {}
    for task_id in ids:
        task = own_task(call, task_id)
        if task is None:
            out[task_id] = {"status": "missing"}
        else:
            task.observe()
            out[task_id] = results.task_result(task, call.emu.queries[task.query_id])
    return web.json_response(out)


async def all_running_queries(call: Call) -> web.StreamResponse:
    user = call.authenticate().user
    running = [
        results.running_query(task, call.emu.queries[task.query_id], call.origin)
        for task in call.emu.query_tasks.values()
        if task.user_id == user.id and task.status in ("added", "running")
    ]
    return ok(call, running)


async def kill_query(call: Call) -> web.StreamResponse:
    """Kills a query task still added or running; a finished or unknown one is 404."""
    task = own_task(call, call.params["query_task_id"])
    if task is None or task.status not in ("added", "running"):
        raise ApiError(404, "Not found")
    task.status = "killed"
    return web.Response(status=204)

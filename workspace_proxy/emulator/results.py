"""Query results, as pure functions: queries and query tasks as the API shows them, rows,
tables, SQL, and multi-megabyte downloads generated without holding them in memory.

Every row starts with the workspace that ran it (the `_workspace` column)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import content
from .content import Json

WORKSPACE_COLUMN = "_workspace"
BULK_CHUNK_SIZE = 256 * 1024
_BULK_ROW_SIZE = 64
DEFAULT_ROWS = 5
MAX_ROWS = 5000


@dataclass(frozen=True)
class Query:
    """A query as stored by POST /queries."""

    id: str
    model: str
    view: str
    fields: tuple[str, ...]
    limit: str | None
    filters: dict[str, str] = field(default_factory=dict)
    sorts: tuple[str, ...] = ()
    slug: str = ""
    client_id: str = ""
    filter_expression: str | None = None


@dataclass
class QueryTask:
    """An async run of a query (POST /query_tasks), bound to the workspace it was created in.

    It reports "added", then "running" for `polls_left` status reads, then its result."""

    id: str
    query_id: str
    user_id: str
    workspace: str
    result_format: str
    force_production: bool = False
    polls_left: int = 0
    status: str = "added"
    error: str | None = None
    number: int = 0
    """Its running query's id (RunningQueries.id: a number, an integer in 3.1)."""

    def observe(self) -> str:
        """A status read: "running" while `polls_left`, then "complete" or "error"."""
        if self.status in ("added", "running"):
            if self.polls_left > 0:
                self.polls_left -= 1
                self.status = "running"
            else:
                self.status = "complete" if self.error is None else "error"
        return self.status


def query(item: Query, origin: str) -> Json:
    return {
        "id": item.id,
        "model": item.model,
        "view": item.view,
        "fields": list(item.fields),
        "limit": item.limit,
        "filters": item.filters,
        "sorts": list(item.sorts),
        "filter_expression": item.filter_expression,
        "slug": item.slug,
        "client_id": item.client_id,
        "share_url": f"{origin}/x/{item.client_id}",
        "url": f"/explore/{item.model}/{item.view}?qid={item.client_id}",
        "can": {"run": True, "show": True},
    }


def row_count(limit: str | None) -> int:
    """Rows a run returns: the limit if positive, else DEFAULT_ROWS, capped at MAX_ROWS."""
    try:
        wanted = int(limit) if limit is not None else DEFAULT_ROWS
    except ValueError:
        wanted = DEFAULT_ROWS
    return min(wanted if wanted > 0 else DEFAULT_ROWS, MAX_ROWS)


def columns(item: Query) -> tuple[str, ...]:
    return (WORKSPACE_COLUMN, *(item.fields or (f"{item.view}.id",)))


def json_rows(item: Query, workspace: str, rows: int) -> list[Json]:
    names = columns(item)[1:]
    return [{WORKSPACE_COLUMN: workspace, **{n: f"{n} {i}" for n in names}} for i in range(rows)]


def table(item: Query, workspace: str, rows: int, sep: str) -> bytes:
    """A small CSV/TSV result: header, then `rows` rows whose first column is the workspace."""
    names = columns(item)[1:]
    lines = [sep.join(columns(item))]
    lines += [sep.join((workspace, *(f"{n} {i}" for n in names))) for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def sql(item: Query, workspace: str) -> str:
    selected = ", ".join(item.fields) or "*"
    limit = item.limit or "500"
    where = f"WHERE ({item.filter_expression})\n" if item.filter_expression else ""
    return f"-- workspace: {workspace}\nSELECT {selected}\nFROM {item.view}\n{where}LIMIT {limit}\n"


_CONSTANT_COMPARISON = re.compile(r"\s*(\d+)\s*=\s*(\d+)\s*")


def selects_nothing(item: Query) -> bool:
    """A filter expression that is a false constant comparison ("1=2", as spectacles sends)."""
    match = _CONSTANT_COMPARISON.fullmatch(item.filter_expression or "")
    return match is not None and int(match[1]) != int(match[2])


# CreateQueryTask.result_format in the 4.0 spec, and the ones the emulator can produce.
RESULT_FORMATS = (
    "inline_json", "json", "json_detail", "json_fe", "json_bi", "csv", "html", "md", "txt",
    "xlsx", "gsxml", "sql", "odc",
)  # fmt: skip
TASK_FORMATS = ("json", "json_detail", "json_bi", "csv", "txt", "sql")
_FINISHED = ("complete", "error", "killed")


def compile_error(item: Query, workspace: str) -> str | None:
    """Why a query cannot run in a workspace (its model or explore is not there), or None."""
    model = content.find_model(workspace, item.model)
    if model is None or item.view not in content.explore_names(model, workspace):
        return f"Explore '{item.model}/{item.view}' not found in the {workspace} workspace"
    return None


def query_task(task: QueryTask, item: Query, origin: str) -> Json:
    """QueryTask as POST and GET /query_tasks show it."""
    return {
        "id": task.id,
        "query_id": task.query_id,
        "query": query(item, origin),
        "status": task.status,
        "result_format": task.result_format,
        "source": "api",
        "cache": False,
        "force_production": task.force_production,
        "runtime": 0.01 if task.status in _FINISHED else None,
        "can": {"show": True, "cancel": True},
    }


def result_fields(item: Query) -> Json:
    """Field metadata of a result (json_bi `metadata.fields`, json_detail `fields`)."""
    names = columns(item)[1:]

    def meta(name: str) -> Json:
        return {"name": name, "label": name.replace(".", " ").replace("_", " ").title()}

    return {
        "dimensions": [meta(n) for n in names if not n.endswith(".count")],
        "measures": [meta(n) for n in names if n.endswith(".count")],
        "table_calculations": [],
        "pivots": [],
    }


def task_result(task: QueryTask, item: Query) -> Json:
    """One value of GET /query_tasks/multi_results: the status, and the data once finished."""
    status = task.status
    if status not in ("complete", "error"):
        return {"status": status}
    text = sql(item, task.workspace)
    data: Any
    if status == "error":
        if task.result_format == "json_bi":
            metadata = {"fields": result_fields(item), "pivots": [], "sql": text}
            data = {"metadata": metadata, "rows": [{"looker_error": task.error}]}
        else:
            error = {"message": task.error, "message_details": None, "sql_error_loc": None}
            data = {"id": task.id, "runtime": 0.01, "sql": text, "errors": [error]}
        return {"status": status, "data": data}
    rows = json_rows(item, task.workspace, 0 if selects_nothing(item) else row_count(item.limit))
    if task.result_format == "json_bi":
        metadata = {"fields": result_fields(item), "pivots": [], "sql": text}
        data = {"metadata": metadata, "rows": rows}
    elif task.result_format == "json_detail":
        data = {"id": task.id, "runtime": 0.01, "sql": text, "fields": result_fields(item)}
        data["data"] = rows
    elif task.result_format == "json":
        data = rows
    elif task.result_format == "sql":
        data = text
    else:
        sep = "\t" if task.result_format == "txt" else ","
        data = table(item, task.workspace, len(rows), sep).decode()
    return {"status": status, "data": data}


def running_query(task: QueryTask, item: Query, origin: str) -> Json:
    """RunningQueries: one query task still being worked on."""
    return {
        "id": str(task.number),
        "query_task_id": task.id,
        "query_id": item.id,
        "query": query(item, origin),
        "source": "api",
        "status": task.status,
        "sql": sql(item, task.workspace),
        "connection_name": "warehouse",
        "can": {"show": True, "cancel": True},
    }


@functools.lru_cache(maxsize=8)
def _bulk_chunk(workspace: str, sep: str) -> bytes:
    """BULK_CHUNK_SIZE bytes of fixed-width rows "<workspace><sep>xxx…\\n"."""
    lead = f"{workspace}{sep}".encode()
    row = lead + b"x" * (_BULK_ROW_SIZE - len(lead) - 1) + b"\n"
    return row * (BULK_CHUNK_SIZE // _BULK_ROW_SIZE)


def bulk_table(item: Query, workspace: str, sep: str, size: int) -> Iterator[memoryview]:
    """Exactly `size` bytes of result: header line, then generated rows; never all in memory."""
    header = memoryview((sep.join(columns(item)) + "\n").encode())
    yield header[:size]
    remaining = max(size - len(header), 0)
    chunk = memoryview(_bulk_chunk(workspace, sep))
    while remaining >= len(chunk):
        yield chunk
        remaining -= len(chunk)
    if remaining:
        yield chunk[:remaining]

"""Workspace-dependent Looker content, as pure functions returning JSON-ready values.

The dev workspace visibly differs from production: titles carry " (dev)", the model
"sales" gains the explore "orders_wip", and the project/model "sandbox" exists only in dev.
Query results start every row with the workspace that ran them."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .model import ApiUser

Json = dict[str, Any]

PRODUCTION = "production"
DEV = "dev"
WORKSPACES = (PRODUCTION, DEV)

LOOKER_RELEASE = "26.12.3"
DOCS_URL = "https://cloud.google.com/looker/docs/"
WORKSPACE_COLUMN = "_workspace"
BULK_CHUNK_SIZE = 256 * 1024
_BULK_ROW_SIZE = 64
DEFAULT_ROWS = 5
MAX_ROWS = 5000


@dataclass(frozen=True)
class Project:
    """A LookML project; dev_only ones have never been deployed to production."""

    id: str
    production_branch: str = "main"
    dev_only: bool = False


@dataclass(frozen=True)
class LookmlModel:
    """A model, the project it belongs to, and its explores per workspace."""

    name: str
    project: str
    explores: tuple[str, ...]
    dev_explores: tuple[str, ...] = ()
    dev_only: bool = False


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


@dataclass
class Branch:
    """A git branch of one project; personal branches have an owner."""

    name: str
    ref: str
    owner: ApiUser | None = None


PROJECTS = (Project("sales"), Project("sandbox", dev_only=True))
MODELS = (
    LookmlModel("sales", "sales", ("orders", "customers"), dev_explores=("orders_wip",)),
    LookmlModel("sandbox", "sandbox", ("experiments",), dev_only=True),
)
_LOOKS = {"1": ("Revenue", "sales"), "2": ("Customers", "sales")}
_DASHBOARDS = {"1": ("Sales Overview", "sales")}
LOOK_IDS = tuple(_LOOKS)
DASHBOARD_IDS = tuple(_DASHBOARDS)


def tag(title: str, workspace: str) -> str:
    """A title as shown in a workspace: "Revenue" or "Revenue (dev)"."""
    return title if workspace == PRODUCTION else f"{title} ({workspace})"


def slug(text: str) -> str:
    """Lowercase, with runs of other characters turned into "-"."""
    return re.sub(r"[^a-z0-9_.]+", "-", text.lower()).strip("-")


def personal_branch(user: ApiUser) -> str:
    """Default dev branch of a user: "dev-" + display name, lowercased."""
    return f"dev-{slug(user.display_name)}"


def fake_sha(*parts: str) -> str:
    """A stable, git-looking commit id."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:40]


def versions(origin: str) -> Json:
    """ApiVersion; origin is scheme://host:port of the request."""

    def element(version: str, full: str, status: str) -> Json:
        url = f"{origin}/api/{version}/swagger.json"
        return {"version": version, "full_version": full, "status": status, "swagger_url": url}

    current = element("4.0", "4.0.26.12", "current")
    return {
        "looker_release_version": LOOKER_RELEASE,
        "current_version": current,
        "supported_versions": [element("3.1", "3.1.0", "legacy"), current],
        "api_server_url": origin,
        "web_server_url": origin,
    }


def user(account: ApiUser, workspace: str, branch: str) -> Json:
    """User as GET /user shows it; ui_state tells the session's workspace and branch."""
    first, _, last = account.display_name.partition(" ")
    return {
        "id": account.id,
        "display_name": account.display_name,
        "first_name": first,
        "last_name": last,
        "email": f"{slug(account.display_name)}@example.com",
        "is_disabled": False,
        "locale": "en",
        "role_ids": ["2"] if account.is_admin else ["3"],
        "group_ids": ["1"],
        "personal_folder_id": f"10{account.id}",
        "home_folder_id": "1",
        "ui_state": {"workspace_id": workspace, "git_branch": branch},
        "credentials_api3": [
            {"id": account.id, "client_id": account.client_id, "is_disabled": False, "type": "api3"}
        ],
        "can": {"show": True, "index": True, "show_details": True},
    }


def visible_projects(workspace: str) -> tuple[Project, ...]:
    return tuple(p for p in PROJECTS if workspace == DEV or not p.dev_only)


def find_project(workspace: str, project_id: str) -> Project | None:
    return next((p for p in visible_projects(workspace) if p.id == project_id), None)


def project(item: Project) -> Json:
    return {
        "id": item.id,
        "name": item.id,
        "uses_git": True,
        "is_git_dev_locked": False,
        "git_remote_url": f"git@git.example.com:looker/{item.id}.git",
        "git_production_branch_name": item.production_branch,
        "pull_request_mode": "off",
        "validation_required": False,
        "git_release_mgmt_enabled": False,
        "allow_warnings": True,
        "is_example": False,
        "can": {"read": True, "update": True},
    }


def workspace(workspace_id: str) -> Json:
    return {
        "id": workspace_id,
        "projects": [project(p) for p in visible_projects(workspace_id)],
        "can": {"show": True},
    }


def _explores(model: LookmlModel, workspace: str) -> tuple[str, ...]:
    return model.explores + (model.dev_explores if workspace == DEV else ())


def find_model(workspace: str, name: str) -> LookmlModel | None:
    found = next((m for m in MODELS if m.name == name), None)
    if found is None or (found.dev_only and workspace != DEV):
        return None
    return found


def visible_models(workspace: str) -> tuple[LookmlModel, ...]:
    return tuple(m for m in MODELS if find_model(workspace, m.name))


def lookml_models(workspace: str) -> list[Json]:
    return [lookml_model(m, workspace) for m in visible_models(workspace)]


def lookml_model(model: LookmlModel, workspace: str) -> Json:
    return {
        "name": model.name,
        "label": tag(model.name.title(), workspace),
        "project_name": model.project,
        "allowed_db_connection_names": ["warehouse"],
        "unlimited_db_connections": False,
        "has_content": True,
        "explores": [
            {"name": e, "label": tag(e.replace("_", " ").title(), workspace), "hidden": False}
            for e in _explores(model, workspace)
        ],
        "can": {"index": True, "show": True},
    }


def explore(model: LookmlModel, name: str, workspace: str) -> Json | None:
    if name not in _explores(model, workspace):
        return None

    return {
        "id": f"{model.name}::{name}",
        "name": name,
        "model_name": model.name,
        "label": tag(name.replace("_", " ").title(), workspace),
        "fields": {
            "dimensions": [
                explore_field(model, name, column, kind, workspace) for column, kind in _DIMENSIONS
            ],
            "measures": [explore_field(model, name, "count", "count", workspace)],
            "filters": [],
            "parameters": [],
        },
    }


_DIMENSIONS = (("id", "number"), ("created_date", "date"))


def explore_field(model: LookmlModel, view: str, column: str, kind: str, workspace: str) -> Json:
    """LookmlModelExploreField: a dimension, or the measure when kind is "count"."""
    measure = kind == "count"
    label = tag(column.replace("_", " ").title(), workspace)
    source = f"{view}.view.lkml"
    return {
        "name": f"{view}.{column}",
        "label": f"{view.replace('_', ' ').title()} {label}",
        "label_short": label,
        "view": view,
        "view_label": view.replace("_", " ").title(),
        "category": "measure" if measure else "dimension",
        "measure": measure,
        "type": kind,
        "is_numeric": kind in ("number", "count"),
        "is_timeframe": kind == "date",
        "primary_key": column == "id",
        "hidden": False,
        "tags": [],
        "sql": "" if measure else f"${{TABLE}}.{column}",
        "project_name": model.project,
        "source_file": source,
        "source_file_path": f"{model.project}/{source}",
        "lookml_link": f"/projects/{model.project}/files/{source}?line=1",
    }


def look(look_id: str, workspace: str, branch: str) -> Json | None:
    if look_id not in _LOOKS:
        return None
    title, model = _LOOKS[look_id]
    return {
        "id": look_id,
        "title": tag(title, workspace),
        "description": f"Served from the {workspace} workspace (branch {branch})",
        "model": {"id": model, "label": model.title()},
        "folder_id": "1",
        "user_id": "1",
        "public": False,
        "can": {"show": True, "run": True},
    }


def dashboard(dashboard_id: str, workspace: str) -> Json | None:
    if dashboard_id not in _DASHBOARDS:
        return None
    title, model = _DASHBOARDS[dashboard_id]
    return {
        "id": dashboard_id,
        "title": tag(title, workspace),
        "description": f"Served from the {workspace} workspace",
        "model": {"id": model, "label": model.title()},
        "folder_id": "1",
        "user_id": "1",
        "hidden": False,
        "readonly": False,
        "can": {"show": True},
    }


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
    model = find_model(workspace, item.model)
    if model is None or item.view not in _explores(model, workspace):
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


def git_branch(branch: Branch, project: Project, viewer: ApiUser) -> Json:
    """GitBranch as `viewer` sees it: their own personal branch is the writable one."""
    production = branch.name == project.production_branch
    return {
        "name": branch.name,
        "ref": branch.ref,
        "remote": "origin",
        "remote_name": branch.name,
        "remote_ref": branch.ref,
        "owner_name": branch.owner.display_name if branch.owner else None,
        "personal": branch.owner is not None,
        "readonly": production or (branch.owner is not None and branch.owner.id != viewer.id),
        "is_production": production,
        "is_local": True,
        "is_remote": True,
        "ahead_count": 0,
        "behind_count": 0,
        "commit_at": 1767225600,
        "can": {"update": not production},
    }


def manifest(item: Project) -> Json:
    return {
        "name": item.id,
        "imports": [],
        "localization_settings": {"default_locale": None, "localization_level": "permissive"},
        "can": {"show": True},
    }


def validation(item: Project, workspace: str, ref: str, *, cached: bool) -> Json:
    """ProjectValidation (or ProjectValidationCache when cached): no errors, digest per code."""
    body: Json = {
        "errors": [],
        "project_digest": fake_sha(item.id, workspace, ref),
        "models_not_validated": [],
        "computation_time": 0.01,
    }
    if cached:
        body["stale"] = False
    return body

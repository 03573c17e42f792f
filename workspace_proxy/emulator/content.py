"""Workspace-dependent Looker content, as pure functions returning JSON-ready values.

The dev workspace visibly differs from production: titles carry " (dev)", the model
"sales" gains the explore "orders_wip", and the project/model "sandbox" exists only in dev.
Query results are in results.py."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .model import ApiUser

Json = dict[str, Any]

PRODUCTION = "production"
DEV = "dev"
WORKSPACES = (PRODUCTION, DEV)

LOOKER_RELEASE = "26.12.3"
DOCS_URL = "https://cloud.google.com/looker/docs/"


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


def explore_names(model: LookmlModel, workspace: str) -> tuple[str, ...]:
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
            for e in explore_names(model, workspace)
        ],
        "can": {"index": True, "show": True},
    }


def explore(model: LookmlModel, name: str, workspace: str) -> Json | None:
    if name not in explore_names(model, workspace):
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

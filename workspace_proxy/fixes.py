"""Pin failures that are configuration errors, not outages, and what to fix.

Looker answers some failures the same way however often it is asked: credentials it rejects,
a workspace the Looker user may not use, a project or branch that does not exist, a branch it
will not check out, a certificate that does not verify. Attempting those again every few
seconds only adds load and hides the cause behind "retry later". Such a failure is answered
with a ``503`` that says what to change (``fix``), logged as ``pin_failed`` with
``permanent: true``, and attempted again ``PERMANENT_FIRST_S`` later, then after twice as long
each time up to ``PERMANENT_MAX_S`` (it is still attempted: a fix made at Looker is picked up).
Everything else (Looker down, slow, rate limiting, 5xx, a PATCH that did not stick) may pass,
and is retried within seconds (``tokens.next_wait``).
"""

from __future__ import annotations

from typing import Final

from workspace_proxy.config import TeamConfig

PERMANENT_FIRST_S: Final = 30.0
"""The wait after a first failure that is a configuration error."""
PERMANENT_MAX_S: Final = 300.0
"""The longest wait between attempts for a team whose configuration is wrong."""
_REFUSED: Final = (400, 403, 404, 422)
"""Statuses with which Looker refuses a PATCH /session or a checkout for good."""


def permanent_wait(failures: int) -> float:
    """Seconds to the next attempt after ``failures`` configuration errors in a row."""
    return min(PERMANENT_MAX_S, PERMANENT_FIRST_S * 2.0 ** max(0, failures - 1))


def fix_for(team: TeamConfig, kind: str, *, caller: bool = False) -> str | None:
    """What to change after a pin of ``team``'s session failed with ``kind`` (a failure kind of
    ``looker.LookerClient``), or None when the failure may pass. ``caller``: the session was a
    passthrough caller's own (its Looker user, not the team's, is the one to fix)."""
    where = f"teams.{team.name}"
    user = "this caller's Looker user" if caller else "the team's Looker API user"
    if kind == "rejected" and not caller:
        return (
            f"Looker refused the team's API credentials: check {where}.looker_client_id and "
            f"{where}.looker_client_secret (a Looker user's API3 client id and secret, from "
            "Admin > Users > Edit > API keys)"
        )
    if _status_of(kind, "patch_") in _REFUSED:
        return (
            f"{user} may not use the {team.workspace!r} workspace: give it the develop "
            f"permission in Looker, or pin {where} to production"
        )
    branch = team.git_branch
    if branch is not None:
        pinned = f"branch {branch.name!r} of project {branch.project!r}"
        if kind == "branch_404":
            return (
                f"project {branch.project!r} or its branch {branch.name!r} does not exist at "
                f"Looker: create the branch, or pin an existing one in {where}.git_branch"
            )
        if _status_of(kind, "branch_") in _REFUSED:
            return f"Looker will not check out {pinned} for {user}: fix {where}.git_branch"
        if kind == "wrong_branch":
            return (
                f"Looker checks out another branch when asked for {pinned} (a production "
                f"branch cannot be checked out in dev mode): pin a dev branch in "
                f"{where}.git_branch"
            )
    if _status_of(kind, "sudo_") in (400, 403, 404):
        return (
            "Looker refused the sudo: the team's Looker API user must be an admin, and the "
            f"user to act as must exist (or turn {where}.allow_sudo off)"
        )
    if kind == "tls":
        return "Looker's TLS certificate does not verify: set looker.ca_file to the CA bundle"
    if kind == "no_credentials":
        return f"give {where} its Looker API credentials"
    return None


def _status_of(kind: str, prefix: str) -> int | None:
    rest = kind.removeprefix(prefix)
    return int(rest) if rest != kind and rest.isdigit() else None

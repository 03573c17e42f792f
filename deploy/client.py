"""A BI client stand-in: the stock looker_sdk, pointed at workspace-proxy, prints who and where.

Configured like any looker_sdk program, through the environment: LOOKERSDK_BASE_URL (the proxy,
no path), LOOKERSDK_CLIENT_ID and LOOKERSDK_CLIENT_SECRET (a caller's proxy credentials, not
Looker's). With EXPECTED_WORKSPACE set, exits 1 unless every session it saw was in that
workspace, including the one after the SDK's own logout and re-login.

    pip install looker-sdk && python deploy/client.py
"""

from __future__ import annotations

import os
import sys

import looker_sdk


def main() -> int:
    sdk = looker_sdk.init40()
    me = sdk.me()
    print(f"me(): {me.display_name} (Looker user {me.id})")
    seen = [sdk.session().workspace_id]
    print(f"session(): workspace = {seen[-1]}")
    models = sorted(str(m.name) for m in sdk.all_lookml_models(fields="name"))
    print(f"lookml models: {', '.join(models) or '(none)'}")
    sdk.auth.logout()
    seen.append(sdk.session().workspace_id)
    print(f"after logout and the SDK's next login: workspace = {seen[-1]}")
    expected = os.environ.get("EXPECTED_WORKSPACE")
    if expected and any(workspace != expected for workspace in seen):
        print(f"FAIL: expected every session in {expected}, saw {seen}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``workspace-proxy emulator``: the emulator as a process of its own. Serves it until SIGINT or
SIGTERM, and says how to use it: ``banner`` (printed once it listens) and ``USERS_FORMAT`` (the
``--users`` file, in ``--help``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

from .admin import ENDPOINTS
from .server import LookerEmulator

USERS_FORMAT = """\
--users FILE is a YAML list of API users, for example:

  - id: 7                        # Looker user id (a string or an integer)
    client_id: ops-client-id     # API3 credentials the user logs in with
    client_secret: ops-client-secret
    display_name: Ops            # its dev branch is dev-<display_name, lowercased>
    is_admin: false              # optional, default false: may sudo (POST /login/{user_id})
    can_develop: true            # optional, default true: false makes PATCH /session to dev
                                 # answer 422, as for a Looker user without develop permission

Without --users there are four: Admin (admin-client-id / admin-client-secret, an admin),
Analytics, Finance and Marketing (analytics-client-id / analytics-client-secret, and so on)."""


def banner(emu: LookerEmulator, url: str) -> str:
    """What the emulator prints once it listens: where, who may log in, how to control it."""
    lines = [
        f"Looker emulator listening on {url} (a fake Looker, for trying and testing only)",
        f"  point workspace-proxy at it with looker.base_url: {url}",
        "  API users (client_id / client_secret):",
    ]
    ids = max(len(u.client_id) for u in emu.users)
    secrets = max(len(u.client_secret) for u in emu.users)
    for user in emu.users:
        notes = [n for n, on in (("admin", user.is_admin), ("no dev", not user.can_develop)) if on]
        extra = f"  ({', '.join(notes)})" if notes else ""
        lines.append(
            f"    {user.id:>3}  {user.client_id:<{ids}}  {user.client_secret:<{secrets}}"
            f"  {user.display_name}{extra}"
        )
    lines.append(f"  tokens live {emu.token_ttl} s; every call is audited with its workspace")
    lines.append("  admin endpoints (not audited):")
    width = max(len(path) for path, _ in ENDPOINTS)
    lines += [f"    {path:<{width}}  {what}" for path, what in ENDPOINTS]
    lines.append("  stop it with Ctrl-C or SIGTERM")
    return "\n".join(lines)


async def serve(
    emu: LookerEmulator, host: str, port: int, *, listening: Callable[[str], None]
) -> None:
    """Serve ``emu`` on host:port (0: a free port) until SIGINT or SIGTERM; ``listening`` gets
    its URL once it listens. OSError when the address cannot be bound (a busy port)."""
    runner = web.AppRunner(emu.app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        emu.base_url = f"http://{shown}:{bound[1]}"
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        listening(emu.base_url)
        await stop.wait()
    finally:
        await runner.cleanup()

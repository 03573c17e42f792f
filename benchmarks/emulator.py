"""The bundled Looker emulator, served with a deep accept queue for the cold-start burst.

Same app as ``workspace-proxy emulator`` (logins and PATCHes are read from its
``GET /_emulator/stats``); the only difference is ``backlog=4096``: with aiohttp's default of 128,
a proxy opening hundreds of upstream connections at once overflows the emulator's accept queue,
the kernel drops SYNs, and the burst measures the client's 1 s SYN retry instead of the proxy.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from workspace_proxy.emulator import LookerEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        LookerEmulator().app,
        host="127.0.0.1",
        port=args.port,
        backlog=4096,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()

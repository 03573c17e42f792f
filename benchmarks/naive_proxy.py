"""The naive Python reference: a plain aiohttp forwarding proxy, no auth, no logging, no metrics.

One process; the harness starts one per core, all on the same port (SO_REUSEPORT). The only
departure from aiohttp's defaults is an unlimited client pool (the default of 100 connections
would turn the 2,000-request burst into a measurement of that default).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "host"}
)
HTTP = web.AppKey("http", aiohttp.ClientSession)


def make_app(upstream: str) -> web.Application:
    async def client(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
            app[HTTP] = http
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with request.app[HTTP].request(
            request.method,
            URL(upstream + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as up:
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
            response = web.StreamResponse(status=up.status, headers=out)
            await response.prepare(request)
            async for chunk in up.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8081")
    args = parser.parse_args()
    app = make_app(args.upstream.rstrip("/"))
    web.run_app(app, host="127.0.0.1", port=args.port, reuse_port=True, access_log=None,
                print=lambda _: print("listening", flush=True))  # fmt: skip


if __name__ == "__main__":
    main()

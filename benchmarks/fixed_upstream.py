"""A tiny Looker stand-in with fixed answers, on bare asyncio streams (no framework).

Two uses: the *slow* upstream behind nginx (``SLOW_PATH`` answers after ``--delay`` seconds; a
sleeping coroutine costs almost nothing, so thousands of concurrent requests do not make it the
bottleneck) and, only when nginx cannot be installed, the whole upstream (login and sudo, each
with a token of its own, session, user JSON, the upload answer, a 1 MiB JSON answer, a CSV of
``--csv-bytes``), answering as the nginx upstream does (``HEAD /api/4.0/user`` with
``Content-Length: 0``). HTTP/1.1 keep-alive; request bodies (``Content-Length`` or chunked) are
read to the end and ignored before the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets

from benchmarks.servers import (
    CSV_PATH,
    MIB_PATH,
    SESSION_JSON,
    SLOW_PATH,
    UPLOAD_JSON,
    UPLOAD_PATH,
    USER_JSON,
    USER_PATH,
    login_json,
    mib_json,
)

_CHUNK = bytes(1024 * 1024)
SLOW_JSON = json.dumps({"id": "42", "data": [{"rows": 1}], "slow": True})
ANSWERS = {
    "/api/4.0/session": SESSION_JSON.encode(),
    USER_PATH: USER_JSON.encode(),
    UPLOAD_PATH: UPLOAD_JSON.encode(),
    MIB_PATH: mib_json(),
}
LOGIN = re.compile(r"/api/4\.0/login(/[0-9]+)?")


def _head(status: str, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _json(status: str, body: bytes) -> bytes:
    return _head(status, "application/json", len(body)) + body


class Upstream:
    def __init__(self, delay_s: float, csv_bytes: int) -> None:
        self.delay_s = delay_s
        self.csv_bytes = csv_bytes

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, _, rest = request_line.partition(" ")
                target = rest.split(" ")[0] or "/"
                fields: dict[str, str] = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                await _skip_body(reader, fields)
                await self.answer(method, target.split("?", 1)[0], writer)
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            writer.close()

    async def answer(self, method: str, path: str, writer: asyncio.StreamWriter) -> None:
        if method == "HEAD" and path == USER_PATH:
            writer.write(_head("200 OK", "application/json", 0))
        elif LOGIN.fullmatch(path):
            token = ("benchsudo" if path.count("/") > 3 else "bench") + secrets.token_hex(16)
            writer.write(_json("200 OK", login_json(token).encode()))
        elif path == SLOW_PATH:
            await asyncio.sleep(self.delay_s)
            writer.write(_json("200 OK", SLOW_JSON.encode()))
        elif path == CSV_PATH:
            writer.write(_head("200 OK", "text/csv", self.csv_bytes))
            left = self.csv_bytes
            while left > 0:
                piece = _CHUNK if left >= len(_CHUNK) else _CHUNK[:left]
                writer.write(piece)
                left -= len(piece)
                await writer.drain()
        elif path == "/api/4.0/logout":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path in ANSWERS:
            writer.write(_json("200 OK", ANSWERS[path]))
        else:
            writer.write(_json("404 Not Found", b'{"message":"Not found"}'))


async def _skip_body(reader: asyncio.StreamReader, fields: dict[str, str]) -> None:
    """Read a request body to its end (``Content-Length`` or chunked) and drop it."""
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await _drop(reader, size + 2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
            pass
    elif length := int(fields.get("content-length") or "0"):
        await _drop(reader, length)


async def _drop(reader: asyncio.StreamReader, size: int) -> None:
    while size > 0:
        piece = await reader.read(min(size, 1 << 20))
        if not piece:
            raise asyncio.IncompleteReadError(b"", size)
        size -= len(piece)


async def serve(port: int, delay_s: float, csv_bytes: int) -> None:
    upstream = Upstream(delay_s, csv_bytes)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before SLOW_PATH answers")
    parser.add_argument("--csv-bytes", type=int, default=1024**3)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay, args.csv_bytes))


if __name__ == "__main__":
    main()

"""A header spy in Looker's place: just enough Looker (login, PATCH/GET session) that keeps every
request's method, raw target and raw headers, so tests can check exactly what reached Looker."""

from __future__ import annotations

from aiohttp import web


class SpyLooker:
    """Just enough Looker (login, PATCH/GET session) that keeps every request's raw headers.

    ``TRACE`` is answered as RFC 9110 defines it: the request is echoed back as message/http."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[tuple[bytes, bytes]]]] = []
        self.workspace: dict[str, str] = {}
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.base_url = ""

    def forwarded(self) -> list[tuple[str, str, list[tuple[bytes, bytes]]]]:
        return [s for s in self.seen if not s[1].endswith(("/login", "/session"))]

    def tokens(self) -> list[str]:
        return list(self.workspace)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, list(request.raw_headers)))
        token = request.headers.get("Authorization", "").partition(" ")[2]
        if request.path == "/api/4.0/login":
            token = f"spy-looker-token-{len(self.workspace) + 1}"
            self.workspace[token] = "production"
            return web.json_response(
                {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
            )
        if token not in self.workspace:
            return web.json_response({"message": "Requires authentication."}, status=401)
        if request.path == "/api/4.0/session":
            if request.method == "PATCH":
                self.workspace[token] = (await request.json())["workspace_id"]
            return web.json_response({"workspace_id": self.workspace[token]})
        if request.method == "TRACE":
            lines = [f"TRACE {request.raw_path} HTTP/1.1".encode()]
            lines += [k + b": " + v for k, v in request.raw_headers]
            return web.Response(body=b"\r\n".join(lines), content_type="message/http")
        return web.json_response({"id": "2", "workspace": self.workspace[token]})

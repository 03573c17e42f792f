"""A header spy in Looker's place: just enough Looker (login, sudo login, PATCH/GET session, the
API client ids of a token's user) that keeps every request's method, raw target, raw headers and
body, so tests can check exactly what reached Looker."""

from __future__ import annotations

from aiohttp import web


class SpyLooker:
    """Just enough Looker (login, sudo login, PATCH/GET session, ``GET /user`` naming the API
    client that logged in) that keeps every request's raw headers and body (``bodies``, in the
    order of ``seen``).

    ``TRACE`` is answered as RFC 9110 defines it: the request is echoed back as message/http."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[tuple[bytes, bytes]]]] = []
        self.workspace: dict[str, str] = {}
        self.client_ids: dict[str, str] = {}
        """The API client id each token was logged in with (sudo tokens: none)."""
        self.bodies: list[bytes] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.base_url = ""

    def forwarded(self) -> list[tuple[str, str, list[tuple[bytes, bytes]]]]:
        return [s for s in self.seen if not s[1].endswith(("/login", "/session"))]

    def tokens(self) -> list[str]:
        return list(self.workspace)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, list(request.raw_headers)))
        self.bodies.append(await request.read())
        token = request.headers.get("Authorization", "").partition(" ")[2]
        if request.path == "/api/4.0/login":
            form = await request.post()
            return self._login(str(form.get("client_id", "")))
        if token not in self.workspace:
            return web.json_response({"message": "Requires authentication."}, status=401)
        if request.method == "POST" and request.path.startswith("/api/4.0/login/"):
            return self._login("")  # sudo: a new session, acting as that user
        asks_clients = "credentials_api3" in request.query.get("fields", "")
        if request.path == "/api/4.0/user" and asks_clients:
            creds = [{"client_id": self.client_ids[token]}] if self.client_ids.get(token) else []
            return web.json_response({"id": "2", "credentials_api3": creds})
        if request.path == "/api/4.0/session":
            if request.method == "PATCH":
                self.workspace[token] = (await request.json())["workspace_id"]
            return web.json_response({"workspace_id": self.workspace[token]})
        if request.method == "TRACE":
            lines = [f"TRACE {request.raw_path} HTTP/1.1".encode()]
            lines += [k + b": " + v for k, v in request.raw_headers]
            return web.Response(body=b"\r\n".join(lines), content_type="message/http")
        return web.json_response({"id": "2", "workspace": self.workspace[token]})

    def _login(self, client_id: str) -> web.Response:
        token = f"spy-looker-token-{len(self.workspace) + 1}"
        self.workspace[token] = "production"
        self.client_ids[token] = client_id
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        )

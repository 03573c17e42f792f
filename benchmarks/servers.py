"""The processes under test, their generated configs and fixtures.

Every server listens on 127.0.0.1 only, on a free port, and is started in its own process group
so that ``Proc.stop`` ends it and every worker it forked; the harness stops them all in
``finally`` blocks.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.system import free_port, process_tree

# --- Looker-shaped fixed answers -------------------------------------------------------------

LOOKER_TOKEN = "benchlookertoken0123456789abcdefghijklmnopqrstuv"


def login_json(token: str) -> str:
    return json.dumps(
        {"access_token": token, "token_type": "Bearer", "expires_in": 3600}, separators=(",", ":")
    )


SESSION_JSON = json.dumps(
    {"workspace_id": "dev", "sudo_user_id": None, "can": {"view": True, "update": True}},
    separators=(",", ":"),
)
USER_JSON = json.dumps(
    {
        "id": "2",
        "first_name": "Analytics",
        "last_name": "Bot",
        "display_name": "Analytics Bot",
        "email": "analytics-bot@example.com",
        "is_disabled": False,
        "locale": "en",
        "home_folder_id": "12",
        "personal_folder_id": "12",
        "role_ids": ["2", "7"],
        "group_ids": ["1", "4"],
        "credentials_api3": [{"id": "3", "client_id": "analytics-client-id", "is_disabled": False}],
        "presumed_looker_employee": False,
        "verified_looker_employee": False,
        "roles_externally_managed": False,
        "allow_direct_roles": True,
        "url": "https://example.looker.com:19999/api/4.0/users/2",
        "can": {"show": True, "index": True, "show_details": True, "sudo": False},
    },
    separators=(",", ":"),
)

# What Looker answers a body upload (``POST /api/4.0/queries``), after reading the whole body.
UPLOAD_JSON = json.dumps(
    {"id": "1001", "model": "bench", "view": "orders", "client_id": "bQ3kX9", "can": {}},
    separators=(",", ":"),
)

REPO = Path(__file__).resolve().parents[1]
USER_PATH = "/api/4.0/user"
CSV_PATH = "/api/4.0/queries/1/run/csv"
SLOW_PATH = "/api/4.0/queries/42/run/json"
UPLOAD_PATH = "/api/4.0/queries"
MIB_PATH = "/api/4.0/queries/2/run/json"
"""A 1 MiB JSON answer (a static file)."""
SUDO_PATH = "/api/4.0/login/{user_id}"
GIB = 1024**3
MIB = 1024**2

# Caller and Looker credentials for the generated workspace-proxy config. The Looker pair is the
# bundled emulator's built-in "analytics" API user; nginx accepts any credentials.
CALLER_ID = "bench-caller"
# A second managed team that allows sudo (its own caller and Looker API user), and a
# passthrough team whose callers log in with their own Looker API credentials.
SUDO_CALLER_ID = "bench-sudo-caller"
SUDO_USER_ID = "7"
PASSTHROUGH_LOOKER_ID = "bench-passthrough-client-id"
PASSTHROUGH_LOOKER_SECRET = "bench-passthrough-client-secret"
ENV: dict[str, str] = {
    "WP_BENCH_SIGNING_KEY": "benchmark-signing-key-0123456789-abcdefghijklmnop",
    "WP_BENCH_LOOKER_ID": "analytics-client-id",
    "WP_BENCH_LOOKER_SECRET": "analytics-client-secret",
    "WP_BENCH_CALLER_SECRET": "bench-caller-secret-0123456789",
    "WP_BENCH_SUDO_LOOKER_ID": "bench-sudo-admin-client-id",
    "WP_BENCH_SUDO_LOOKER_SECRET": "bench-sudo-admin-client-secret",
    "WP_BENCH_SUDO_CALLER_SECRET": "bench-sudo-caller-secret-0123456789",
}


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    """A server process group started by the harness."""

    name: str
    procs: list[subprocess.Popen[bytes]]
    log: Path
    port: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        found: set[int] = set()
        for p in self.procs:
            if p.poll() is None:
                found.update(process_tree(p.pid))
        return sorted(found)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self, wait_s: float = 5.0) -> None:
        """SIGTERM to every process of the tree, SIGKILL what is left after ``wait_s``."""
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    continue
            deadline = time.monotonic() + wait_s
            for p in self.procs:
                try:
                    p.wait(max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    continue
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
            if not pids:
                return

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _zombie(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return raw[raw.rfind(")") + 2 :].startswith("Z")


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    copies: int = 1,
    cwd: Path = REPO,
) -> Proc:
    """Start ``copies`` identical processes in one new process group, output to ``log``."""
    procs: list[subprocess.Popen[bytes]] = []
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        first = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            process_group=0,
        )
        procs.append(first)
        try:
            for _ in range(copies - 1):
                procs.append(
                    subprocess.Popen(
                        list(argv),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=full_env,
                        cwd=cwd,
                        process_group=first.pid,
                    )
                )
        except OSError:
            Proc(name, procs, log, port).stop()
            raise
    return Proc(name, procs, log, port)


def wait_until(proc: Proc, ready: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``ready`` (bounded) until it holds; fail with the server's log if it never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during startup:\n{proc.tail()}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout_s:.0f}s:\n{proc.tail()}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_call(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request to 127.0.0.1:port; (0, b"") when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


# --- fixtures and the upstream ---------------------------------------------------------------


def mib_json(size: int = MIB) -> bytes:
    """A JSON document of exactly ``size`` bytes (the 1 MiB answer)."""
    head, tail = b'{"rows":["', b'"]}'
    return head + b"r" * (size - len(head) - len(tail)) + tail


def write_fixtures(root: Path, download_bytes: int) -> Path:
    """Static files nginx serves as Looker: the user JSON, a 1 MiB JSON answer and a sparse CSV
    of the given size."""
    www = root / "www"
    (www / "api/4.0/queries/1/run").mkdir(parents=True, exist_ok=True)
    (www / "api/4.0/queries/2/run").mkdir(parents=True, exist_ok=True)
    (www / "api/4.0/user").write_text(USER_JSON)
    (www / MIB_PATH.lstrip("/")).write_bytes(mib_json())
    csv = www / "api/4.0/queries/1/run/csv"
    with csv.open("wb") as f:
        f.truncate(download_bytes)  # sparse: reads cost no disk I/O; the proxy never parses it
    # nginx workers run as an unprivileged user when started by root: make the tree readable.
    for path in [root, *www.rglob("*"), www]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return www


def _nginx_common(tmp: Path, name: str, workers: int) -> str:
    return f"""
worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
"""


def _nginx_temp_paths(tmp: Path, name: str) -> str:
    return "\n".join(
        f"  {kind}_temp_path {tmp}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def nginx_upstream_conf(tmp: Path, www: Path, port: int, slow_port: int, workers: int) -> str:
    """Looker as fixed answers: static JSON, login/session via ``return``, slow path proxied.

    Every login (the team's, a passthrough caller's, a sudo) answers a token of its own
    (``$request_id``). ``HEAD /api/4.0/user`` answers ``Content-Length: 0``: wrk's parser does
    not know that a HEAD answer has no body and would wait for 579 bytes. A body upload
    (``POST /api/4.0/queries``) is answered only once its whole body has been read: ``return``
    alone would answer as soon as the head is in and discard the body afterwards (an early
    answer, which Looker does not give), so the location reads the body into memory (proxy
    module, request buffering) and asks a second server block for the fixed answer without it.
    """
    login = login_json("bench$request_id").replace("'", "\\'")
    sudo = login_json("benchsudo$request_id").replace("'", "\\'")
    session = SESSION_JSON.replace("'", "\\'")
    upload = UPLOAD_JSON.replace("'", "\\'")
    return f"""{_nginx_common(tmp, "upstream", workers)}
http {{
  access_log off;
{_nginx_temp_paths(tmp, "upstream")}
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  default_type application/json;
  client_max_body_size 64m;
  upstream slow {{ server 127.0.0.1:{slow_port}; keepalive 64; }}
  upstream ack {{ server unix:{tmp}/upstream-ack.sock; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen unix:{tmp}/upstream-ack.sock;
    location / {{ return 200 '{upload}'; }}
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    root {www};
    location = /api/4.0/login {{ return 200 '{login}'; }}
    location ~ ^/api/4\\.0/login/[0-9]+$ {{ return 200 '{sudo}'; }}
    location = /api/4.0/session {{ return 200 '{session}'; }}
    location = /api/4.0/logout {{ return 204; }}
    location = {USER_PATH} {{
      if ($request_method = HEAD) {{ return 200; }}
    }}
    location = {UPLOAD_PATH} {{
      client_body_buffer_size 2m;
      proxy_pass http://ack;
      proxy_http_version 1.1;
      proxy_pass_request_body off;
      proxy_set_header Connection "";
      proxy_set_header Content-Length "";
      proxy_set_header Transfer-Encoding "";
    }}
    location = {SLOW_PATH} {{
      proxy_pass http://slow;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location = {CSV_PATH} {{ default_type text/csv; }}
    location /api/ {{ }}
  }}
}}
"""


def nginx_proxy_conf(tmp: Path, port: int, upstream_port: int, workers: int) -> str:
    """nginx as a plain reverse proxy: upstream keep-alive, access log on (buffered).

    Request bodies are streamed (``proxy_request_buffering off``), as workspace-proxy streams
    them, rather than spooled to a temporary file; 64 MiB at most, as workspace-proxy's default.
    """
    return f"""{_nginx_common(tmp, "proxy", workers)}
http {{
  access_log {tmp}/nginx-proxy-access.log combined buffer=64k flush=1s;
{_nginx_temp_paths(tmp, "proxy")}
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream looker {{
    server 127.0.0.1:{upstream_port};
    keepalive 256;
    keepalive_requests 10000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    client_max_body_size 64m;
    location / {{
      proxy_pass http://looker;
      proxy_request_buffering off;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 60s;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""


def start_nginx(tmp: Path, name: str, conf: str, port: int) -> Proc:
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    proc = spawn(name, ["nginx", "-p", f"{tmp}/", "-c", str(path)], tmp / f"{name}.out", port)
    wait_until(proc, lambda: port_open(port), 15)
    return proc


def start_fixed(tmp: Path, delay_s: float, csv_bytes: int) -> Proc:
    """The asyncio fixed-answer upstream (slow path; the whole upstream when nginx is missing)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.fixed_upstream", "--port", str(port)]
    argv += ["--delay", str(delay_s), "--csv-bytes", str(csv_bytes)]
    proc = spawn("fixed-upstream", argv, tmp / "fixed-upstream.log", port)
    wait_until(proc, lambda: port_open(port), 15)
    return proc


def start_naive(tmp: Path, upstream: str, workers: int) -> Proc:
    port = free_port()
    log = tmp / "naive.log"
    argv = [sys.executable, "-m", "benchmarks.naive_proxy", "--port", str(port)]
    proc = spawn("naive", [*argv, "--upstream", upstream], log, port, copies=workers)

    def all_listening() -> bool:
        return log.read_text(errors="replace").count("listening") >= workers

    wait_until(proc, all_listening, 20)
    return proc


def start_emulator(tmp: Path) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.emulator", "--port", str(port)]
    proc = spawn("emulator", argv, tmp / "emulator.log", port)
    wait_until(proc, lambda: http_call(port, "GET", "/_emulator/stats")[0] == 200, 20)
    return proc


# --- workspace-proxy -------------------------------------------------------------------------


def wp_supports_workers(tmp: Path, env: Mapping[str, str] | None = None) -> bool:
    """True when ``workspace-proxy serve --help`` lists ``--workers``."""
    done = subprocess.run(
        [sys.executable, "-m", "workspace_proxy", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=tmp,
    )
    return "--workers" in done.stdout


def wp_config(looker_url: str, port: int, admin_port: int) -> dict[str, Any]:
    """A real config: one team pinned to dev, one caller, access log (info) and metrics on.

    ``max_connections`` and ``max_concurrency`` are raised from their defaults (1000 and 256 per
    process) so that the 2,000-request burst measures the proxy and not a configured cap. Two
    more teams serve the call-type scenario: ``bench-sudo`` (managed, ``allow_sudo: true``) and
    ``bench-passthrough`` (callers log in with their own Looker credentials). Sessions are
    pinned on first use, so the other scenarios never touch them.
    """
    return {
        "looker": {
            "base_url": looker_url,
            "api_versions": ["4.0"],
            "timeouts": {"connect_s": 5, "read_s": 60, "session_s": 10},
            "max_connections": 4096,
            "verify_tls": True,
        },
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "shutdown": {"drain_s": 0, "grace_s": 2},
        "log_level": "info",
        "token_signing_key": {"env": "WP_BENCH_SIGNING_KEY"},
        "teams": {
            "analytics": {
                "workspace": "dev",
                "looker_client_id": {"env": "WP_BENCH_LOOKER_ID"},
                "looker_client_secret": {"env": "WP_BENCH_LOOKER_SECRET"},
                "max_concurrency": 4096,
                "callers": [
                    {"client_id": CALLER_ID, "client_secret": {"env": "WP_BENCH_CALLER_SECRET"}}
                ],
            },
            "bench-sudo": {
                "workspace": "dev",
                "looker_client_id": {"env": "WP_BENCH_SUDO_LOOKER_ID"},
                "looker_client_secret": {"env": "WP_BENCH_SUDO_LOOKER_SECRET"},
                "max_concurrency": 4096,
                "allow_sudo": True,
                "callers": [
                    {
                        "client_id": SUDO_CALLER_ID,
                        "client_secret": {"env": "WP_BENCH_SUDO_CALLER_SECRET"},
                    }
                ],
            },
            "bench-passthrough": {
                "mode": "passthrough",
                "workspace": "dev",
                "looker_client_ids": [PASSTHROUGH_LOOKER_ID],
                "max_concurrency": 4096,
            },
        },
    }


def _access_token(status: int, raw: bytes) -> str | None:
    if status != 200:
        return None
    try:
        token = json.loads(raw).get("access_token")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def _login(port: int, client_id: str, client_secret: str) -> tuple[int, bytes]:
    return http_call(
        port,
        "POST",
        "/api/4.0/login",
        body=f"client_id={client_id}&client_secret={client_secret}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def caller_login(
    port: int, client_id: str = CALLER_ID, secret: str = ENV["WP_BENCH_CALLER_SECRET"]
) -> str | None:
    """A proxy caller's login: its proxy token, None when refused."""
    return _access_token(*_login(port, client_id, secret))


class LoginError(RuntimeError):
    """A login the call-type scenario needs was refused (the message says which and how)."""


def passthrough_login(port: int) -> str:
    """A passthrough caller's login through the proxy: its sealed proxy token (``wp2.``)."""
    status, raw = _login(port, PASSTHROUGH_LOOKER_ID, PASSTHROUGH_LOOKER_SECRET)
    token = _access_token(status, raw)
    if token is None:
        raise LoginError(f"passthrough login answered {status}: {raw[:200]!r}")
    return token


def sudo_login(port: int) -> str:
    """The sudo team's caller logs in, then ``POST /api/4.0/login/{id}``: the sudo token."""
    status, raw = _login(port, SUDO_CALLER_ID, ENV["WP_BENCH_SUDO_CALLER_SECRET"])
    caller = _access_token(status, raw)
    if caller is None:
        raise LoginError(f"the sudo team's caller login answered {status}: {raw[:200]!r}")
    status, raw = http_call(
        port,
        "POST",
        SUDO_PATH.format(user_id=SUDO_USER_ID),
        headers={"Authorization": f"token {caller}"},
    )
    token = _access_token(status, raw)
    if token is None:
        raise LoginError(f"sudo (POST /login/{SUDO_USER_ID}) answered {status}: {raw[:200]!r}")
    return token


ConfigFor = Callable[[str, int, int], dict[str, Any]]
"""A workspace-proxy config for (Looker URL, port, admin port), e.g. ``wp_config``."""


def check_config(tmp: Path, path: Path, env: Mapping[str, str]) -> str:
    """``workspace-proxy check-config`` on ``path``: its summary (stdout); raises with its
    output when the config is refused."""
    done = subprocess.run(
        [sys.executable, "-m", "workspace_proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
        cwd=tmp,
    )
    if done.returncode != 0:
        raise RuntimeError(f"check-config refused {path}:\n{done.stderr[-2000:]}")
    return done.stdout


def start_wp(
    tmp: Path,
    name: str,
    looker_url: str,
    workers: int | None,
    *,
    pythonpath: str | None = None,
    config: ConfigFor = wp_config,
    check: bool = False,
) -> Proc:
    """``python -m workspace_proxy serve`` with a generated config; ``extra['token']`` is set.

    ``check``: run ``check-config`` on the file first (its summary in ``extra['check']``)."""
    port, admin_port = free_port(), free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config(looker_url, port, admin_port), sort_keys=False))
    env = dict(ENV)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    checked = check_config(tmp, path, env) if check else None
    argv = [sys.executable, "-m", "workspace_proxy", "serve", "-c", str(path)]
    argv += ["--port", str(port), "--admin-port", str(admin_port)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    # cwd is the temp dir: `python -m` puts the cwd first on sys.path, which would shadow a
    # PYTHONPATH copy of the package with the checkout's own.
    proc = spawn(name, argv, tmp / f"{name}.log", port, env=env, cwd=tmp)
    token: list[str] = []

    def logged_in() -> bool:
        got = caller_login(port)
        if got:
            token.append(got)
        return bool(got)

    wait_until(proc, logged_in, 30)
    proc.extra["token"] = token[0]
    proc.extra["admin_port"] = admin_port
    if checked is not None:
        proc.extra["check"] = checked
    return proc

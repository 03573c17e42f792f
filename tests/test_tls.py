"""TLS: the proxy verifies Looker's certificate (custom CA bundle) and can serve HTTPS itself."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from harness import (
    ENV,
    Proxy,
    ProxyProcess,
    access_lines,
    assert_every_call_pinned,
    raw_config,
)
from pytest_aiohttp import AiohttpServer

from workspace_proxy.emulator import LookerEmulator
from workspace_proxy.errors import ConfigError
from workspace_proxy.validation import parse_config

pytestmark = pytest.mark.timeout(60)
MakeProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def tls_looker(ca: trustme.CA, aiohttp_server: AiohttpServer) -> LookerEmulator:
    """The emulator served over HTTPS with a certificate from the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    emu = LookerEmulator()
    emu.server = await aiohttp_server(emu.app, ssl=context)
    emu.base_url = f"https://127.0.0.1:{emu.server.port}"
    return emu


def _looker_section(url: str, **extra: Any) -> dict[str, Any]:
    section = raw_config(url)["looker"]
    section.update(extra)
    return dict(section)


async def test_upstream_tls_verified_with_a_custom_ca(
    tls_looker: LookerEmulator, make_proxy: MakeProxy, ca_file: str
) -> None:
    """With looker.ca_file set to the CA, calls go through over HTTPS and stay pinned."""
    proxy = await make_proxy(
        tls_looker, looker=_looker_section(tls_looker.base_url, ca_file=ca_file)
    )
    token = await proxy.login("analytics")
    with access_lines() as lines:
        for _ in range(2):  # a cold session (pinned first), then a warm one on a pooled TLS link
            assert (await proxy.get_json("/api/4.0/session", token))["workspace_id"] == "dev"
    assert [(x["status"], x["route"]) for x in lines] == [(200, "session"), (200, "session")]
    assert assert_every_call_pinned(tls_looker) == 2


async def test_upstream_tls_unknown_ca_fails_closed_with_a_clear_reason(
    tls_looker: LookerEmulator, make_proxy: MakeProxy
) -> None:
    """Without the CA, Looker's certificate does not verify: 503 naming TLS, nothing sent."""
    proxy = await make_proxy(tls_looker, looker=_looker_section(tls_looker.base_url))
    token = await proxy.login("analytics")
    resp = await proxy.call("GET", "/api/4.0/user", token)
    assert resp.status == 503
    assert "TLS certificate did not verify" in (await resp.json())["message"]
    assert tls_looker.audit == []


def test_bad_ca_file_and_mismatched_key_are_config_errors(ca: trustme.CA, tmp_path: Path) -> None:
    """A CA file that is not PEM and a key that does not match the certificate are reported."""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cert, other = ca.issue_cert("a.example"), ca.issue_cert("b.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    raw = raw_config("https://looker.example.com")
    raw["looker"]["ca_file"] = str(junk)
    raw["listen"]["tls"] = {
        "cert_file": str(tmp_path / "cert.pem"),
        "key_file": str(tmp_path / "key.pem"),
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env=ENV)
    problems = "\n".join(err.value.problems)
    assert "looker.ca_file: is not a PEM CA bundle" in problems
    assert "listen.tls: certificate and key do not load" in problems


async def test_proxy_serves_https(looker: LookerEmulator, ca: trustme.CA, tmp_path: Path) -> None:
    """listen.tls: the proxy answers over HTTPS with the configured certificate."""
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    raw = raw_config(looker.base_url)
    raw["listen"]["tls"] = {
        "cert_file": str(tmp_path / "server.pem"),
        "key_file": str(tmp_path / "server.pem"),
    }
    (tmp_path / "check.yaml").write_text(yaml.safe_dump(raw))
    proc = await ProxyProcess.start(raw, tmp_path)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    url = proc.url.replace("http://", "https://")
    try:
        async with aiohttp.ClientSession() as http:
            form = {"client_id": "finance-caller", "client_secret": "finance-caller-secret"}
            async with http.post(f"{url}/api/4.0/login", data=form, ssl=client_context) as resp:
                token = (await resp.json())["access_token"]
            headers = {"Authorization": f"token {token}"}
            async with http.get(
                f"{url}/api/4.0/session", headers=headers, ssl=client_context
            ) as resp:
                assert (await resp.json())["workspace_id"] == "production"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{url}/versions")  # system trust store: unknown CA
        assert await proc.stop() == 0
    finally:
        await proc.kill()

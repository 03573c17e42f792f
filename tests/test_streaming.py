"""Large results stream through the proxy process with flat memory; broken streams stay broken."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from harness import ProxyProcess, assert_every_call_pinned, raw_config

from workspace_proxy.emulator import LookerEmulator

GIB = 1024**3
MIB = 1024**2


@pytest.fixture
async def proxy_process(looker: LookerEmulator, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    proc = await ProxyProcess.start(raw_config(looker.base_url), tmp_path)
    yield proc
    await proc.kill()


async def _login(http: aiohttp.ClientSession, url: str, team: str) -> str:
    form = {"client_id": f"{team}-caller", "client_secret": f"{team}-caller-secret"}
    async with http.post(f"{url}/api/4.0/login", data=form) as resp:
        assert resp.status == 200
        return str((await resp.json())["access_token"])


async def _query(http: aiohttp.ClientSession, url: str, token: str) -> int:
    body = {"model": "sales", "view": "orders", "fields": ["orders.id"]}
    headers = {"Authorization": f"token {token}"}
    async with http.post(f"{url}/api/4.0/queries", json=body, headers=headers) as resp:
        assert resp.status == 200
        return int((await resp.json())["id"])


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_result_over_1_gib_streams_with_flat_proxy_memory(
    looker: LookerEmulator, proxy_process: ProxyProcess
) -> None:
    """1.1 GiB of CSV passes through intact while the proxy's RSS grows by less than 32 MiB."""
    size = GIB + 100 * MIB
    async with aiohttp.ClientSession() as http:
        token = await _login(http, proxy_process.url, "analytics")
        qid = await _query(http, proxy_process.url, token)
        url = f"{proxy_process.url}/api/4.0/queries/{qid}/run/csv"
        headers = {"Authorization": f"token {token}"}
        async with http.get(url, params={"emulator_bytes": str(8 * MIB)}, headers=headers) as r:
            assert len(await r.read()) == 8 * MIB  # warm-up: buffers and pools exist
        baseline = proxy_process.rss_bytes()
        peak, received, next_sample = baseline, 0, 0
        async with http.get(url, params={"emulator_bytes": str(size)}, headers=headers) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(1 * MIB):
                received += len(chunk)
                if received >= next_sample:
                    peak = max(peak, proxy_process.rss_bytes())
                    next_sample += 32 * MIB
    assert received == size
    growth = peak - baseline
    print(f"proxy RSS baseline {baseline / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB")
    assert growth < 32 * MIB, f"proxy RSS grew by {growth / MIB:.1f} MiB"
    assert_every_call_pinned(looker)


async def _drain(resp: aiohttp.ClientResponse) -> int:
    received = 0
    async for chunk in resp.content.iter_chunked(MIB):
        received += len(chunk)
    return received


@pytest.mark.timeout(60)
async def test_upstream_reset_mid_response_breaks_the_callers_stream(
    looker: LookerEmulator, proxy_process: ProxyProcess
) -> None:
    """Looker cuts a result mid-stream: the caller sees a broken stream, never a short success."""
    async with aiohttp.ClientSession() as http:
        token = await _login(http, proxy_process.url, "analytics")
        qid = await _query(http, proxy_process.url, token)
        looker.faults.reset_after_bytes = 3 * MIB
        url = f"{proxy_process.url}/api/4.0/queries/{qid}/run/csv"
        resp = await http.get(
            url,
            params={"emulator_bytes": str(64 * MIB)},
            headers={"Authorization": f"token {token}"},
        )
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await _drain(resp)
        resp.release()
        # the proxy is fine afterwards
        async with http.get(
            f"{proxy_process.url}/api/4.0/user", headers={"Authorization": f"token {token}"}
        ) as resp:
            assert resp.status == 200
    assert any('"upstream_stream_broken"' in line for line in proxy_process.lines)

"""Micro-benchmark: what one logout costs with 0 and with 40,000 unexpired revoked tokens.

    python -m benchmarks.revocations            # part of ``make bench`` and ``make bench-quick``

A logout adds the token's id to the revocation list (``CallerAuth.revoke``). Issue 17 (M2):
past 10,000 entries the old list rebuilt itself on every logout, so one logout went from
0.13 ms to 2.1 ms. The cost must not grow with the number of revocations: the script prints
both medians, their ratio, and the memory one revoked token holds, and exits non-zero when
the ratio is above ``--max-ratio`` (default 3).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence

from workspace_proxy.auth import CallerAuth, Principal
from workspace_proxy.config import Config
from workspace_proxy.validation import parse_config

_KEY = "benchmark-signing-key-0123456789abcdef-0123"
_TTL = 3600


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _config() -> Config:
    raw = {
        "looker": {"base_url": "https://example.cloud.looker.com"},
        "token_signing_key": {"env": "KEY"},
        "caller_token_ttl_s": _TTL,
        "teams": {
            "analytics": {
                "workspace": "dev",
                "looker_client_id": "looker-id",
                "looker_client_secret": {"env": "KEY"},
                "callers": [{"client_id": "caller", "client_secret": {"env": "KEY"}}],
            }
        },
    }
    return parse_config(raw, env={"KEY": _KEY})


async def _revoke(auth: CallerAuth, principal: Principal) -> None:
    done = auth.revoke(principal)
    if inspect.isawaitable(done):
        await done


def _principal(auth: CallerAuth, n: int, clock: _Clock) -> Principal:
    return Principal("analytics", "caller", f"id-{n:08d}", clock() + _TTL)


async def _one_logout_s(prefill: int, samples: int) -> tuple[float, float]:
    """(median seconds of one logout, bytes per revoked token) after ``prefill`` logouts."""
    clock = _Clock()
    auth = CallerAuth(_config(), clock=clock)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(prefill):
        await _revoke(auth, _principal(auth, n, clock))
    per_token = (tracemalloc.get_traced_memory()[0] - before) / prefill if prefill else 0.0
    tracemalloc.stop()
    times = []
    for n in range(prefill, prefill + samples):
        principal = _principal(auth, n, clock)
        started = time.perf_counter()
        await _revoke(auth, principal)
        times.append(time.perf_counter() - started)
    return statistics.median(times), per_token


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.revocations", description=__doc__)
    p.add_argument("--revoked", type=int, default=40_000, help="unexpired revocations (40000)")
    p.add_argument("--samples", type=int, default=500, help="logouts timed per case (500)")
    p.add_argument("--max-ratio", type=float, default=3.0, help="fail above this ratio (3)")
    args = p.parse_args(argv)
    empty, _ = asyncio.run(_one_logout_s(0, args.samples))
    full, per_token = asyncio.run(_one_logout_s(args.revoked, args.samples))
    ratio = full / empty
    print(
        f"revocations: one logout {empty * 1e6:.1f} us with 0 revoked tokens, "
        f"{full * 1e6:.1f} us with {args.revoked:,} (ratio {ratio:.2f}); "
        f"about {per_token:.0f} bytes per revoked token"
    )
    return 0 if ratio <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())

"""Sealed passthrough tokens: a caller's Looker session inside a proxy token it cannot read.

A passthrough caller that logs in through the proxy (or sudos) gets ``wp2.<base64url>``: a
random 96-bit nonce followed by the AES-256-GCM encryption of its claims (team, the Looker
token, expiry, a random token id, the pinned workspace and branch, the sudo user). The key is
derived with HKDF-SHA256 from ``token_signing_key``, so every replica holding the key opens
every sealed token and stays stateless; the token version and purpose are bound in as
associated data. The caller never holds the Looker token, so it cannot move its session behind
the proxy's back. Anything that does not open, or has expired, is Unauthenticated (401).
Knows nothing of aiohttp.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from workspace_proxy.config import Secret
from workspace_proxy.errors import Unauthenticated

PREFIX: Final = "wp2"
_AAD: Final = b"workspace-proxy/wp2/sealed-passthrough-session"
"""Version and purpose, authenticated with every token: a ciphertext made for anything else
(another version, another use of the same key) does not open."""
_HKDF_INFO: Final = b"workspace-proxy wp2 sealed passthrough session key"
_HKDF_SALT: Final = b"workspace-proxy/sealed/v2"
_NONCE: Final = 12
_TAG: Final = 16
_MAX_TOKEN: Final = 4096


def is_sealed(token: str) -> bool:
    return token.startswith(PREFIX + ".")


@dataclass(frozen=True, slots=True)
class SealedSession:
    """What a sealed token carries."""

    team: str
    looker_token: Secret
    expires_at: int
    """Wall-clock expiry (Unix seconds): Looker's ``expires_in`` from the login, capped."""
    token_id: str
    """Random; a logout revokes it."""
    workspace: str
    branch: str | None
    """``project/name`` of the team's pinned dev branch when sealed, if any."""
    sudo: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Sealer:
    """Seals and opens ``wp2.`` tokens with a key derived from the signing key."""

    def __init__(self, signing_key: Secret, *, clock: Callable[[], float] = time.time) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO).derive(
            signing_key.reveal().encode()
        )
        self._aead = AESGCM(key)
        self._clock = clock

    def seal(self, session: SealedSession) -> Secret:
        claims: dict[str, object] = {
            "t": session.team,
            "k": session.looker_token.reveal(),
            "e": session.expires_at,
            "j": session.token_id,
            "w": session.workspace,
            "b": session.branch,
            "s": session.sudo,
        }
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, json.dumps(claims).encode(), _AAD)
        return Secret(f"{PREFIX}.{_b64(nonce + sealed)}")

    def open(self, token: str) -> SealedSession:
        """The session inside a sealed token, or Unauthenticated (tampered, foreign, expired)."""
        prefix, _, body = token.partition(".")
        if prefix != PREFIX or not body or len(body) > _MAX_TOKEN:
            raise Unauthenticated()
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if len(raw) < _NONCE + _TAG or _b64(raw) != body:
                raise Unauthenticated()
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD)
            claims = json.loads(plain)
        except (InvalidTag, ValueError, binascii.Error):
            raise Unauthenticated() from None
        session = _session(claims)
        if session.expires_at <= self._clock():
            raise Unauthenticated()
        return session


def _session(claims: object) -> SealedSession:
    """Claims of a token we sealed; their types are checked all the same."""
    if not isinstance(claims, dict):
        raise Unauthenticated()
    team, token, exp, jti = claims.get("t"), claims.get("k"), claims.get("e"), claims.get("j")
    workspace, branch, sudo = claims.get("w"), claims.get("b"), claims.get("s")
    if not (
        isinstance(team, str)
        and isinstance(token, str)
        and token
        and type(exp) is int
        and isinstance(jti, str)
        and isinstance(workspace, str)
        and (branch is None or isinstance(branch, str))
        and (sudo is None or isinstance(sudo, str))
    ):
        raise Unauthenticated()
    return SealedSession(team, Secret(token), exp, jti, workspace, branch, sudo)

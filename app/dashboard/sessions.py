"""Dashboard sessions: the cookie token, its hash, and the sealed tenant key.

The browser holds only a random token (HttpOnly, SameSite=Strict cookie).
The database holds SHA-256(token) and, for a tenant-key login, the key's
secret encrypted with AES-256-GCM under a key derived from the token: the
table alone cannot be replayed as a cookie nor reveal the secret, and the
cookie alone is useless without the table. An admin login stores no secret
at all: the server already holds the admin key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any, Final, Literal, NamedTuple

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from litestar import Request

from app.api.admin.auth import AdminPrincipal
from app.api.request_parsing import database

COOKIE_NAME: Final = "cycles_dashboard"
LOGIN_COOKIE_NAME: Final = "cycles_dashboard_login"
COOKIE_PATH: Final = "/dashboard"
SESSION_TTL_SECONDS: Final = 8 * 3600
_TOKEN_BYTES: Final = 32
_SEAL_DOMAIN: Final = b"cycles-dashboard-session-seal\x00"
_NONCE_BYTES: Final = 12

LOOKUP_SQL: Final = (
    "SELECT coalesce(cycles.dashboard_session(p_session_hash => %(hash)s), 'null'::jsonb)::text")


class Session(NamedTuple):
    """A live dashboard login."""

    principal: Literal["admin", "tenant"]
    tenant_id: str | None
    key_id: str | None
    csrf_token: str
    api_key: str | None  # the unsealed tenant key secret; None for the admin

    def admin_principal(self) -> AdminPrincipal:
        if self.principal == "admin":
            return AdminPrincipal("admin")
        return AdminPrincipal("tenant", self.api_key)

    @property
    def is_admin(self) -> bool:
        return self.principal == "admin"


class _Row(msgspec.Struct):
    principal: Literal["admin", "tenant"]
    csrf_token: str
    tenant_id: str | None = None
    key_id: str | None = None
    sealed_key: str | None = None


_row_decoder: Final = msgspec.json.Decoder(_Row | None)


def new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _cipher(token: str) -> AESGCM:
    # The token is 256 random bits: a hash of it is a full-strength key.
    return AESGCM(hashlib.sha256(_SEAL_DOMAIN + token.encode()).digest())


def seal(token: str, secret: str) -> bytes:
    """nonce || ciphertext and tag."""
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + _cipher(token).encrypt(nonce, secret.encode(), None)


def unseal(token: str, sealed: bytes) -> str:
    """The secret; ValueError when it was not sealed with this token."""
    try:
        plain = _cipher(token).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], None)
    except InvalidTag:
        raise ValueError("not sealed with this token") from None
    return plain.decode()


def tokens_equal(left: str | None, right: str | None) -> bool:
    return left is not None and right is not None and hmac.compare_digest(left.encode(), right.encode())


def cookie_token(request: Request[Any, Any, Any]) -> str | None:
    token = request.cookies.get(COOKIE_NAME)
    # Tokens are 43 URL-safe characters; anything else cannot be one of ours.
    if not token or len(token) > 128 or not token.isascii():
        return None
    return token


async def load_session(request: Request[Any, Any, Any]) -> Session | None:
    """The session the request's cookie refers to, or None."""
    token = cookie_token(request)
    if token is None:
        return None
    raw = await database(request).fetch_json(LOOKUP_SQL, {"hash": token_hash(token)})
    row = _row_decoder.decode(raw)
    if row is None:
        return None
    api_key = None
    if row.principal == "tenant":
        if row.sealed_key is None:
            return None
        try:
            api_key = unseal(token, base64.b64decode(row.sealed_key))
        except (ValueError, UnicodeDecodeError):
            return None
    return Session(row.principal, row.tenant_id, row.key_id, row.csrf_token, api_key)

"""X-Cycles-Signature: HMAC-SHA256 of the raw body bytes, keyed with the
subscription's signing secret as UTF-8, as lowercase hex."""

from __future__ import annotations

import hashlib
import hmac


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does: recompute over the bytes received, compare in
    constant time."""
    return hmac.compare_digest(signature(body, secret), header)

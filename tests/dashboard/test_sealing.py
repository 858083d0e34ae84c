"""The tenant key a session keeps is sealed under its cookie token."""

from __future__ import annotations

import pytest

from app.dashboard.sessions import new_token, seal, unseal


def test_a_sealed_key_opens_with_its_token_only() -> None:
    token, other = new_token(), new_token()
    secret = "cyc_live_" + "k" * 43
    sealed = seal(token, secret)
    assert secret.encode() not in sealed
    assert unseal(token, sealed) == secret
    with pytest.raises(ValueError):
        unseal(other, sealed)
    with pytest.raises(ValueError):
        unseal(token, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_sealing_twice_gives_different_bytes() -> None:
    token = new_token()
    assert seal(token, "cyc_live_x") != seal(token, "cyc_live_x")

"""One definition of the wire format: the server decodes requests with the
SDK's Structs, which are frozen, keyword-only and refuse unknown fields."""

from __future__ import annotations

import inspect

import msgspec
import pytest
from cycles_sdk import wire

import app.wire

REQUESTS = [wire.ReservationCreateRequest, wire.DecisionRequest, wire.CommitRequest, wire.ReleaseRequest,
            wire.ReservationExtendRequest, wire.EventCreateRequest, wire.Subject, wire.Action, wire.Amount,
            wire.StandardMetrics]


def test_the_server_uses_the_sdk_structs() -> None:
    for struct in REQUESTS:
        assert getattr(app.wire, struct.__name__) is struct


@pytest.mark.parametrize("struct", REQUESTS, ids=lambda s: s.__name__)
def test_request_structs_are_frozen_keyword_only_and_strict(struct: type[msgspec.Struct]) -> None:
    config = struct.__struct_config__
    assert config.frozen and config.forbid_unknown_fields
    parameters = inspect.signature(struct).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)


def test_frozen_requests_cannot_be_changed_after_validation() -> None:
    amount = wire.Amount(unit="TOKENS", amount=5)
    with pytest.raises(AttributeError):
        amount.amount = -1  # type: ignore[misc]


def test_unknown_fields_and_bounds_fail_in_the_sdk_as_on_the_server() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"unit": "TOKENS", "amount": 1, "extra": 1}, wire.Amount)
    with pytest.raises(msgspec.ValidationError, match="amount"):
        msgspec.convert({"unit": "TOKENS", "amount": 2**63}, wire.Amount)
    with pytest.raises(msgspec.ValidationError, match="at least one of"):
        msgspec.convert({}, wire.Subject)

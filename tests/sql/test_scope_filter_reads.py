"""A key with a scope_filter reads only what its filter allows: balances,
the reservation list and a single reservation outside it are hidden or
refused, as acting on them is."""

from __future__ import annotations

import psycopg

from tests.sql.runtime_fixtures import call, create_key, raises, reserve_request, standard_fixture


def _filtered_key(db: psycopg.Connection, scope_filter: list[str]) -> str:
    secret = create_key(db, "acme")
    db.execute("UPDATE cycles.api_keys SET scope_filter = %s WHERE key_hash = cycles._hash_secret(%s)",
               (scope_filter, secret))
    return secret


def test_balances_show_only_scopes_the_filter_allows(db: psycopg.Connection) -> None:
    fixture = standard_fixture(db)
    everything = call(db, "balances", fixture.ka, {"tenant": "acme"})
    assert {b["scope"] for b in everything["balances"]} == {
        "tenant:acme", "tenant:acme/workspace:w1", "tenant:acme/workspace:od"}
    filtered = call(db, "balances", _filtered_key(db, ["workspace:w1"]), {"tenant": "acme"})
    assert [b["scope"] for b in filtered["balances"]] == ["tenant:acme/workspace:w1"]


def test_reservation_list_and_get_respect_the_filter(db: psycopg.Connection) -> None:
    fixture = standard_fixture(db)
    in_w1 = call(db, "reserve", fixture.ka, reserve_request(10))["reservation_id"]
    in_od = call(db, "reserve", fixture.ka, reserve_request(
        10, subject={"tenant": "acme", "workspace": "od"}))["reservation_id"]
    w1_only = _filtered_key(db, ["workspace:w1"])

    listed = call(db, "list_reservations", w1_only, {})
    assert [r["reservation_id"] for r in listed["reservations"]] == [in_w1]
    assert call(db, "get_reservation", w1_only, in_w1)["reservation_id"] == in_w1
    with raises("FORBIDDEN"):
        call(db, "get_reservation", w1_only, in_od)
    # An unfiltered key of the same tenant still sees both.
    assert {r["reservation_id"] for r in call(db, "list_reservations", fixture.ka, {})["reservations"]} == {
        in_w1, in_od}

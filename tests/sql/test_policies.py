"""Policies in SQL: the scope-pattern grammar, create/get/list/update/disable,
and what the matching policy does to reserve, dry_run, decide, extend and
events (caps, overage policy, TTL governance); scope_filter enforcement on
the runtime functions."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.admin_calls import ISO, fails
from tests.sql.runtime_fixtures import (
    Fixture,
    budget,
    call,
    create_key,
    raises,
    reservation,
    reserve_request,
    set_tenant_status,
    standard_fixture,
)

CAPS = {"max_tokens": 4096, "max_steps_remaining": 10, "tool_allowlist": ["search"], "tool_denylist": ["shell"],
        "cooldown_ms": 250}


@pytest.fixture
def fx(db: psycopg.Connection) -> Fixture:
    return standard_fixture(db)


def create_policy(db: psycopg.Connection, tenant: str, name: str, pattern: str, **options: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"t": tenant, "n": name, "p": pattern}
    named = ""
    for option, value in options.items():
        params[option] = Jsonb(value) if isinstance(value, dict) else value
        named += f", p_{option} => %({option})s"
    row = db.execute(f"SELECT cycles.create_policy(%(t)s, %(n)s, %(p)s{named})", params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def update_policy(db: psycopg.Connection, policy_id: str, patch: dict[str, Any],
                  ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    row = db.execute("SELECT cycles.update_policy(%s, %s, %s)", (policy_id, Jsonb(patch), Jsonb(ctx or {}))).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def matches(db: psycopg.Connection, pattern: str, scope: str) -> bool:
    row = db.execute("SELECT %s ~ cycles._scope_pattern_regex(%s)", (scope, pattern)).fetchone()
    assert row is not None
    return bool(row[0])


# The grammar --------------------------------------------------------------------

@pytest.mark.parametrize(("pattern", "scope", "expected"), [
    ("tenant:acme", "tenant:acme", True),
    ("tenant:acme", "tenant:acme/workspace:w1", False),
    ("tenant:acme/*", "tenant:acme", False),
    ("tenant:acme/*", "tenant:acme/workspace:w1", True),
    ("tenant:acme/*", "tenant:acme/workspace:w1/agent:a/toolset:t", True),
    ("tenant:acme/*", "tenant:acmex/workspace:w1", False),
    ("TENANT:Acme/Workspace:W1", "tenant:acme/workspace:w1", True),
    ("tenant:acme/workspace:w1/*", "tenant:acme/workspace:w1/agent:a", True),
    ("tenant:acme/workspace:w1/*", "tenant:acme/workspace:w2/agent:a", False),
    ("agent:*", "tenant:acme/agent:a", True),
    ("agent:*", "tenant:acme/workspace:w/agent:a", True),
    ("agent:*", "tenant:acme/agent:a/toolset:t", False),
    ("agent:*", "tenant:acme", False),
    ("*/agent:summarizer", "tenant:x/workspace:w/agent:summarizer", True),
    ("*/agent:summarizer", "tenant:x/agent:summarizer2", False),
    ("agent:summarizer", "tenant:x/agent:summarizer", True),
    ("workspace:w1/*", "tenant:acme/workspace:w1/agent:a", True),
    ("workspace:w1/*", "tenant:acme/workspace:w1", False),
    ("tenant:acme/*/toolset:t", "tenant:acme/agent:a/toolset:t", True),
    ("tenant:acme/*/toolset:t", "tenant:acme/toolset:t", False),
    ("agent:a.b", "tenant:acme/agent:aXb", False),
    ("agent:a.b", "tenant:acme/agent:a.b", True),
    ("*", "tenant:acme/app:x", True),
])
def test_scope_pattern_matching(db: psycopg.Connection, pattern: str, scope: str, expected: bool) -> None:
    assert matches(db, pattern, scope) is expected


@pytest.mark.parametrize("pattern", [
    "", "acme", "tenant:", "galaxy:x", "agent:*/workspace:w", "workspace:w/tenant:acme", "*/tenant:acme",
    "tenant:acme//agent:a", "agent:a b", "tenant:acme/agent:**", "x" * 1025,
])
def test_malformed_patterns_are_refused(db: psycopg.Connection, pattern: str) -> None:
    fails(db, "INVALID_REQUEST", "SELECT cycles._scope_pattern_regex(%(p)s)", p=pattern)


# Administration -----------------------------------------------------------------

def test_create_returns_the_policy_and_emits_policy_created(db: psycopg.Connection, fx: Fixture) -> None:
    policy = create_policy(db, "acme", "eng caps", "Tenant:Acme/*", priority=5, caps={**CAPS, "cooldown_ms": None},
                           commit_overage_policy="REJECT",
                           reservation_ttl_override={"default_ttl_ms": 2000, "max_ttl_ms": 9000},
                           rate_limits={"max_reservations_per_minute": 60}, description="eng")
    assert policy["policy_id"].startswith("pol_")
    assert set(policy) == {"policy_id", "name", "description", "scope_pattern", "priority", "caps",
                           "commit_overage_policy", "reservation_ttl_override", "rate_limits", "status",
                           "created_at", "updated_at"}
    assert policy["scope_pattern"] == "tenant:acme/*"
    assert policy["caps"] == {k: v for k, v in CAPS.items() if k != "cooldown_ms"}
    assert policy["status"] == "ACTIVE" and ISO.match(policy["created_at"])
    event = db.execute("SELECT tenant_id, category, source, data, actor FROM cycles.events"
                       " WHERE event_type = 'policy.created'").fetchall()
    assert event == [("acme", "policy", "cycles-admin",
                      {"policy_id": policy["policy_id"], "name": "eng caps", "scope_pattern": "tenant:acme/*",
                       "changed_fields": []}, {"type": "admin"})]
    assert db.execute("SELECT operation, resource_id, status FROM cycles.audit_logs"
                      " WHERE operation = 'createPolicy'").fetchall() == [("createPolicy", policy["policy_id"], 201)]


@pytest.mark.parametrize(("options", "fragment"), [
    ({"caps": {"max_tokens": -1}}, "caps.max_tokens"),
    ({"caps": {"max_tokens": 1.5}}, "caps.max_tokens"),
    ({"caps": {"tool_allowlist": "search"}}, "caps.tool_allowlist"),
    ({"caps": {"tool_denylist": ["x" * 257]}}, "caps.tool_denylist"),
    ({"caps": {"max_tokenz": 1}}, "max_tokenz"),
    ({"reservation_ttl_override": {"default_ttl_ms": 999}}, "default_ttl_ms"),
    ({"reservation_ttl_override": {"max_extensions": -1}}, "max_extensions"),
    ({"rate_limits": {"max_commits_per_minute": 0}}, "max_commits_per_minute"),
    ({"commit_overage_policy": "SOMETIMES"}, "overage policy"),
    ({"priority": -1}, "priority"),
])
def test_create_validation(db: psycopg.Connection, fx: Fixture, options: dict[str, Any], fragment: str) -> None:
    params: dict[str, Any] = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in options.items()}
    named = "".join(f", p_{k} => %({k})s" for k in options)
    message = fails(db, "INVALID_REQUEST", f"SELECT cycles.create_policy('acme', 'p', 'tenant:acme'{named})",
                    **params)
    assert fragment in message
    assert db.execute("SELECT count(*) FROM cycles.policies").fetchone() == (0,)


def test_create_conflicts_and_owners(db: psycopg.Connection, fx: Fixture) -> None:
    create_policy(db, "acme", "p", "tenant:acme")
    fails(db, "DUPLICATE_RESOURCE", "SELECT cycles.create_policy('acme', 'p', 'agent:*')")
    create_policy(db, "beta", "p", "agent:*")  # names are per tenant
    fails(db, "INVALID_REQUEST", "SELECT cycles.create_policy('acme', 'q', 'tenant:beta/*')")
    fails(db, "TENANT_NOT_FOUND", "SELECT cycles.create_policy('nobody', 'q', 'agent:*')")
    fails(db, "INVALID_REQUEST", "SELECT cycles.create_policy(NULL, 'q', 'agent:*')")
    fails(db, "INVALID_REQUEST", "SELECT cycles.create_policy('acme', 'q', 'agent:*',"
          " p_effective_from => now(), p_effective_until => now() - interval '1 hour')")
    set_tenant_status(db, "gamma", "CLOSED")
    fails(db, "TENANT_CLOSED", "SELECT cycles.create_policy('gamma', 'q', 'agent:*')")


def test_update_records_changed_fields_and_clears_nulls(db: psycopg.Connection, fx: Fixture) -> None:
    policy = create_policy(db, "acme", "p", "tenant:acme/*", caps={"max_tokens": 1})
    updated = update_policy(db, policy["policy_id"], {"caps": None, "priority": 7, "name": "p2",
                                                      "effective_until": "2999-01-01T00:00:00Z"})
    assert "caps" not in updated and updated["priority"] == 7 and updated["name"] == "p2"
    assert updated["effective_until"] == "2999-01-01T00:00:00.000Z"
    data = db.execute("SELECT data FROM cycles.events WHERE event_type = 'policy.updated'").fetchall()
    assert data == [({"policy_id": policy["policy_id"], "name": "p2", "scope_pattern": "tenant:acme/*",
                      "changed_fields": ["caps", "effective_until", "name", "priority"]},)]
    # A patch that changes nothing emits nothing.
    update_policy(db, policy["policy_id"], {"priority": 7})
    assert db.execute("SELECT count(*) FROM cycles.events WHERE event_type = 'policy.updated'").fetchone() == (1,)
    disabled = call(db, "disable_policy", policy["policy_id"])
    assert disabled["status"] == "DISABLED"


@pytest.mark.parametrize("patch", [
    {"scope_pattern": "agent:*"}, {"name": None}, {"name": ""}, {"priority": None}, {"priority": -2},
    {"status": "DELETED"}, {"effective_from": "yesterday"}, {"caps": {"max_steps_remaining": "3"}},
])
def test_update_validation_changes_nothing(db: psycopg.Connection, fx: Fixture, patch: dict[str, Any]) -> None:
    policy = create_policy(db, "acme", "p", "tenant:acme")
    fails(db, "INVALID_REQUEST", "SELECT cycles.update_policy(%(id)s, %(patch)s)",
          id=policy["policy_id"], patch=Jsonb(patch))
    assert call(db, "get_policy", policy["policy_id"]) == policy


def test_update_guards(db: psycopg.Connection, fx: Fixture) -> None:
    first = create_policy(db, "acme", "p", "tenant:acme")
    create_policy(db, "acme", "q", "tenant:acme")
    fails(db, "DUPLICATE_RESOURCE", "SELECT cycles.update_policy(%(id)s, '{\"name\": \"q\"}')", id=first["policy_id"])
    fails(db, "NOT_FOUND", "SELECT cycles.update_policy('pol_nope', '{}')")
    fails(db, "NOT_FOUND", "SELECT cycles.get_policy('pol_nope')")
    set_tenant_status(db, "acme", "CLOSED")
    fails(db, "TENANT_CLOSED", "SELECT cycles.update_policy(%(id)s, '{\"priority\": 1}')", id=first["policy_id"])
    assert call(db, "get_policy", first["policy_id"])["priority"] == 0  # reads still work


def test_list_pages_and_filters(db: psycopg.Connection, fx: Fixture) -> None:
    ids = [create_policy(db, "acme", f"p{i}", "agent:*" if i % 2 else "tenant:acme")["policy_id"] for i in range(5)]
    create_policy(db, "beta", "other", "agent:*")
    seen: list[str] = []
    cursor = None
    while True:
        page = db.execute("SELECT cycles.list_policies('acme', p_limit => 2, p_cursor => %s)", (cursor,)).fetchone()
        assert page is not None
        seen += [p["policy_id"] for p in page[0]["policies"]]
        if not page[0]["has_more"]:
            assert "next_cursor" not in page[0]
            break
        cursor = page[0]["next_cursor"]
    assert seen == list(reversed(ids))
    by_pattern = db.execute("SELECT cycles.list_policies('acme', 'AGENT:*')").fetchone()
    assert by_pattern is not None and [p["policy_id"] for p in by_pattern[0]["policies"]] == [ids[3], ids[1]]
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_policies(p_status => 'GONE')")
    fails(db, "INVALID_REQUEST", "SELECT cycles.list_policies(p_cursor => 'pol_nope')")
    everything = db.execute("SELECT cycles.list_policies()").fetchone()
    assert everything is not None and len(everything[0]["policies"]) == 6


def test_tenant_keys_manage_only_their_own_policies(db: psycopg.Connection, fx: Fixture) -> None:
    writer = create_key(db, "acme", ["policies:read", "policies:write"])
    admin_writer = create_key(db, "acme", ["admin:write"])
    reader = create_key(db, "acme", ["admin:read"])
    beta = create_policy(db, "beta", "b", "agent:*")
    own = db.execute("SELECT cycles.create_policy(NULL, 'mine', 'tenant:acme/*', p_ctx => %s)",
                     (Jsonb({"api_key": writer}),)).fetchone()
    assert own is not None and own[0]["name"] == "mine"
    db.execute("SELECT cycles.create_policy(NULL, 'mine2', 'agent:*', p_ctx => %s)", (Jsonb({"api_key": admin_writer}),))
    fails(db, "INSUFFICIENT_PERMISSIONS", "SELECT cycles.create_policy(NULL, 'x', 'agent:*', p_ctx => %(c)s)",
          c=Jsonb({"api_key": reader}))
    fails(db, "FORBIDDEN", "SELECT cycles.create_policy('beta', 'x', 'agent:*', p_ctx => %(c)s)",
          c=Jsonb({"api_key": writer}))
    fails(db, "NOT_FOUND", "SELECT cycles.get_policy(%(id)s, %(c)s)", id=beta["policy_id"], c=Jsonb({"api_key": reader}))
    fails(db, "NOT_FOUND", "SELECT cycles.update_policy(%(id)s, '{\"priority\": 3}', %(c)s)",
          id=beta["policy_id"], c=Jsonb({"api_key": writer}))
    listed = db.execute("SELECT cycles.list_policies(p_ctx => %s)", (Jsonb({"api_key": reader}),)).fetchone()
    assert listed is not None and {p["name"] for p in listed[0]["policies"]} == {"mine", "mine2"}
    fails(db, "UNAUTHORIZED", "SELECT cycles.list_policies(p_ctx => %(c)s)", c=Jsonb({"api_key": "cyc_live_nope"}))
    # Actor of the event is the key.
    actor = db.execute("SELECT actor ->> 'type' FROM cycles.events WHERE data ->> 'name' = 'mine'").fetchone()
    assert actor == ("api_key",)


def test_scope_filtered_key_writes_policies_inside_its_filter_only(db: psycopg.Connection, fx: Fixture) -> None:
    key = create_key(db, "acme", ["policies:write", "policies:read"])
    db.execute("UPDATE cycles.api_keys SET scope_filter = '{workspace:w1}' WHERE key_hash = cycles._hash_secret(%s)",
               (key,))
    ctx = Jsonb({"api_key": key})
    db.execute("SELECT cycles.create_policy(NULL, 'ok', 'tenant:acme/workspace:w1/*', p_ctx => %s)", (ctx,))
    for pattern in ("tenant:acme/*", "agent:*", "tenant:acme/workspace:w2"):
        fails(db, "FORBIDDEN", "SELECT cycles.create_policy(NULL, 'no', %(p)s, p_ctx => %(c)s)", p=pattern, c=ctx)


# Effects on the runtime ----------------------------------------------------------

def test_caps_make_reserve_dry_run_and_decide_allow_with_caps(db: psycopg.Connection, fx: Fixture) -> None:
    create_policy(db, "acme", "caps", "tenant:acme/*", caps=CAPS)
    live = call(db, "reserve", fx.ka, reserve_request(10))
    assert live["decision"] == "ALLOW_WITH_CAPS" and live["caps"] == CAPS
    assert reservation(db, live["reservation_id"])["status"] == "ACTIVE"
    dry = call(db, "reserve", fx.ka, reserve_request(10, dry_run=True))
    assert dry["decision"] == "ALLOW_WITH_CAPS" and dry["caps"] == CAPS and "reservation_id" not in dry
    decided = call(db, "decide", fx.ka, reserve_request(10))
    assert decided == {"decision": "ALLOW_WITH_CAPS", "caps": CAPS,
                       "affected_scopes": ["tenant:acme", "tenant:acme/workspace:w1"]}
    # A denial never carries caps.
    denied = call(db, "decide", fx.ka, reserve_request(10**9))
    assert denied["decision"] == "DENY" and "caps" not in denied
    # The tenant scope itself is not below tenant:acme: plain ALLOW.
    top = call(db, "reserve", fx.ka, reserve_request(10, subject={"tenant": "acme"}))
    assert top["decision"] == "ALLOW" and "caps" not in top
    # Another tenant's reservations never see acme's policies.
    assert "caps" not in call(db, "reserve", fx.kb, reserve_request(10, subject={"tenant": "beta"}))


def test_no_policy_or_empty_caps_is_plain_allow(db: psycopg.Connection, fx: Fixture) -> None:
    assert call(db, "reserve", fx.ka, reserve_request(10))["decision"] == "ALLOW"
    create_policy(db, "acme", "nocaps", "tenant:acme/*", caps={}, priority=3)
    result = call(db, "reserve", fx.ka, reserve_request(10))
    assert result["decision"] == "ALLOW" and "caps" not in result


def test_highest_priority_active_policy_in_its_window_wins(db: psycopg.Connection, fx: Fixture) -> None:
    create_policy(db, "acme", "low", "agent:*", caps={"max_tokens": 1})
    high = create_policy(db, "acme", "high", "tenant:acme/*", caps={"max_tokens": 2}, priority=10)
    create_policy(db, "acme", "future", "tenant:acme/*", caps={"max_tokens": 3}, priority=99,
                  effective_from="2999-01-01T00:00:00Z")
    create_policy(db, "acme", "past", "tenant:acme/*", caps={"max_tokens": 4}, priority=98,
                  effective_until="2001-01-01T00:00:00Z")
    subject = {"tenant": "acme", "workspace": "w1", "agent": "bot"}
    assert call(db, "decide", fx.ka, reserve_request(1, subject=subject))["caps"] == {"max_tokens": 2}
    call(db, "disable_policy", high["policy_id"])
    assert call(db, "decide", fx.ka, reserve_request(1, subject=subject))["caps"] == {"max_tokens": 1}
    # Equal priority: the older policy keeps applying.
    create_policy(db, "acme", "later", "agent:*", caps={"max_tokens": 5})
    assert call(db, "decide", fx.ka, reserve_request(1, subject=subject))["caps"] == {"max_tokens": 1}


def test_overage_policy_precedence_request_policy_budget_tenant(db: psycopg.Connection, fx: Fixture) -> None:
    db.execute("UPDATE cycles.budgets SET commit_overage_policy = 'ALLOW_WITH_OVERDRAFT'"
               " WHERE scope = 'tenant:acme/workspace:w1'")
    assert reservation(db, call(db, "reserve", fx.ka, reserve_request(1))["reservation_id"])[
        "overage_policy"] == "ALLOW_WITH_OVERDRAFT"
    create_policy(db, "acme", "strict", "tenant:acme/*", commit_overage_policy="REJECT")
    assert reservation(db, call(db, "reserve", fx.ka, reserve_request(1))["reservation_id"])[
        "overage_policy"] == "REJECT"
    explicit = call(db, "reserve", fx.ka, reserve_request(1, overage_policy="ALLOW_IF_AVAILABLE"))
    assert reservation(db, explicit["reservation_id"])["overage_policy"] == "ALLOW_IF_AVAILABLE"
    # Events follow the same chain: REJECT from the policy refuses an event
    # larger than remaining.
    before = budget(db, "tenant:acme/workspace:w1")
    with raises("BUDGET_EXCEEDED"):
        call(db, "create_event", fx.ka, {"idempotency_key": "e1", "subject": {"tenant": "acme", "workspace": "w1"},
                                         "action": {"kind": "k.k", "name": "n"},
                                         "actual": {"unit": "USD_MICROCENTS", "amount": 10**7}})
    assert budget(db, "tenant:acme/workspace:w1") == before


def test_ttl_override_between_request_and_tenant(db: psycopg.Connection, fx: Fixture) -> None:
    create_policy(db, "acme", "ttl", "tenant:acme/*",
                  reservation_ttl_override={"default_ttl_ms": 5000, "max_ttl_ms": 20000, "max_extensions": 1})
    default = reservation(db, call(db, "reserve", fx.ka, reserve_request(1))["reservation_id"])
    assert default["ttl_ms"] == 5000 and default["max_extensions"] == 1
    capped = reservation(db, call(db, "reserve", fx.ka, reserve_request(1, ttl_ms=600000))["reservation_id"])
    assert capped["ttl_ms"] == 20000
    asked = reservation(db, call(db, "reserve", fx.ka, reserve_request(1, ttl_ms=3000))["reservation_id"])
    assert asked["ttl_ms"] == 3000
    # Extensions: at most one, and never beyond max_ttl_ms from now.
    extended = call(db, "extend", fx.ka, asked["reservation_id"], {"idempotency_key": "x1", "extend_by_ms": 10**6})
    assert extended["expires_at_ms"] - asked["created_at_ms"] <= 20000 + 5000
    with raises("MAX_EXTENSIONS_EXCEEDED"):
        call(db, "extend", fx.ka, asked["reservation_id"], {"idempotency_key": "x2", "extend_by_ms": 1000})
    # Without the policy, the tenant's defaults apply again.
    db.execute("UPDATE cycles.policies SET status = 'DISABLED'")
    plain = reservation(db, call(db, "reserve", fx.ka, reserve_request(1))["reservation_id"])
    assert plain["ttl_ms"] == 60000 and plain["max_extensions"] == 10


def test_caps_are_replayed_verbatim(db: psycopg.Connection, fx: Fixture) -> None:
    policy = create_policy(db, "acme", "caps", "tenant:acme/*", caps={"max_tokens": 9})
    request = reserve_request(1, key="same")
    first = call(db, "reserve", fx.ka, request)
    call(db, "disable_policy", policy["policy_id"])
    replay = call(db, "reserve", fx.ka, request)
    assert replay["caps"] == {"max_tokens": 9} and replay["reservation_id"] == first["reservation_id"]
    assert db.execute("SELECT count(*) FROM cycles.reservations").fetchone() == (1,)


# scope_filter on the runtime -----------------------------------------------------

def filtered_key(db: psycopg.Connection, scope_filter: list[str]) -> str:
    key = create_key(db, "acme", ["reservations:create", "reservations:commit", "reservations:release",
                                  "reservations:extend"])
    db.execute("UPDATE cycles.api_keys SET scope_filter = %s WHERE key_hash = cycles._hash_secret(%s)",
               (scope_filter, key))
    return key


@pytest.mark.parametrize(("scope_filter", "subject", "allowed"), [
    (["workspace:w1"], {"workspace": "w1"}, True),
    (["workspace:w1"], {"workspace": "w1", "agent": "a"}, True),
    (["workspace:w1"], {"workspace": "od"}, False),
    (["workspace:w1"], {"tenant": "acme"}, False),
    (["agent:*"], {"workspace": "od", "agent": "a"}, True),
    (["agent:*"], {"workspace": "od"}, False),
    (["tenant:acme/workspace:w1"], {"workspace": "w1", "app": "x"}, True),
    (["workspace:w1", "agent:*"], {"workspace": "od", "agent": "bot"}, True),
    ([], {"workspace": "od"}, True),
])
def test_scope_filter_on_reserve_decide_and_events(
    db: psycopg.Connection, fx: Fixture, scope_filter: list[str], subject: dict[str, Any], allowed: bool,
) -> None:
    key = filtered_key(db, scope_filter)
    subject = {"tenant": "acme", **subject}
    event = {"idempotency_key": "ev", "subject": subject, "action": {"kind": "k.k", "name": "n"},
             "actual": {"unit": "USD_MICROCENTS", "amount": 1}}
    if allowed:
        assert call(db, "reserve", key, reserve_request(1, subject=subject))["decision"] == "ALLOW"
        assert call(db, "decide", key, reserve_request(1, subject=subject))["decision"] == "ALLOW"
        assert call(db, "create_event", key, event)["status"] == "APPLIED"
        return
    snapshot = db.execute("SELECT count(*) FROM cycles.ledger_entries").fetchone()
    for function, body in (("reserve", reserve_request(1, subject=subject)),
                           ("reserve", reserve_request(1, subject=subject, dry_run=True)),
                           ("decide", reserve_request(1, subject=subject)), ("create_event", event)):
        with raises("FORBIDDEN") as caught:
            call(db, function, key, body)
        assert caught[0].details["scope_filter"] == scope_filter
    assert db.execute("SELECT count(*) FROM cycles.ledger_entries").fetchone() == snapshot
    assert db.execute("SELECT count(*) FROM cycles.events WHERE event_type = 'reservation.denied'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM cycles.idempotency_records").fetchone() == (0,)


def test_scope_filter_on_settlements(db: psycopg.Connection, fx: Fixture) -> None:
    outside = call(db, "reserve", fx.ka, reserve_request(5, subject={"tenant": "acme", "workspace": "od"}))
    key = filtered_key(db, ["workspace:w1"])
    rid = outside["reservation_id"]
    for function, body in (("commit", {"idempotency_key": "c", "actual": {"unit": "USD_MICROCENTS", "amount": 1}}),
                           ("release", {"idempotency_key": "r"}),
                           ("extend", {"idempotency_key": "e", "extend_by_ms": 1000})):
        with raises("FORBIDDEN"):
            call(db, function, key, rid, body)
    assert reservation(db, rid)["status"] == "ACTIVE"
    inside = call(db, "reserve", key, reserve_request(5))
    assert call(db, "commit", key, inside["reservation_id"],
                {"idempotency_key": "c", "actual": {"unit": "USD_MICROCENTS", "amount": 1}})["status"] == "COMMITTED"

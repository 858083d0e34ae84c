"""cycles.dashboard_overview and the session functions, in SQL (fresh database per test)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]
USD = "USD_MICROCENTS"


def _key(conn: Conn, tenant_id: str, permissions: list[str] | None = None) -> str:
    row = conn.execute("SELECT cycles.create_api_key(p_tenant_id => %s, p_name => 'k', p_permissions => %s)"
                       " ->> 'key_secret'", (tenant_id, permissions)).fetchone()
    assert row is not None
    return str(row[0])


def _tenant(conn: Conn, tenant_id: str) -> str:
    conn.execute("SELECT cycles.create_tenant(p_tenant_id => %s, p_name => 'T')", (tenant_id,))
    return _key(conn, tenant_id)


def _charge(conn: Conn, key: str, tenant_id: str, reserve: int, actual: int, tag: str) -> None:
    request = {"idempotency_key": f"r-{tag}", "subject": {"tenant": tenant_id, "workspace": "w"},
               "action": {"kind": "llm", "name": "m"}, "estimate": {"unit": USD, "amount": reserve}}
    row = conn.execute("SELECT cycles.reserve(p_api_key => %s, p_request => %s::jsonb) ->> 'reservation_id'",
                       (key, json.dumps(request))).fetchone()
    assert row is not None and row[0]
    conn.execute("SELECT cycles.commit(p_api_key => %s, p_reservation_id => %s, p_request => %s::jsonb)",
                 (key, row[0], json.dumps({"idempotency_key": f"c-{tag}", "actual": {"unit": USD, "amount": actual}})))


def _overview(conn: Conn, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    row = conn.execute("SELECT cycles.dashboard_overview(p_ctx => %s::jsonb)", (json.dumps(ctx or {}),)).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


@pytest.fixture
def two_tenants(db: Conn) -> tuple[str, str]:
    """acme: tenant and workspace budgets, one commit of 300 and one overage
    commit leaving 400 of debt; beta: one budget, one commit of 50."""
    acme = _tenant(db, "acme")
    db.execute("SELECT cycles.create_budget('tenant:acme', %s, 1000000)", (USD,))
    db.execute("SELECT cycles.create_budget('tenant:acme/workspace:w', %s, 400, 1000, 'ALLOW_WITH_OVERDRAFT')", (USD,))
    _charge(db, acme, "acme", 200, 300, "a1")
    _charge(db, acme, "acme", 100, 500, "a2")
    beta = _tenant(db, "beta")
    db.execute("SELECT cycles.create_budget('tenant:beta', %s, 5000)", (USD,))
    _charge(db, beta, "beta", 50, 50, "b1")
    # One denial for beta (a decision over its budget), one expiry for acme.
    decision = db.execute("SELECT cycles.decide(p_api_key => %s, p_request => %s::jsonb) ->> 'decision'", (beta, json.dumps({
        "idempotency_key": "d1", "subject": {"tenant": "beta"}, "action": {"kind": "llm", "name": "m"},
        "estimate": {"unit": USD, "amount": 10**9}}))).fetchone()
    assert decision == ("DENY",)
    db.execute("INSERT INTO cycles.events (event_id, tenant_id, event_type, category, source, scope)"
               " VALUES ('evt_x1', 'acme', 'reservation.expired', 'reservation', 'expiry-sweeper', 'tenant:acme')")
    return acme, beta


def test_overview_for_the_admin_counts_every_tenant_and_each_charge_once(db: Conn, two_tenants: Any) -> None:
    figures = _overview(db)
    assert figures["tenants"] == 2
    assert figures["budgets"] == {"total": 3, "active": 3, "frozen": 0, "over_limit": 0, "in_debt": 1}
    assert figures["active_reservations"] == 0
    # 300 + 500 + 50: a commit on a two-budget path is counted once.
    assert figures["charged_today"] == [{"unit": USD, "amount": 850}]
    assert [(b["scope"], b["debt"]["amount"]) for b in figures["attention"]] == [("tenant:acme/workspace:w", 400)]
    assert figures["last_hour"] == {"denials": 1, "expiries": 1}
    assert figures["failing_webhooks"] == 0
    audited = db.execute("SELECT actor_type FROM cycles.audit_logs WHERE operation = 'dashboardOverview'").fetchall()
    assert audited == [("admin",)]


def test_overview_for_a_tenant_key_is_confined_to_its_tenant(db: Conn, two_tenants: Any) -> None:
    reader = _key(db, "beta", ["admin:read"])
    figures = _overview(db, {"api_key": reader, "actor_type": "api_key"})
    assert figures["tenants"] == 1
    assert figures["budgets"]["total"] == 1
    assert figures["charged_today"] == [{"unit": USD, "amount": 50}]
    assert figures["attention"] == []
    assert figures["last_hour"] == {"denials": 1, "expiries": 0}


def test_overview_needs_admin_read_of_a_tenant_key(db: Conn, two_tenants: Any) -> None:
    acme_key, _ = two_tenants
    with pytest.raises(psycopg.Error) as caught:
        _overview(db, {"api_key": acme_key, "actor_type": "api_key"})
    assert caught.value.sqlstate == "CY4IP"


def test_sessions_open_read_and_close(db: Conn) -> None:
    _tenant(db, "acme")
    reader = _key(db, "acme", ["admin:read"])
    digest = hashlib.sha256(b"token").digest()
    opened = db.execute(
        "SELECT cycles.dashboard_open_session(%s, %s, %s, 3600, %s::jsonb)",
        (digest, b"sealed", "c" * 43, json.dumps({"api_key": reader, "actor_type": "api_key"}))).fetchone()
    assert opened is not None and opened[0]["principal"] == "tenant" and opened[0]["tenant_id"] == "acme"
    session = db.execute("SELECT cycles.dashboard_session(%s)", (digest,)).fetchone()
    assert session is not None and session[0]["csrf_token"] == "c" * 43 and session[0]["tenant_id"] == "acme"
    # The table never holds the token or the key's secret.
    stored = db.execute("SELECT session_hash, sealed_key FROM cycles.dashboard_sessions").fetchone()
    assert stored == (digest, b"sealed")
    closed = db.execute("SELECT cycles.dashboard_close_session(%s)", (digest,)).fetchone()
    assert closed == ({"closed": True},)
    assert db.execute("SELECT cycles.dashboard_session(%s)", (digest,)).fetchone() == (None,)
    operations = db.execute(
        "SELECT operation, actor_type, tenant_id FROM cycles.audit_logs"
        " WHERE operation LIKE 'dashboard%%' ORDER BY created_at").fetchall()
    assert operations == [("dashboardLogin", "api_key", "acme"), ("dashboardLogout", "api_key", "acme")]


def test_expired_sessions_are_not_returned(db: Conn) -> None:
    digest = hashlib.sha256(b"old").digest()
    db.execute("SELECT cycles.dashboard_open_session(%s, NULL, %s, 60)", (digest, "c" * 43))
    db.execute("UPDATE cycles.dashboard_sessions SET created_at = created_at - interval '2 hours',"
               " expires_at = clock_timestamp() - interval '1 second'")
    assert db.execute("SELECT cycles.dashboard_session(%s)", (digest,)).fetchone() == (None,)


@pytest.mark.parametrize(("hash_bytes", "csrf", "ttl"), [
    (b"short", "c" * 43, 3600), (None, "c" * 43, 3600), (b"x" * 32, "short", 3600), (b"x" * 32, "c" * 43, 10),
])
def test_open_session_refuses_bad_input(db: Conn, hash_bytes: bytes | None, csrf: str, ttl: int) -> None:
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT cycles.dashboard_open_session(%s, NULL, %s, %s)", (hash_bytes, csrf, ttl))
    assert caught.value.sqlstate == "CY400"
    assert db.execute("SELECT count(*) FROM cycles.dashboard_sessions").fetchone() == (0,)


def _spend(conn: Conn, scope: str, bucket: str = "day", buckets: int = 30,
           ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    row = conn.execute("SELECT cycles.dashboard_budget_spend(%s, %s, %s, %s, %s::jsonb)",
                       (scope, USD, bucket, buckets, json.dumps(ctx or {}))).fetchone()
    assert row is not None
    result: dict[str, Any] = row[0]
    return result


def test_budget_spend_buckets_the_ledger(db: Conn, two_tenants: Any) -> None:
    daily = _spend(db, "tenant:acme/workspace:w")
    assert daily["budget"]["scope"] == "tenant:acme/workspace:w"
    assert len(daily["series"]) == 30
    # Today (the last bucket): the commits of 300 and 500 on this 400 budget,
    # booked as 400 spent and 400 debt.
    today = daily["series"][-1]
    booked = db.execute(
        "SELECT sum(spent_delta), sum(debt_delta) FROM cycles.ledger_entries l JOIN cycles.budgets b USING (budget_id)"
        " WHERE b.scope = 'tenant:acme/workspace:w' AND l.operation IN ('COMMIT', 'EVENT')").fetchone()
    assert (today["spent"], today["debt"]) == booked
    assert (today["spent"], today["debt"], today["charged"]) == (400, 400, 800)
    assert all(point["charged"] == 0 for point in daily["series"][:-1])
    for bucket, count in (("hour", 48), ("month", 12)):
        series = _spend(db, "tenant:acme/workspace:w", bucket, count)["series"]
        assert len(series) == count and series[-1]["charged"] == 800 and sum(p["charged"] for p in series) == 800
    starts = [point["start"] for point in _spend(db, "tenant:acme", "month", 12)["series"]]
    assert all(start.endswith("-01T00:00:00.000Z") for start in starts) and starts == sorted(starts)


def test_budget_spend_is_confined_to_the_keys_tenant(db: Conn, two_tenants: Any) -> None:
    reader = _key(db, "beta", ["admin:read"])
    ctx = {"api_key": reader, "actor_type": "api_key"}
    assert _spend(db, "tenant:beta", ctx=ctx)["series"][-1]["charged"] == 50
    with pytest.raises(psycopg.Error) as caught:
        _spend(db, "tenant:acme", ctx=ctx)
    assert caught.value.sqlstate == "CY4BN"


@pytest.mark.parametrize(("bucket", "buckets"), [("week", 10), ("day", 0), ("day", 367)])
def test_budget_spend_refuses_bad_buckets(db: Conn, two_tenants: Any, bucket: str, buckets: int) -> None:
    with pytest.raises(psycopg.Error) as caught:
        _spend(db, "tenant:acme", bucket, buckets)
    assert caught.value.sqlstate == "CY400"


def _backdated_commits(conn: Conn, tenant_id: str, minutes_ago: int, amounts: dict[str, int]) -> None:
    """Lead COMMIT ledger rows `minutes_ago` minutes back on the tenant's
    budget, one per agent (straight inserts, as the scale benchmark does:
    the hash chain is not what is tested here)."""
    for agent, amount in amounts.items():
        conn.execute("""
            INSERT INTO cycles.ledger_entries (
                tenant_id, budget_id, scope, unit, operation, spent_delta, actor_type, created_at, subject_agent,
                operation_lead, allocated_after, spent_after, reserved_after, debt_after, entry_hash)
            SELECT b.tenant_id, b.budget_id, b.scope, b.unit, 'COMMIT', %(amount)s, 'api_key',
                   clock_timestamp() - make_interval(mins => %(minutes)s) - random() * interval '1 second',
                   %(agent)s, true, b.allocated, 0, 0, 0, sha256(convert_to(%(agent)s || random(), 'UTF8'))
            FROM cycles.budgets AS b WHERE b.scope = 'tenant:' || %(tenant)s""",
                     {"amount": amount, "minutes": minutes_ago, "agent": agent, "tenant": tenant_id})


def _minutes_into_month(conn: Conn) -> int:
    row = conn.execute(
        "SELECT extract(epoch FROM clock_timestamp() - date_trunc('month', clock_timestamp(), 'UTC')) / 60").fetchone()
    assert row is not None
    return int(row[0])


def _expected_spend(conn: Conn) -> tuple[list[dict[str, Any]], list[tuple[str, str, int]]]:
    """This month's charges and agent ranking, straight from the ledger."""
    month = conn.execute("""
        SELECT l.unit, sum(l.spent_delta + l.debt_delta) FROM cycles.ledger_entries l
        WHERE l.operation_lead AND l.operation IN ('COMMIT', 'EVENT')
          AND l.created_at >= date_trunc('month', clock_timestamp(), 'UTC') GROUP BY 1 ORDER BY 1""").fetchall()
    agents = conn.execute("""
        SELECT l.tenant_id, l.subject_agent, sum(l.spent_delta + l.debt_delta) AS charged
        FROM cycles.ledger_entries l
        WHERE l.operation_lead AND l.operation IN ('COMMIT', 'EVENT') AND l.subject_agent IS NOT NULL
          AND l.created_at >= date_trunc('month', clock_timestamp(), 'UTC')
        GROUP BY 1, 2 ORDER BY charged DESC, 1, 2 LIMIT 10""").fetchall()
    return [{"unit": unit, "amount": amount} for unit, amount in month], [tuple(row) for row in agents]


def test_month_spend_and_top_agents_match_the_ledger_with_and_without_summaries(
    db: Conn, two_tenants: Any,
) -> None:
    # Rows in earlier hours of the month (when the month has them), which the
    # summaries hold, and rows of this hour, read from the ledger directly.
    minutes = _minutes_into_month(db)
    for minutes_ago in (m for m in (1, 150, 190) if m < minutes):
        _backdated_commits(db, "acme", minutes_ago, {f"a{i}": 100 * i + minutes_ago for i in range(1, 14)})
    _backdated_commits(db, "beta", 1, {"a13": 5_000})  # the same agent name in another tenant
    month, agents = _expected_spend(db)
    for _ in range(2):  # the first call summarises, the second reads the summaries
        figures = _overview(db)
        assert figures["charged_month"] == month
        assert [(a["tenant_id"], a["agent"], a["charged"]) for a in figures["top_agents"]] == agents
        assert {t["tenant_id"] for t in figures["top_tenants"]} == {"acme", "beta"}
    state = db.execute("SELECT summarised_to FROM cycles.dashboard_summary_state WHERE name = 'spend'").fetchone()
    assert state is not None


def test_summaries_catch_up_a_slice_at_a_time(db: Conn, two_tenants: Any) -> None:
    minutes = _minutes_into_month(db)
    if minutes < 200:
        pytest.skip("the month has not had three closed hours yet")
    for minutes_ago in (70, 130, 190):
        _backdated_commits(db, "acme", minutes_ago, {"x": minutes_ago})
    month, agents = _expected_spend(db)
    calls = 0
    target = db.execute("SELECT date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC')").fetchone()
    while True:
        calls += 1
        reached = db.execute("SELECT cycles._dashboard_summarise_spend(p_budget_ms => 0)").fetchone()
        assert reached is not None and calls < 50
        if target is not None and reached[0] >= target[0]:
            break
    assert calls >= 3  # one five-minute slice with rows per call
    figures = _overview(db)
    assert figures["charged_month"] == month
    assert [(a["tenant_id"], a["agent"], a["charged"]) for a in figures["top_agents"]] == agents


def test_a_scope_filtered_key_gets_todays_figure_only(db: Conn, two_tenants: Any) -> None:
    scoped = db.execute("SELECT cycles.create_api_key(p_tenant_id => 'acme', p_name => 'k',"
                        " p_permissions => ARRAY['admin:read'], p_options => %s::jsonb) ->> 'key_secret'",
                        (json.dumps({"scope_filter": ["tenant:acme"]}),)).fetchone()
    assert scoped is not None
    figures = _overview(db, {"api_key": scoped[0], "actor_type": "api_key"})
    assert "charged_month" not in figures and "top_agents" not in figures
    assert figures["charged_today"] == [{"unit": USD, "amount": 800}]


def test_audit_action_accepts_only_the_operations_that_audit_nothing_themselves(db: Conn) -> None:
    _tenant(db, "acme")
    reader = _key(db, "acme", ["admin:read"])
    ctx = json.dumps({"api_key": reader, "actor_type": "api_key"})
    row = db.execute("SELECT cycles.dashboard_audit_action('replayWebhookEvents', 'whsub_1', 'other', NULL, %s::jsonb)",
                     (ctx,)).fetchone()
    assert row is not None
    logged = db.execute("SELECT operation, tenant_id, actor_type, status FROM cycles.audit_logs WHERE log_id = %s",
                        (row[0]["log_id"],)).fetchone()
    assert logged == ("replayWebhookEvents", "acme", "api_key", 200)  # the key's tenant, not the one named
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT cycles.dashboard_audit_action('freezeBudget', 'x', 'acme', NULL, %s::jsonb)", (ctx,))
    assert caught.value.sqlstate == "CY400"


def test_reservation_history_is_confined_to_the_keys_tenant(db: Conn, two_tenants: Any) -> None:
    reservation = db.execute("SELECT reservation_id FROM cycles.reservations WHERE tenant_id = 'acme' LIMIT 1").fetchone()
    assert reservation is not None
    history = db.execute("SELECT cycles.dashboard_reservation_history(%s)", (reservation[0],)).fetchone()
    assert history is not None
    assert [row["operation"] for row in history[0]["ledger"]] == ["RESERVE", "RESERVE", "COMMIT", "COMMIT"]
    assert history[0]["reservation"]["status"] == "COMMITTED"
    reader = _key(db, "beta", ["admin:read"])
    with pytest.raises(psycopg.Error) as caught:
        db.execute("SELECT cycles.dashboard_reservation_history(%s, %s::jsonb)",
                   (reservation[0], json.dumps({"api_key": reader, "actor_type": "api_key"})))
    assert caught.value.sqlstate == "CY404"

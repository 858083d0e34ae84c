"""The operator commands ``cycles tenant|key|budget``, run with click's CliRunner against the test database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from tests.conftest import ok_json


def test_tenant_commands(run: Any, db: psycopg.Connection) -> None:
    created = ok_json(run("tenant", "create", "acme", "Acme Corp", "--overage-policy", "REJECT",
                          "--metadata", "plan=pro", "--json"))
    assert created["tenant_id"] == "acme" and created["default_commit_overage_policy"] == "REJECT"
    assert created["metadata"] == {"plan": "pro"}

    table = run("tenant", "show", "acme")
    assert table.exit_code == 0
    assert "tenant acme" in table.stdout and "Acme Corp" in table.stdout and "ACTIVE" in table.stdout

    run("tenant", "create", "beta", "Beta")
    listing = run("tenant", "list")
    assert listing.exit_code == 0 and "tenants (2)" in listing.stdout
    assert "acme" in listing.stdout and "beta" in listing.stdout
    paged = ok_json(run("tenant", "list", "--limit", "1", "--json"))
    assert [t["tenant_id"] for t in paged["tenants"]] == ["beta"] and paged["has_more"] is True
    more = run("tenant", "list", "--limit", "1")
    assert "more results: --cursor beta" in more.stdout

    assert ok_json(run("tenant", "suspend", "acme", "--json"))["status"] == "SUSPENDED"
    assert ok_json(run("tenant", "reactivate", "acme", "--json"))["status"] == "ACTIVE"

    refused = run("tenant", "close", "acme", input="n\n")
    assert refused.exit_code != 0
    assert db.execute("SELECT status FROM cycles.tenants WHERE tenant_id = 'acme'").fetchone() == ("ACTIVE",)
    closed = run("tenant", "close", "acme", "--yes")
    assert closed.exit_code == 0 and "CLOSED" in closed.stdout
    # The CLI records a request id, so the cascade's correlation id names it.
    correlation = db.execute("SELECT correlation_id FROM cycles.events WHERE event_type = 'tenant.closed'").fetchone()
    assert correlation is not None and correlation[0].startswith("tenant_close_cascade:acme:cli_")


def test_key_commands(run: Any, db: psycopg.Connection) -> None:
    run("tenant", "create", "acme", "Acme")
    created = ok_json(run("key", "create", "acme", "agent", "--permission", "reservations:create",
                          "--permission", "balances:read", "--expires-at", "2099-01-01T00:00:00", "--json"))
    assert created["permissions"] == ["reservations:create", "balances:read"]
    assert created["expires_at"] == "2099-01-01T00:00:00.000Z"
    assert created["key_secret"].startswith("cyc_live_")

    shown = run("key", "create", "acme", "second")
    assert shown.exit_code == 0 and "key_secret" in shown.stdout and "shown only this once" in shown.stdout

    listing = run("key", "list", "acme")
    assert listing.exit_code == 0 and "API keys (2)" in listing.stdout and created["key_id"] in listing.stdout
    assert created["key_secret"] not in listing.stdout

    revoked = ok_json(run("key", "revoke", created["key_id"], "--reason", "rotated", "--json"))
    assert revoked["status"] == "REVOKED" and revoked["revoked_reason"] == "rotated"
    again = run("key", "revoke", created["key_id"])
    assert again.exit_code == 1
    assert again.stderr.startswith("error: INVALID_TRANSITION: ") and again.stdout == ""

    bad = run("key", "create", "acme", "x", "--permission", "root:everything")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: INVALID_REQUEST: unknown permission")
    bad_time = run("key", "create", "acme", "x", "--expires-at", "next tuesday")
    assert bad_time.exit_code == 2 and "not an ISO-8601 date-time" in bad_time.stderr
    assert db.execute("SELECT count(*) FROM cycles.api_keys").fetchone() == (2,)


def test_budget_commands(run: Any, db: psycopg.Connection) -> None:
    run("tenant", "create", "acme", "Acme")
    created = ok_json(run("budget", "create", "tenant:acme/workspace:prod", "TOKENS", "1000",
                          "--overdraft-limit", "50", "--json"))
    assert created["allocated"] == {"unit": "TOKENS", "amount": 1000}
    assert created["overdraft_limit"] == {"unit": "TOKENS", "amount": 50}

    funded = run("budget", "fund", "tenant:acme/workspace:prod", "TOKENS", "CREDIT", "250", "--reason", "top-up")
    assert funded.exit_code == 0
    assert "CREDIT tenant:acme/workspace:prod TOKENS" in funded.stdout and "1,250" in funded.stdout

    keyed = ["budget", "fund", "tenant:acme/workspace:prod", "TOKENS", "DEBIT", "50", "--idempotency-key", "d1",
             "--json"]
    first = ok_json(run(*keyed))
    assert first["new_allocated"]["amount"] == 1200
    assert ok_json(run(*keyed)) == first  # a retry with the same key is a replay
    assert db.execute("SELECT allocated FROM cycles.budgets").fetchone() == (1200,)

    assert ok_json(run("budget", "freeze", "tenant:acme/workspace:prod", "TOKENS", "--json"))["status"] == "FROZEN"
    frozen = run("budget", "fund", "tenant:acme/workspace:prod", "TOKENS", "CREDIT", "1")
    assert frozen.exit_code == 1 and frozen.stderr.startswith("error: BUDGET_FROZEN: ")
    assert ok_json(run("budget", "unfreeze", "tenant:acme/workspace:prod", "TOKENS", "--json"))["status"] == "ACTIVE"

    shown = run("budget", "show", "tenant:acme/workspace:prod", "TOKENS")
    assert shown.exit_code == 0 and "1,200" in shown.stdout

    run("budget", "create", "tenant:acme", "CREDITS", "5")
    listing = run("budget", "list", "acme")
    assert listing.exit_code == 0 and "budgets (2)" in listing.stdout
    assert "tenant:acme/workspace:prod" in listing.stdout and "CREDITS" in listing.stdout
    only = ok_json(run("budget", "list", "acme", "--unit", "CREDITS", "--json"))
    assert [b["scope"] for b in only["ledgers"]] == ["tenant:acme"]

    closed = ok_json(run("budget", "close", "tenant:acme", "CREDITS", "--reason", "unused", "--json"))
    assert closed["status"] == "CLOSED"
    assert db.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)


@pytest.mark.parametrize(("args", "code"), [
    (["budget", "create", "tenant:ghost", "TOKENS", "10"], "TENANT_NOT_FOUND"),
    (["budget", "create", "workspace:x", "TOKENS", "10"], "INVALID_REQUEST"),
    (["budget", "show", "tenant:acme", "TOKENS"], "BUDGET_NOT_FOUND"),
    (["budget", "fund", "tenant:acme", "CREDITS", "DEBIT", "99"], "BUDGET_EXCEEDED"),
    (["tenant", "show", "ghost"], "TENANT_NOT_FOUND"),
    (["tenant", "create", "acme", "Someone Else"], "DUPLICATE_RESOURCE"),
    (["key", "list", "ghost"], "TENANT_NOT_FOUND"),
    (["key", "revoke", "key_0000000000000000"], "NOT_FOUND"),
])
def test_refused_calls_print_one_error_line(run: Any, db: psycopg.Connection, args: list[str], code: str) -> None:
    run("tenant", "create", "acme", "Acme")
    run("budget", "create", "tenant:acme", "CREDITS", "5")
    before = db.execute("SELECT (SELECT count(*) FROM cycles.events), (SELECT count(*) FROM cycles.ledger_entries)"
                        ).fetchone()
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {code}: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""
    after = db.execute("SELECT (SELECT count(*) FROM cycles.events), (SELECT count(*) FROM cycles.ledger_entries)"
                       ).fetchone()
    assert after == before


@pytest.mark.parametrize("amount", ["-5", "9223372036854775808", "ten"])
def test_amounts_are_checked_before_the_database(run: Any, amount: str) -> None:
    result = run("budget", "create", "tenant:acme", "TOKENS", "--", amount)
    assert result.exit_code == 2
    assert "is not an integer" in result.stderr or "is outside 0.." in result.stderr


def test_unreachable_embedded_database_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("CYCLES_DATABASE_URL", raising=False)
    monkeypatch.setenv("CYCLES_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["tenant", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the embedded database in ") and "cycles serve" in result.stderr
    assert result.stderr.count("\n") == 1


def test_key_update_bulk_and_audit_commands(run: Any, db: psycopg.Connection) -> None:
    ok_json(run("tenant", "create", "bulk-a", "Bulk A", "--json"))
    ok_json(run("tenant", "create", "bulk-b", "Bulk B", "--json"))
    created = ok_json(run("key", "create", "bulk-a", "agent", "--json"))
    updated = ok_json(run("key", "update", created["key_id"], "--name", "renamed", "--permission", "balances:read",
                          "--scope-filter", "workspace:eng", "--json"))
    assert (updated["name"], updated["permissions"], updated["scope_filter"]) == (
        "renamed", ["balances:read"], ["workspace:eng"])
    assert ok_json(run("key", "show", created["key_id"], "--json"))["name"] == "renamed"
    assert ok_json(run("tenant", "update", "bulk-a", "--max-extensions", "2", "--json"))[
        "max_reservation_extensions"] == 2
    refused = run("tenant", "bulk", "SUSPEND", "--search", "bulk-", "--expected-count", "3")
    assert refused.exit_code == 1 and "COUNT_MISMATCH" in refused.stderr
    suspended = ok_json(run("tenant", "bulk", "SUSPEND", "--search", "bulk-", "--expected-count", "2", "--json"))
    assert [row["id"] for row in suspended["succeeded"]] == ["bulk-a", "bulk-b"]
    run("tenant", "reactivate", "bulk-a")
    ok_json(run("budget", "create", "tenant:bulk-a", "TOKENS", "100", "--json"))
    funded = ok_json(run("budget", "bulk", "CREDIT", "bulk-a", "--amount", "5", "--json"))
    assert funded["total_matched"] == 1 and len(funded["succeeded"]) == 1
    table = run("budget", "bulk", "DEBIT", "bulk-a", "--amount", "1000")
    assert table.exit_code == 0 and "BUDGET_EXCEEDED" in table.stdout
    logs = ok_json(run("audit", "list", "--tenant", "bulk-a", "--operation", "updateApiKey,updateTenant", "--json"))
    assert [log["operation"] for log in logs["logs"]] == ["updateTenant", "updateApiKey"]
    assert run("audit", "list", "--status-min", "400").exit_code == 0

"""The operator commands ``cycles policy|event``, run with click's CliRunner against the test database."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from click.testing import Result

from tests.conftest import ok_json


def test_policy_commands(run: Any, db: psycopg.Connection) -> None:
    run("tenant", "create", "acme", "Acme")
    created = ok_json(run("policy", "create", "acme", "agents", "tenant:acme/*", "--priority", "5",
                          "--max-tokens", "4000", "--deny-tool", "email.send", "--overage-policy", "REJECT",
                          "--max-ttl-ms", "120000", "--json"))
    policy_id = created["policy_id"]
    assert created["caps"] == {"max_tokens": 4000, "tool_denylist": ["email.send"]}
    assert created["commit_overage_policy"] == "REJECT"
    assert created["reservation_ttl_override"] == {"max_ttl_ms": 120000}

    listing = run("policy", "list", "--tenant", "acme")
    assert listing.exit_code == 0 and "policies (1)" in listing.stdout and policy_id in listing.stdout

    updated = ok_json(run("policy", "update", policy_id, "--priority", "9", "--max-tokens", "100", "--json"))
    assert updated["priority"] == 9 and updated["caps"] == {"max_tokens": 100}
    assert ok_json(run("policy", "show", policy_id, "--json"))["priority"] == 9

    assert ok_json(run("policy", "disable", policy_id, "--json"))["status"] == "DISABLED"
    stored = db.execute("SELECT status FROM cycles.policies WHERE policy_id = %s", (policy_id,)).fetchone()
    assert stored == ("DISABLED",)

    nothing: Result = run("policy", "update", policy_id)
    assert nothing.exit_code != 0 and "nothing to change" in nothing.output


def test_policy_refusal_is_one_error_line(run: Any) -> None:
    refused = run("policy", "create", "nobody", "p", "tenant:nobody")
    assert refused.exit_code != 0
    assert refused.stderr.strip().count("\n") == 0 and refused.stderr.startswith("error: ")


def test_event_commands(run: Any, db: psycopg.Connection) -> None:
    run("tenant", "create", "acme", "Acme")
    run("budget", "create", "tenant:acme", "USD_MICROCENTS", "1000")
    page = ok_json(run("event", "list", "--tenant", "acme", "--json"))
    types = [e["event_type"] for e in page["events"]]
    assert "tenant.created" in types and "budget.created" in types
    only_budget = ok_json(run("event", "list", "--tenant", "acme", "--category", "budget", "--json"))
    assert {e["category"] for e in only_budget["events"]} == {"budget"}

    event_id = page["events"][0]["event_id"]
    shown = ok_json(run("event", "show", event_id, "--json"))
    assert shown["event_id"] == event_id and shown["tenant_id"] == "acme"
    table = run("event", "list", "--tenant", "acme")
    assert table.exit_code == 0 and "events (" in table.stdout
    assert json.loads(run("event", "list", "--type", "tenant.created", "--json").stdout)["events"][0][
        "tenant_id"] == "acme"

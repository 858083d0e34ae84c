"""The authority demo blocks exactly the email step, before it runs; without
the authority all four steps run."""

from __future__ import annotations

import io

import psycopg
from click.testing import CliRunner
from rich.console import Console

from app.demos.authority import AGENT, BLOCKED, run_authority
from app.demos.cli import demo
from app.demos.sandbox import Target
from tests.server import ApiServer

Conn = psycopg.Connection[tuple[object, ...]]
ALL_STEPS = ["read_case", "append_note", "update_crm", "send_email"]


def test_only_the_email_is_blocked(target: Target, demo_conn: Conn) -> None:
    without, with_authority = run_authority(Console(file=io.StringIO()), target)

    assert without.executed == ALL_STEPS
    assert without.blocked == []
    assert with_authority.executed == ["read_case", "append_note", "update_crm"]
    assert with_authority.blocked == ["send_email"]
    assert [outcome.decision for outcome in with_authority.outcomes if outcome.decision == BLOCKED] == [BLOCKED]

    tenant_id = with_authority.tenant_id
    assert tenant_id is not None
    reserved = demo_conn.execute(
        "SELECT scope, operation FROM cycles.ledger_entries WHERE tenant_id = %s AND operation <> 'CREATE'"
        " AND scope LIKE %s ORDER BY entry_id", (tenant_id, f"tenant:{tenant_id}/agent:{AGENT}/%")).fetchall()
    # Reading the case reserved nothing; the email's reservation was refused, so left no row.
    prefix = f"tenant:{tenant_id}/agent:{AGENT}/toolset:"
    assert reserved == [(prefix + "notes", "RESERVE"), (prefix + "notes", "COMMIT"),
                        (prefix + "crm", "RESERVE"), (prefix + "crm", "COMMIT")]
    assert demo_conn.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)


def test_the_command_exits_0_and_says_where_the_ledger_is(demo_server: ApiServer) -> None:
    result = CliRunner().invoke(demo, [
        "authority", "--base-url", demo_server.base_url, "--admin-key", demo_server.admin_key])
    assert result.exit_code == 0, result.output
    assert "BLOCKED -> escalated" in result.output
    assert "3 ran, 1 blocked" in result.output
    assert "4 ran, 0 blocked" in result.output
    assert "FROM cycles.ledger_entries WHERE tenant_id = 'demo-" in result.output

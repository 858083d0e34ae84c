"""The runaway demo's guarded run stops at exactly call 101 with exactly $1.00
spent, and the ledger reconciles."""

from __future__ import annotations

import io

import psycopg
from click.testing import CliRunner
from rich.console import Console

from app.demos.cli import demo
from app.demos.runaway import AGENT, AGENT_BUDGET, CALL_COST, run_runaway, support_bot_steps
from app.demos.sandbox import Target
from tests.server import ApiServer

Conn = psycopg.Connection[tuple[object, ...]]


def test_the_loop_never_ends_by_itself() -> None:
    steps = support_bot_steps()
    assert [next(steps) for _ in range(7)] == [
        "draft", "evaluate", "refine", "evaluate", "refine", "evaluate", "refine"]


def test_guarded_run_stops_before_call_101_having_spent_exactly_one_dollar(target: Target, demo_conn: Conn) -> None:
    result = run_runaway(Console(file=io.StringIO()), target, call_ms=0, unguarded_seconds=0.2)

    assert result.unguarded.denied_call is None
    assert result.unguarded.spent == result.unguarded.calls * CALL_COST
    guarded = result.guarded
    assert (guarded.calls, guarded.denied_call, guarded.stopped_by) == (100, 101, "BUDGET_EXCEEDED")
    assert guarded.spent == guarded.server_spent == AGENT_BUDGET == 100_000_000

    scope = f"tenant:{result.tenant_id}/agent:{AGENT}"
    rows = demo_conn.execute(
        "SELECT operation, count(*), sum(spent_delta) FROM cycles.ledger_entries"
        " WHERE tenant_id = %s AND scope = %s GROUP BY operation ORDER BY operation",
        (result.tenant_id, scope)).fetchall()
    # The 101st reservation was refused: no row of it anywhere.
    assert rows == [("COMMIT", 100, 100_000_000), ("CREATE", 1, 0), ("RESERVE", 100, 0)]
    assert demo_conn.execute(
        "SELECT spent, reserved FROM cycles.budgets WHERE scope = %s", (scope,)).fetchone() == (100_000_000, 0)
    assert demo_conn.execute("SELECT count(*) FROM cycles.verify_ledger()").fetchone() == (0,)


def test_the_command_runs_fast_against_a_given_server(demo_server: ApiServer) -> None:
    result = CliRunner().invoke(demo, [
        "runaway", "--fast", "--unguarded-seconds", "1", "--base-url", demo_server.base_url,
        "--admin-key", demo_server.admin_key])
    assert result.exit_code == 0, result.output
    assert "call 101 denied" in result.output
    assert "cycles psql -c \"SELECT" in result.output
    assert "FROM cycles.ledger_entries WHERE tenant_id = 'demo-" in result.output


def test_a_given_server_needs_an_admin_key(demo_server: ApiServer) -> None:
    result = CliRunner(env={"CYCLES_ADMIN_API_KEY": ""}).invoke(
        demo, ["runaway", "--fast", "--base-url", demo_server.base_url])
    assert result.exit_code == 1
    assert "--admin-key (or CYCLES_ADMIN_API_KEY) is required" in result.output

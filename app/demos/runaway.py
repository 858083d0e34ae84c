"""`cycles demo runaway`: a support bot whose quality check never passes,
run twice. Unguarded it burns money until it is killed; guarded by a $1.00
budget at its agent scope it stops cleanly before call 101."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cycles_sdk import BudgetExceededError, CyclesClient, CyclesConfig, cycles
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from app.demos.sandbox import Target, dollars, provision_tenant

CALL_COST = 1_000_000              # $0.01 per simulated LLM call, in USD_MICROCENTS
AGENT_BUDGET = 100_000_000         # $1.00
TENANT_BUDGET = 10_000_000_000     # $100.00: the agent's budget is the one that binds
AGENT = "support-bot"
QUALITY_THRESHOLD = 0.9
SECONDS_PER_HOUR = 3600
HOURS_PER_DAY = 24


@dataclass(frozen=True)
class RunOutcome:
    calls: int                     # simulated LLM calls that ran (and were paid for)
    spent: int                     # USD_MICROCENTS
    seconds: float
    stopped_by: str                # "wall-clock kill" or the denial's error code
    denied_call: int | None = None  # the call number the budget refused, if any
    server_spent: int | None = None  # the agent budget's spent, read back from GET /v1/balances


@dataclass(frozen=True)
class RunawayResult:
    tenant_id: str
    unguarded: RunOutcome
    guarded: RunOutcome


def support_bot_steps() -> Iterator[str]:
    """The loop's LLM calls, forever: draft, then evaluate and refine, because
    the evaluator never scores the answer above the threshold."""
    yield "draft"
    while True:
        yield "evaluate"
        yield "refine"


def simulated_llm(step: str, call_ms: int) -> float:
    """One LLM call: takes call_ms and returns a quality score that stays under the threshold."""
    if call_ms:
        time.sleep(call_ms / 1000)
    return QUALITY_THRESHOLD - 0.2 if step == "evaluate" else 0.0


def _status(title: str, calls: int, spent: int, started: float, note: str, style: str) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_row(Text(title, style="bold"), f"calls: {calls:>6}", Text(f"spent: {dollars(spent):>10}", style=style),
                  f"{time.monotonic() - started:5.1f}s", note)
    return table


def run_unguarded(console: Console, call_ms: int, seconds: float) -> RunOutcome:
    """The loop with nothing but a wall-clock kill to stop it."""
    started = time.monotonic()
    deadline = started + seconds
    calls = 0
    with Live(console=console, refresh_per_second=10, transient=False) as live:
        for step in support_bot_steps():
            if time.monotonic() >= deadline:
                break
            simulated_llm(step, call_ms)
            calls += 1
            if calls % 10 == 0:
                live.update(_status("unguarded", calls, calls * CALL_COST, started, step, "red"))
        elapsed = time.monotonic() - started
        live.update(_status("unguarded", calls, calls * CALL_COST, started,
                            f"KILLED by the wall clock after {seconds:g}s", "bold red"))
    return RunOutcome(calls, calls * CALL_COST, elapsed, "wall-clock kill")


def run_guarded(console: Console, target: Target, tenant_id: str, api_key: str, call_ms: int) -> RunOutcome:
    """The same loop, every call reserved against the agent's $1.00 budget first."""
    # No journal: the demo's tenant is throwaway, nothing should outlive it on disk.
    config = CyclesConfig(base_url=target.base_url, api_key=api_key, tenant=tenant_id, agent=AGENT,
                          journal_enabled=False)
    with CyclesClient(config) as client:
        llm: Callable[[str, int], float] = cycles(
            estimate=CALL_COST, actual=lambda _score: CALL_COST, action_kind="llm.completion",
            action_name="support-bot.llm", client=client)(simulated_llm)
        started = time.monotonic()
        calls = 0
        denied: BudgetExceededError | None = None
        with Live(console=console, refresh_per_second=10, transient=False) as live:
            for step in support_bot_steps():
                try:
                    llm(step, call_ms)
                except BudgetExceededError as exc:
                    denied = exc
                    break
                calls += 1
                live.update(_status("guarded", calls, calls * CALL_COST, started, step, "green"))
            elapsed = time.monotonic() - started
            live.update(_status("guarded", calls, calls * CALL_COST, started,
                                f"STOPPED: call {calls + 1} denied ({denied.error_code if denied else '?'})",
                                "bold green"))
        balances = client.get_balances(tenant=tenant_id, agent=AGENT)
    scope = f"tenant:{tenant_id}/agent:{AGENT}"
    server_spent = None
    if balances.is_success and isinstance(balances.body, dict):
        for balance in balances.body.get("balances", []):
            if balance.get("scope") == scope:
                server_spent = int(balance["spent"]["amount"])
    return RunOutcome(calls, calls * CALL_COST, elapsed, (denied.error_code or "BUDGET_EXCEEDED") if denied else "?",
                      calls + 1 if denied else None, server_spent)


def _projection(outcome: RunOutcome, hours: int) -> str:
    if outcome.denied_call is not None:
        return f"{dollars(outcome.spent)} (capped)"
    rate = outcome.spent / outcome.seconds if outcome.seconds > 0 else 0.0
    return dollars(int(rate * SECONDS_PER_HOUR * hours))


def summary(result: RunawayResult) -> Table:
    table = Table(title="The same runaway agent, twice")
    table.add_column("")
    table.add_column("without Cycles", style="red", justify="right")
    table.add_column("with Cycles ($1.00 agent budget)", style="green", justify="right")
    un, gu = result.unguarded, result.guarded
    table.add_row("LLM calls made", str(un.calls), str(gu.calls))
    table.add_row("money spent", dollars(un.spent), dollars(gu.spent))
    table.add_row("spent per the server", "-", dollars(gu.server_spent) if gu.server_spent is not None else "?")
    table.add_row("how it stopped", f"{un.stopped_by} after {un.seconds:.1f}s",
                  f"{gu.stopped_by} before call {gu.denied_call}")
    table.add_row("projected per hour", _projection(un, 1), _projection(gu, 1))
    table.add_row("projected per day", _projection(un, HOURS_PER_DAY), _projection(gu, HOURS_PER_DAY))
    return table


def run_runaway(console: Console, target: Target, call_ms: int, unguarded_seconds: float,
                guarded_call_ms: int | None = None) -> RunawayResult:
    """Both runs; `guarded_call_ms` (default: call_ms) lets a fast run skip the simulated latency."""
    console.print(f"[bold]A support bot: draft -> evaluate -> refine, and the evaluator never says 'good enough'."
                  f"[/bold]\nEach simulated LLM call costs {dollars(CALL_COST)} and takes {call_ms} ms.\n")
    console.print(f"[red]1. Without a budget authority[/red]: it runs until killed after {unguarded_seconds:g}s.")
    unguarded = run_unguarded(console, call_ms, unguarded_seconds)
    tenant = provision_tenant(target, {"": TENANT_BUDGET, f"/agent:{AGENT}": AGENT_BUDGET})
    console.print(f"\n[green]2. With Cycles[/green]: tenant {tenant.tenant_id}, a {dollars(AGENT_BUDGET)} budget at "
                  f"tenant:{tenant.tenant_id}/agent:{AGENT}, every call wrapped in @cycles.")
    guarded = run_guarded(console, target, tenant.tenant_id, tenant.api_key,
                          call_ms if guarded_call_ms is None else guarded_call_ms)
    result = RunawayResult(tenant.tenant_id, unguarded, guarded)
    console.print()
    console.print(summary(result))
    return result

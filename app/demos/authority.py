"""`cycles demo authority`: a support agent settles a billing dispute in four
steps. Reading the case needs no approval; the internal note and the CRM
update have toolset budgets; sending the customer an email has a toolset
budget of 0: it is not approved for autonomous execution. With the authority
the email is blocked before it runs and escalated; without it, it just runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cycles_sdk import BudgetExceededError, CyclesClient, CyclesConfig, cycles
from rich.console import Console
from rich.table import Table

from app.demos.sandbox import Target, provision_tenant

AGENT = "support-agent"
STEP_COST = 10_000                 # what one tool call is charged, in USD_MICROCENTS
TENANT_BUDGET = 100_000_000        # $1.00
TOOLSET_BUDGET = 1_000_000         # $0.01: plenty for the approved tools

RAN_UNGUARDED = "RAN (no reservation)"
ALLOWED = "ALLOWED"
BLOCKED = "BLOCKED -> escalated to a human"


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    toolset: str | None            # None: read-only, runs without a reservation


STEPS = [
    Step("read_case", "read the billing-dispute case", None),
    Step("append_note", "append an internal note", "notes"),
    Step("update_crm", "set the CRM status to 'refund pending'", "crm"),
    Step("send_email", "email the customer that a refund was issued", "email"),
]

# Toolset budgets: 0 for email means "not approved for autonomous execution".
TOOLSET_BUDGETS = {"notes": TOOLSET_BUDGET, "crm": TOOLSET_BUDGET, "email": 0}


@dataclass(frozen=True)
class StepOutcome:
    step: str
    executed: bool
    decision: str


@dataclass(frozen=True)
class AuthorityResult:
    tenant_id: str | None          # None for the run without the authority
    outcomes: list[StepOutcome]

    @property
    def executed(self) -> list[str]:
        return [outcome.step for outcome in self.outcomes if outcome.executed]

    @property
    def blocked(self) -> list[str]:
        return [outcome.step for outcome in self.outcomes if not outcome.executed]


def _perform(step: Step, performed: list[str]) -> str:
    """The simulated tool: records that it really ran (the side effect)."""
    performed.append(step.name)
    return step.name


def _show(console: Console, step: Step, outcome: StepOutcome) -> None:
    style = "red" if not outcome.executed else ("green" if outcome.decision == ALLOWED else "yellow")
    console.print(f"  {step.description:<48} [{style}]{outcome.decision}[/{style}]")


def run_without_authority(console: Console) -> AuthorityResult:
    console.print("[bold]Without a budget authority[/bold]: every step the agent decides on just runs.")
    performed: list[str] = []
    outcomes = []
    for step in STEPS:
        _perform(step, performed)
        outcome = StepOutcome(step.name, step.name in performed, RAN_UNGUARDED)
        _show(console, step, outcome)
        outcomes.append(outcome)
    return AuthorityResult(None, outcomes)


def run_with_authority(console: Console, target: Target) -> AuthorityResult:
    budgets = {"": TENANT_BUDGET}
    budgets.update({f"/agent:{AGENT}/toolset:{name}": amount for name, amount in TOOLSET_BUDGETS.items()})
    tenant = provision_tenant(target, budgets)
    console.print(f"[bold]With Cycles[/bold] (tenant {tenant.tenant_id}): toolset budgets notes and crm "
                  "$0.01 each, email $0.00 (not approved for autonomous execution).")
    config = CyclesConfig(base_url=target.base_url, api_key=tenant.api_key, tenant=tenant.tenant_id, agent=AGENT,
                          journal_enabled=False)
    performed: list[str] = []
    outcomes = []
    with CyclesClient(config) as client:
        for step in STEPS:
            if step.toolset is None:
                _perform(step, performed)
                outcome = StepOutcome(step.name, True, RAN_UNGUARDED)
            else:
                guarded: Callable[[Step, list[str]], str] = cycles(
                    estimate=STEP_COST, actual=lambda _name: STEP_COST, action_kind="tool.call",
                    action_name=step.name, toolset=step.toolset, client=client)(_perform)
                try:
                    guarded(step, performed)
                    decision = ALLOWED
                except BudgetExceededError:
                    # Denied at the reservation: the tool never ran. A human takes over.
                    decision = BLOCKED
                outcome = StepOutcome(step.name, step.name in performed, decision)
            _show(console, step, outcome)
            outcomes.append(outcome)
    return AuthorityResult(tenant.tenant_id, outcomes)


def tally(without: AuthorityResult, with_authority: AuthorityResult) -> Table:
    table = Table(title="Billing dispute: what the agent did")
    table.add_column("step")
    table.add_column("without Cycles", justify="center")
    table.add_column("with Cycles", justify="center")
    for step, plain, guarded in zip(STEPS, without.outcomes, with_authority.outcomes, strict=True):
        table.add_row(step.description, "[yellow]ran[/yellow]" if plain.executed else "[red]blocked[/red]",
                      ("[green]ran[/green]" if guarded.executed else "[red]blocked, escalated[/red]"))
    table.add_row("[bold]total[/bold]", f"{len(without.executed)} ran, {len(without.blocked)} blocked",
                  f"{len(with_authority.executed)} ran, {len(with_authority.blocked)} blocked")
    return table


def run_authority(console: Console, target: Target) -> tuple[AuthorityResult, AuthorityResult]:
    without = run_without_authority(console)
    console.print()
    with_authority = run_with_authority(console, target)
    console.print()
    console.print(tally(without, with_authority))
    return without, with_authority

"""The `cycles demo` commands."""

from __future__ import annotations

import click
from rich.console import Console

from app.demos.authority import run_authority
from app.demos.runaway import run_runaway
from app.demos.sandbox import DemoError, Target, demo_target, ledger_hint

FAST_UNGUARDED_SECONDS = 2.0

_base_url = click.option("--base-url", default=None,
                         help="A running server to use [default: start a throwaway embedded one].")
_admin_key = click.option("--admin-key", default=None,
                          help="The server's admin API key (with --base-url) [default: CYCLES_ADMIN_API_KEY].")
_keep = click.option("--keep", is_flag=True,
                     help="Keep the throwaway server's data directory, to inspect the ledger afterwards.")


@click.group()
def demo() -> None:
    """Self-contained demos: no LLM API key, no Docker."""


def _announce(console: Console, target: Target) -> None:
    where = "a throwaway embedded server" if target.data_dir is not None else "the server"
    console.print(f"[dim]Using {where} at {target.base_url}[/dim]\n")


@demo.command()
@_base_url
@_admin_key
@_keep
@click.option("--call-ms", type=click.IntRange(0, 10_000), default=30, show_default=True,
              help="How long one simulated LLM call takes.")
@click.option("--unguarded-seconds", type=click.FloatRange(0.1, 600), default=30.0, show_default=True,
              help="When the wall clock kills the unguarded run.")
@click.option("--fast", is_flag=True, help=f"CI mode: a {FAST_UNGUARDED_SECONDS:g}s unguarded run, 0-ms guarded calls.")
def runaway(base_url: str | None, admin_key: str | None, keep: bool, call_ms: int, unguarded_seconds: float,
            fast: bool) -> None:
    """A runaway support-bot loop, without and with a $1.00 budget."""
    console = Console()
    try:
        with demo_target(base_url, admin_key, keep) as target:
            _announce(console, target)
            result = run_runaway(console, target, call_ms,
                                 FAST_UNGUARDED_SECONDS if fast else unguarded_seconds, 0 if fast else None)
            console.print()
            console.print(ledger_hint(target, result.tenant_id), soft_wrap=True)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc


@demo.command()
@_base_url
@_admin_key
@_keep
def authority(base_url: str | None, admin_key: str | None, keep: bool) -> None:
    """A support agent's four steps, without and with action authority."""
    console = Console()
    try:
        with demo_target(base_url, admin_key, keep) as target:
            _announce(console, target)
            _, with_authority = run_authority(console, target)
            console.print()
            assert with_authority.tenant_id is not None
            console.print(ledger_hint(target, with_authority.tenant_id), soft_wrap=True)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from exc

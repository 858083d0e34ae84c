"""Operator commands: ``cycles tenant|key|budget ...``.

Each command is one call of the matching cycles.* admin function, so the CLI,
psql and the HTTP admin API share one implementation and one set of rules.
Output is a table for people, or the function's JSON with ``--json``. A
refused call prints ``error: CODE: message`` on stderr and exits with 1.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, LiteralString, TypeVar

import click
import psycopg
from rich.console import Console
from rich.table import Table

from app.cli_db import AdminCommandError, connect

INT64_MAX = 2**63 - 1
UNITS = ("USD_MICROCENTS", "TOKENS", "CREDITS", "RISK_POINTS")
POLICIES = ("REJECT", "ALLOW_IF_AVAILABLE", "ALLOW_WITH_OVERDRAFT")
OPERATIONS = ("CREDIT", "DEBIT", "RESET", "RESET_SPENT", "REPAY_DEBT")

F = TypeVar("F", bound=Callable[..., Any])


class Amount(click.ParamType[int]):
    """A non-negative 64-bit integer, checked before it reaches the database."""

    name = "amount"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value).replace("_", ""))
            except ValueError:
                self.fail(f"{value!r} is not an integer", param, ctx)
        if not 0 <= number <= INT64_MAX:
            self.fail(f"{value} is outside 0..{INT64_MAX}", param, ctx)
        return number


AMOUNT = Amount()


class Timestamp(click.ParamType[datetime]):
    """An ISO-8601 date-time; without an offset it is taken as UTC."""

    name = "timestamp"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            moment = value
        else:
            try:
                moment = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{value!r} is not an ISO-8601 date-time", param, ctx)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _sql_error_line(exc: psycopg.Error) -> str:
    """``CODE: message`` for a cycles error (its DETAIL names the code), else the first line."""
    diag = exc.diag
    if exc.sqlstate and exc.sqlstate.startswith("CY") and diag.message_detail:
        try:
            code = json.loads(diag.message_detail).get("error")
        except (ValueError, AttributeError):
            code = None
        if code:
            return f"{code}: {diag.message_primary}"
    lines = str(exc).strip().splitlines()
    return f"database error: {lines[0] if lines else type(exc).__name__}"


def _call(query: LiteralString, params: Mapping[str, Any]) -> Any:
    """Runs one cycles.* function and returns its JSON result."""
    with connect() as conn:
        try:
            row = conn.execute(query, {**params, "ctx": json.dumps({"request_id": f"cli_{uuid.uuid4().hex}"})})
            result = row.fetchone()
        except psycopg.Error as exc:
            raise AdminCommandError(_sql_error_line(exc)) from exc
    if result is None:
        raise AdminCommandError("the database returned no result")
    return result[0]


# Output ---------------------------------------------------------------------

def _console() -> Console:
    # Not a terminal (a pipe, a test): wide enough that ids and scopes never wrap.
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict) and set(value) == {"unit", "amount"}:
        return f"{value['amount']:,}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# Columns whose values may be long lists: they wrap, so ids and scopes never have to.
WRAPPING_COLUMNS = frozenset({"permissions", "value"})


def _print_table(title: str, table: Table) -> Console:
    # The title is its own line: a table title would wrap at the table's width.
    console = _console()
    console.print(title, style="bold", markup=False, highlight=False)
    console.print(table)
    return console


# The order fields are shown in (jsonb keeps keys sorted by length, not by meaning).
FIELD_ORDER = (
    "tenant_id", "key_id", "ledger_id", "scope", "unit", "name", "status", "key_secret", "key_prefix",
    "permissions", "scope_filter", "description", "parent_tenant_id", "allocated", "remaining", "reserved",
    "spent", "debt", "overdraft_limit", "is_over_limit", "commit_overage_policy", "default_commit_overage_policy",
    "default_reservation_ttl_ms", "max_reservation_ttl_ms", "max_reservation_extensions", "metadata",
    "created_at", "updated_at", "last_used_at", "expires_at", "suspended_at", "revoked_at", "revoked_reason",
    "closed_at")


def _show_object(title: str, obj: Mapping[str, Any]) -> None:
    table = Table(show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    rank = {field: position for position, field in enumerate(FIELD_ORDER)}
    for field in sorted(obj, key=lambda name: (rank.get(name, len(rank)), name)):
        if field != "scope_path":  # always equal to scope
            table.add_row(field, _text(obj[field]))
    _print_table(title, table)


def _show_rows(title: str, rows: list[Mapping[str, Any]], columns: list[str], page: Mapping[str, Any]) -> None:
    table = Table()
    for column in columns:
        table.add_column(column, no_wrap=column not in WRAPPING_COLUMNS)
    for row in rows:
        table.add_row(*(_text(row.get(column)) for column in columns))
    console = _print_table(f"{title} ({len(rows)})", table)
    if page.get("has_more"):
        console.print(f"more results: --cursor {page['next_cursor']}", markup=False, highlight=False)


def _emit(result: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        render(result)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the JSON result instead of a table.")(function)


def _metadata(pairs: tuple[str, ...]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[key] = value
    return metadata


# Tenants ---------------------------------------------------------------------

TENANT_COLUMNS = ["tenant_id", "name", "status", "parent_tenant_id", "default_commit_overage_policy", "created_at"]


def _show_tenant(tenant: Mapping[str, Any]) -> None:
    _show_object(f"tenant {tenant['tenant_id']}", tenant)


@click.group()
def tenant() -> None:
    """Create, list, show, update, suspend, reactivate, close and bulk-change tenants."""


@tenant.command(name="create")
@click.argument("tenant_id")
@click.argument("name")
@click.option("--parent", "parent_tenant_id", help="Parent tenant id.")
@click.option("--overage-policy", type=click.Choice(POLICIES), help="Default commit overage policy.")
@click.option("--default-ttl-ms", type=int, help="Default reservation TTL (1000..86400000).")
@click.option("--max-ttl-ms", type=int, help="Maximum reservation TTL (1000..86400000).")
@click.option("--max-extensions", type=int, help="Maximum extensions per reservation.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Metadata entry (repeatable).")
@json_option
def tenant_create(tenant_id: str, name: str, parent_tenant_id: str | None, overage_policy: str | None,
                  default_ttl_ms: int | None, max_ttl_ms: int | None, max_extensions: int | None,
                  metadata: tuple[str, ...], as_json: bool) -> None:
    """Create a tenant (repeating it with the same name is harmless)."""
    options: dict[str, Any] = {
        "parent_tenant_id": parent_tenant_id, "default_commit_overage_policy": overage_policy,
        "default_reservation_ttl_ms": default_ttl_ms, "max_reservation_ttl_ms": max_ttl_ms,
        "max_reservation_extensions": max_extensions}
    options = {k: v for k, v in options.items() if v is not None}
    if metadata:
        options["metadata"] = _metadata(metadata)
    result = _call("SELECT cycles.create_tenant(p_tenant_id => %(tenant_id)s, p_name => %(name)s, "
                   "p_options => %(options)s::jsonb, p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id, "name": name, "options": json.dumps(options)})
    _emit(result, as_json, _show_tenant)


@tenant.command(name="list")
@click.option("--status", type=click.Choice(["ACTIVE", "SUSPENDED", "CLOSED"]))
@click.option("--parent", "parent_tenant_id", help="Only children of this tenant.")
@click.option("--search", help="Case-insensitive substring of id or name.")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def tenant_list(status: str | None, parent_tenant_id: str | None, search: str | None, limit: int,
                cursor: str | None, as_json: bool) -> None:
    """List tenants, newest first."""
    result = _call("SELECT cycles.list_tenants(p_status => %(status)s, p_parent_tenant_id => %(parent)s, "
                   "p_search => %(search)s, p_limit => %(limit)s, p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)",
                   {"status": status, "parent": parent_tenant_id, "search": search, "limit": limit,
                    "cursor": cursor})
    _emit(result, as_json, lambda page: _show_rows("tenants", page["tenants"], TENANT_COLUMNS, page))


@tenant.command(name="show")
@click.argument("tenant_id")
@json_option
def tenant_show(tenant_id: str, as_json: bool) -> None:
    """Show one tenant."""
    result = _call("SELECT cycles.get_tenant(p_tenant_id => %(tenant_id)s, p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id})
    _emit(result, as_json, _show_tenant)


@tenant.command(name="suspend")
@click.argument("tenant_id")
@json_option
def tenant_suspend(tenant_id: str, as_json: bool) -> None:
    """Suspend a tenant: new reservations are refused."""
    result = _call("SELECT cycles.suspend_tenant(p_tenant_id => %(tenant_id)s, p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id})
    _emit(result, as_json, _show_tenant)


@tenant.command(name="reactivate")
@click.argument("tenant_id")
@json_option
def tenant_reactivate(tenant_id: str, as_json: bool) -> None:
    """Reactivate a suspended tenant."""
    result = _call("SELECT cycles.reactivate_tenant(p_tenant_id => %(tenant_id)s, p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id})
    _emit(result, as_json, _show_tenant)


@tenant.command(name="close")
@click.argument("tenant_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def tenant_close(tenant_id: str, yes: bool, as_json: bool) -> None:
    """Close a tenant for good: releases its reservations, closes its budgets, revokes its keys."""
    if not yes:
        click.confirm(f"Close tenant {tenant_id}? This cannot be undone", abort=True, err=True)
    result = _call("SELECT cycles.close_tenant(p_tenant_id => %(tenant_id)s, p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id})
    _emit(result, as_json, _show_tenant)


# API keys --------------------------------------------------------------------

KEY_COLUMNS = ["key_id", "name", "key_prefix", "status", "permissions", "expires_at"]


@click.group()
def key() -> None:
    """Create, list, show, update and revoke API keys."""


@key.command(name="create")
@click.argument("tenant_id")
@click.argument("name")
@click.option("--permission", "permissions", multiple=True,
              help="Permission to grant (repeatable) [default: the ten tenant permissions].")
@click.option("--expires-at", type=Timestamp(), help="Expiry, ISO-8601; UTC unless an offset is given "
              "[default: in 90 days].")
@click.option("--description")
@click.option("--scope-filter", multiple=True, help="Scope the key is limited to (repeatable).")
@json_option
def key_create(tenant_id: str, name: str, permissions: tuple[str, ...], expires_at: datetime | None,
               description: str | None, scope_filter: tuple[str, ...], as_json: bool) -> None:
    """Create an API key. Its secret is printed once and cannot be shown again."""
    options: dict[str, Any] = {}
    if description is not None:
        options["description"] = description
    if scope_filter:
        options["scope_filter"] = list(scope_filter)
    result = _call(
        "SELECT cycles.create_api_key(p_tenant_id => %(tenant_id)s, p_name => %(name)s, "
        "p_permissions => %(permissions)s::text[], p_expires_at => %(expires_at)s::timestamptz, "
        "p_options => %(options)s::jsonb, p_ctx => %(ctx)s::jsonb)",
        {"tenant_id": tenant_id, "name": name, "permissions": list(permissions) or None,
         "expires_at": expires_at, "options": json.dumps(options)})

    def render(created: Mapping[str, Any]) -> None:
        _show_object(f"API key {created['key_id']}", created)
        _console().print("Store key_secret now: it is shown only this once.", style="bold", markup=False)

    _emit(result, as_json, render)


@key.command(name="list")
@click.argument("tenant_id")
@click.option("--status", type=click.Choice(["ACTIVE", "REVOKED", "EXPIRED"]))
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def key_list(tenant_id: str, status: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """List a tenant's API keys (never their secrets)."""
    result = _call("SELECT cycles.list_api_keys(p_tenant_id => %(tenant_id)s, p_status => %(status)s, "
                   "p_limit => %(limit)s, p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id, "status": status, "limit": limit, "cursor": cursor})
    _emit(result, as_json, lambda page: _show_rows("API keys", page["keys"], KEY_COLUMNS, page))


@key.command(name="revoke")
@click.argument("key_id")
@click.option("--reason", help="Why (kept with the key, at most 512 characters).")
@json_option
def key_revoke(key_id: str, reason: str | None, as_json: bool) -> None:
    """Revoke an API key, permanently."""
    result = _call("SELECT cycles.revoke_api_key(p_key_id => %(key_id)s, p_reason => %(reason)s, "
                   "p_ctx => %(ctx)s::jsonb)", {"key_id": key_id, "reason": reason})
    _emit(result, as_json, lambda revoked: _show_object(f"API key {revoked['key_id']}", revoked))


# Budgets ---------------------------------------------------------------------

BUDGET_COLUMNS = ["scope", "unit", "status", "allocated", "remaining", "reserved", "spent", "debt",
                  "overdraft_limit", "is_over_limit"]


def _show_budget(budget: Mapping[str, Any]) -> None:
    _show_object(f"budget {budget['scope']} {budget['unit']}", budget)


scope_argument = click.argument("scope")
unit_argument = click.argument("unit", type=click.Choice(UNITS))


@click.group()
def budget() -> None:
    """Create, fund, freeze, unfreeze, close, show and list budgets."""


@budget.command(name="create")
@scope_argument
@unit_argument
@click.argument("allocated", type=AMOUNT)
@click.option("--overdraft-limit", type=AMOUNT, default=0, show_default=True)
@click.option("--overage-policy", type=click.Choice(POLICIES), help="Commit overage policy [default: the tenant's].")
@json_option
def budget_create(scope: str, unit: str, allocated: int, overdraft_limit: int, overage_policy: str | None,
                  as_json: bool) -> None:
    """Create the budget of SCOPE in UNIT with ALLOCATED to spend."""
    result = _call("SELECT cycles.create_budget(p_scope => %(scope)s, p_unit => %(unit)s, "
                   "p_allocated => %(allocated)s::bigint, p_overdraft_limit => %(overdraft)s::bigint, "
                   "p_commit_overage_policy => %(policy)s, p_ctx => %(ctx)s::jsonb)",
                   {"scope": scope, "unit": unit, "allocated": allocated, "overdraft": overdraft_limit,
                    "policy": overage_policy})
    _emit(result, as_json, _show_budget)


@budget.command(name="fund")
@scope_argument
@unit_argument
@click.argument("operation", type=click.Choice(OPERATIONS))
@click.argument("amount", type=AMOUNT)
@click.option("--spent", type=AMOUNT, help="RESET_SPENT only: the new spent [default: 0].")
@click.option("--reason", help="Why (kept in the ledger, at most 512 characters).")
@click.option("--idempotency-key", help="Retry-safe key [default: a new one per invocation].")
@json_option
def budget_fund(scope: str, unit: str, operation: str, amount: int, spent: int | None, reason: str | None,
                idempotency_key: str | None, as_json: bool) -> None:
    """Apply a funding OPERATION of AMOUNT to a budget."""
    result = _call("SELECT cycles.fund_budget(p_scope => %(scope)s, p_unit => %(unit)s, "
                   "p_operation => %(operation)s, p_amount => %(amount)s::bigint, "
                   "p_idempotency_key => %(key)s, p_spent => %(spent)s::bigint, p_reason => %(reason)s, "
                   "p_ctx => %(ctx)s::jsonb)",
                   {"scope": scope, "unit": unit, "operation": operation, "amount": amount,
                    "key": idempotency_key or f"cli-{uuid.uuid4().hex}", "spent": spent, "reason": reason})

    def render(response: Mapping[str, Any]) -> None:
        table = Table()
        for column in ("", "previous", "new"):
            table.add_column(column, justify="left" if column == "" else "right", no_wrap=True)
        for field in ("allocated", "remaining", "spent", "debt"):
            if f"new_{field}" in response:
                table.add_row(field, _text(response.get(f"previous_{field}")), _text(response[f"new_{field}"]))
        console = _print_table(f"{response['operation']} {scope} {unit}", table)
        console.print(f"at {response.get('timestamp', '')}", markup=False, highlight=False)

    _emit(result, as_json, render)


@budget.command(name="freeze")
@scope_argument
@unit_argument
@click.option("--reason")
@json_option
def budget_freeze(scope: str, unit: str, reason: str | None, as_json: bool) -> None:
    """Freeze a budget: no reservations or funding until unfrozen."""
    result = _call("SELECT cycles.freeze_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_reason => %(reason)s, "
                   "p_ctx => %(ctx)s::jsonb)", {"scope": scope, "unit": unit, "reason": reason})
    _emit(result, as_json, _show_budget)


@budget.command(name="unfreeze")
@scope_argument
@unit_argument
@click.option("--reason")
@json_option
def budget_unfreeze(scope: str, unit: str, reason: str | None, as_json: bool) -> None:
    """Unfreeze a frozen budget."""
    result = _call("SELECT cycles.unfreeze_budget(p_scope => %(scope)s, p_unit => %(unit)s, "
                   "p_reason => %(reason)s, p_ctx => %(ctx)s::jsonb)",
                   {"scope": scope, "unit": unit, "reason": reason})
    _emit(result, as_json, _show_budget)


@budget.command(name="close")
@scope_argument
@unit_argument
@click.option("--reason")
@json_option
def budget_close(scope: str, unit: str, reason: str | None, as_json: bool) -> None:
    """Close a budget for good (refused while reservations hold part of it)."""
    result = _call("SELECT cycles.close_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_reason => %(reason)s, "
                   "p_ctx => %(ctx)s::jsonb)", {"scope": scope, "unit": unit, "reason": reason})
    _emit(result, as_json, _show_budget)


@budget.command(name="show")
@scope_argument
@unit_argument
@json_option
def budget_show(scope: str, unit: str, as_json: bool) -> None:
    """Show one budget."""
    result = _call("SELECT cycles.get_budget(p_scope => %(scope)s, p_unit => %(unit)s, p_ctx => %(ctx)s::jsonb)",
                   {"scope": scope, "unit": unit})
    _emit(result, as_json, _show_budget)


@budget.command(name="list")
@click.argument("tenant_id", required=False)
@click.option("--scope-prefix", help="Only scopes starting with this.")
@click.option("--unit", type=click.Choice(UNITS))
@click.option("--status", type=click.Choice(["ACTIVE", "FROZEN", "CLOSED"]))
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def budget_list(tenant_id: str | None, scope_prefix: str | None, unit: str | None, status: str | None, limit: int,
                cursor: str | None, as_json: bool) -> None:
    """List budgets in scope order (of one tenant, or of all)."""
    result = _call("SELECT cycles.list_budgets(p_tenant_id => %(tenant_id)s, p_scope_prefix => %(prefix)s, "
                   "p_unit => %(unit)s, p_status => %(status)s, p_limit => %(limit)s, p_cursor => %(cursor)s, "
                   "p_ctx => %(ctx)s::jsonb)",
                   {"tenant_id": tenant_id, "prefix": scope_prefix, "unit": unit, "status": status,
                    "limit": limit, "cursor": cursor})
    _emit(result, as_json, lambda page: _show_rows("budgets", page["ledgers"], BUDGET_COLUMNS, page))


# Key, tenant and budget updates; bulk actions --------------------------------

@key.command(name="show")
@click.argument("key_id")
@json_option
def key_show(key_id: str, as_json: bool) -> None:
    """Show one API key (never its secret)."""
    result = _call("SELECT cycles.get_api_key(p_key_id => %(key_id)s, p_ctx => %(ctx)s::jsonb)", {"key_id": key_id})
    _emit(result, as_json, lambda shown: _show_object(f"API key {shown['key_id']}", shown))


@key.command(name="update")
@click.argument("key_id")
@click.option("--name")
@click.option("--description")
@click.option("--permission", "permissions", multiple=True, help="Replaces the permission set (repeatable).")
@click.option("--scope-filter", multiple=True, help="Replaces the scope filter (repeatable).")
@click.option("--clear-scope-filter", is_flag=True, help="Remove the scope filter.")
@click.option("--metadata", "metadata_pairs", multiple=True, metavar="KEY=VALUE", help="Replaces the metadata.")
@json_option
def key_update(key_id: str, name: str | None, description: str | None, permissions: tuple[str, ...],
               scope_filter: tuple[str, ...], clear_scope_filter: bool, metadata_pairs: tuple[str, ...],
               as_json: bool) -> None:
    """Change an active key's name, description, permissions, scope filter or metadata."""
    patch: dict[str, Any] = {}
    if name is not None:
        patch["name"] = name
    if description is not None:
        patch["description"] = description
    if permissions:
        patch["permissions"] = list(permissions)
    if scope_filter or clear_scope_filter:
        patch["scope_filter"] = list(scope_filter)
    if metadata_pairs:
        patch["metadata"] = _metadata(metadata_pairs)
    result = _call("SELECT cycles.update_api_key(p_key_id => %(key_id)s, p_patch => %(patch)s::jsonb, "
                   "p_ctx => %(ctx)s::jsonb)", {"key_id": key_id, "patch": json.dumps(patch)})
    _emit(result, as_json, lambda updated: _show_object(f"API key {updated['key_id']}", updated))


@tenant.command(name="update")
@click.argument("tenant_id")
@click.option("--name")
@click.option("--overage-policy", type=click.Choice(POLICIES), help="default_commit_overage_policy.")
@click.option("--default-ttl-ms", type=click.IntRange(1000, 86_400_000))
@click.option("--max-ttl-ms", type=click.IntRange(1000, 86_400_000))
@click.option("--max-extensions", type=click.IntRange(0, 10_000))
@click.option("--metadata", "metadata_pairs", multiple=True, metavar="KEY=VALUE", help="Replaces the metadata.")
@json_option
def tenant_update(tenant_id: str, name: str | None, overage_policy: str | None, default_ttl_ms: int | None,
                  max_ttl_ms: int | None, max_extensions: int | None, metadata_pairs: tuple[str, ...],
                  as_json: bool) -> None:
    """Change a tenant's name, defaults or metadata."""
    patch: dict[str, Any] = {
        field: value for field, value in (
            ("name", name), ("default_commit_overage_policy", overage_policy),
            ("default_reservation_ttl_ms", default_ttl_ms), ("max_reservation_ttl_ms", max_ttl_ms),
            ("max_reservation_extensions", max_extensions)) if value is not None}
    if metadata_pairs:
        patch["metadata"] = _metadata(metadata_pairs)
    result = _call("SELECT cycles.update_tenant(p_tenant_id => %(tenant_id)s, p_patch => %(patch)s::jsonb, "
                   "p_ctx => %(ctx)s::jsonb)", {"tenant_id": tenant_id, "patch": json.dumps(patch)})
    _emit(result, as_json, _show_tenant)


BULK_COLUMNS = ["outcome", "id", "error_code", "message", "reason"]


def _show_bulk(result: Mapping[str, Any]) -> None:
    rows: list[Mapping[str, Any]] = [
        {"outcome": outcome, **row} for outcome in ("succeeded", "failed", "skipped") for row in result[outcome]]
    _show_rows(f"{result['action']}: {result['total_matched']} matched", rows, BULK_COLUMNS, {})


def _idempotency_key(value: str | None) -> str:
    return value or f"cli-{uuid.uuid4()}"


@tenant.command(name="bulk")
@click.argument("action", type=click.Choice(["SUSPEND", "REACTIVATE", "CLOSE"]))
@click.option("--status", type=click.Choice(["ACTIVE", "SUSPENDED", "CLOSED"]))
@click.option("--parent", "parent_tenant_id")
@click.option("--search", help="Case-insensitive substring of tenant_id or name.")
@click.option("--expected-count", type=click.IntRange(0), help="Refuse (COUNT_MISMATCH) unless this many match.")
@click.option("--idempotency-key", help="Replays within 15 minutes return the first answer [default: new].")
@json_option
def tenant_bulk(action: str, status: str | None, parent_tenant_id: str | None, search: str | None,
                expected_count: int | None, idempotency_key: str | None, as_json: bool) -> None:
    """Apply SUSPEND, REACTIVATE or CLOSE to every tenant the filter matches (at most 500)."""
    bulk_filter = {name: value for name, value in (
        ("status", status), ("parent_tenant_id", parent_tenant_id), ("search", search)) if value is not None}
    result = _call("SELECT cycles.bulk_tenant_action(p_filter => %(filter)s::jsonb, p_action => %(action)s, "
                   "p_idempotency_key => %(key)s, p_expected_count => %(expected)s, p_ctx => %(ctx)s::jsonb)",
                   {"filter": json.dumps(bulk_filter), "action": action, "key": _idempotency_key(idempotency_key),
                    "expected": expected_count})
    _emit(result, as_json, _show_bulk)


@budget.command(name="bulk")
@click.argument("operation", type=click.Choice(OPERATIONS))
@click.argument("tenant_id")
@click.option("--amount", type=AMOUNT, required=True)
@click.option("--amount-unit", type=click.Choice(UNITS), help="Unit of the amount [default: each budget's own].")
@click.option("--spent", type=AMOUNT, help="RESET_SPENT only: the new spent [default: 0].")
@click.option("--scope-prefix")
@click.option("--unit", type=click.Choice(UNITS), help="Only budgets of this unit.")
@click.option("--status", type=click.Choice(["ACTIVE", "FROZEN", "CLOSED"]))
@click.option("--reason")
@click.option("--expected-count", type=click.IntRange(0), help="Refuse (COUNT_MISMATCH) unless this many match.")
@click.option("--idempotency-key", help="Replays within 15 minutes return the first answer [default: new].")
@json_option
def budget_bulk(operation: str, tenant_id: str, amount: int, amount_unit: str | None, spent: int | None,
                scope_prefix: str | None, unit: str | None, status: str | None, reason: str | None,
                expected_count: int | None, idempotency_key: str | None, as_json: bool) -> None:
    """Apply one funding operation to every budget of a tenant the filter matches (at most 500)."""
    bulk_filter = {name: value for name, value in (
        ("tenant_id", tenant_id), ("scope_prefix", scope_prefix), ("unit", unit), ("status", status))
        if value is not None}
    result = _call("SELECT cycles.bulk_budget_action(p_filter => %(filter)s::jsonb, p_action => %(action)s, "
                   "p_idempotency_key => %(key)s, p_amount => %(amount)s, p_unit => %(unit)s, p_spent => %(spent)s, "
                   "p_expected_count => %(expected)s, p_reason => %(reason)s, p_ctx => %(ctx)s::jsonb)",
                   {"filter": json.dumps(bulk_filter), "action": operation, "key": _idempotency_key(idempotency_key),
                    "amount": amount, "unit": amount_unit, "spent": spent, "expected": expected_count,
                    "reason": reason})
    _emit(result, as_json, _show_bulk)


# Audit log -------------------------------------------------------------------

AUDIT_COLUMNS = ["timestamp", "tenant_id", "operation", "status", "error_code", "resource_id", "key_id",
                 "request_id"]


@click.group()
def audit() -> None:
    """Read the audit log of admin requests."""


@audit.command(name="list")
@click.option("--tenant", "tenant_id", help="Tenant id, or __admin__ / __unauth__.")
@click.option("--key", "key_id")
@click.option("--operation", help="Operation(s), comma-separated (e.g. createBudget,fundBudget).")
@click.option("--error-code", help="Error code(s), comma-separated.")
@click.option("--status-min", type=click.IntRange(100, 599))
@click.option("--status-max", type=click.IntRange(100, 599))
@click.option("--request-id")
@click.option("--since", "from_", help="ISO-8601 lower bound.")
@click.option("--until", "to", help="ISO-8601 upper bound.")
@click.option("--search")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def audit_list(tenant_id: str | None, key_id: str | None, operation: str | None, error_code: str | None,
               status_min: int | None, status_max: int | None, request_id: str | None, from_: str | None,
               to: str | None, search: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """List audit entries, newest first."""
    audit_filter = {name: value for name, value in (
        ("tenant_id", tenant_id), ("key_id", key_id), ("operation", operation), ("error_code", error_code),
        ("status_min", status_min), ("status_max", status_max), ("request_id", request_id), ("from", from_),
        ("to", to), ("search", search)) if value is not None}
    result = _call("SELECT cycles.list_audit_logs(p_filter => %(filter)s::jsonb, p_limit => %(limit)s, "
                   "p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)",
                   {"filter": json.dumps(audit_filter), "limit": limit, "cursor": cursor})
    _emit(result, as_json, lambda page: _show_rows("audit entries", page["logs"], AUDIT_COLUMNS, page))


def register(cli: click.Group) -> None:
    """Adds the tenant, key, budget and audit groups to the ``cycles`` command."""
    for group in (tenant, key, budget, audit):
        cli.add_command(group)

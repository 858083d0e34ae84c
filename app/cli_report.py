"""``cycles report ...`` and ``cycles ledger ...``: finance and audit from the command line.

Each report is one query of a cycles_reporting view or function (the same
SELECT a finance team runs in psql), printed as a table, or as CSV or JSON
with ``--format``. ``cycles ledger export`` streams the whole ledger (or a
tenant's, or a time range) through a server-side cursor as CSV or JSON
Lines, with a progress bar on stderr when writing to a file.
``cycles ledger verify`` and ``cycles report reconcile`` exit with status 1
when they find something wrong, so a cron job or CI step can alert on them.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, LiteralString, TextIO

import click
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.cli_admin import UNITS, Timestamp, _console, _sql_error_line
from app.cli_db import AdminCommandError, connect

TIMESTAMP = Timestamp()
DIMENSIONS = ("tenant", "scope", "unit", "action_kind", "action_name", "workspace", "app", "workflow", "agent",
              "toolset")
MEASURES = ["spent", "debt", "charged", "reserved", "released", "expired", "charges"]
EXPORT_BATCH = 5000


class Month(click.ParamType[date]):
    """A calendar month, YYYY-MM."""

    name = "month"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value.replace(day=1)
        try:
            return datetime.strptime(str(value), "%Y-%m").date()
        except ValueError:
            self.fail(f"{value!r} is not a month (YYYY-MM)", param, ctx)


def _dimensions(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise click.BadParameter(f"unknown dimension {unknown[0]!r}: expected {', '.join(DIMENSIONS)}",
                                 param_hint="--by")
    return names


@contextmanager
def _connection() -> Iterator[psycopg.Connection[Any]]:
    with connect() as conn:
        try:
            yield conn
        except psycopg.Error as exc:
            raise AdminCommandError(_sql_error_line(exc)) from exc


def _query(query: LiteralString, params: dict[str, Any]) -> list[dict[str, Any]]:
    with _connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


# Output ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON/CSV-friendly value: timestamps in ISO-8601 UTC, exact decimals as integers when whole."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _write_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else (json.dumps(row[c]) if isinstance(row[c], dict | list)
                                                    else _plain(row[c])) for c in columns])


def _emit(title: str, rows: list[dict[str, Any]], columns: Sequence[str], output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps([{c: _plain(r[c]) for c in columns} for r in rows], indent=2))
    elif output_format == "csv":
        buffer = io.StringIO()
        _write_csv(rows, columns, buffer)
        click.echo(buffer.getvalue(), nl=False)
    else:
        table = Table()
        for column in columns:
            table.add_column(column, no_wrap=True, justify="right" if column in MEASURES else "left")
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in columns))
        console = _console()
        console.print(f"{title} ({len(rows)})", style="bold", markup=False, highlight=False)
        console.print(table)


def format_option(function: Any) -> Any:
    return click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]), default="table",
                        show_default=True, help="Output format.")(function)


def range_options(function: Any) -> Any:
    function = click.option("--to", "end", type=TIMESTAMP, required=True,
                            help="End of the range, exclusive (ISO-8601; UTC without an offset).")(function)
    return click.option("--from", "start", type=TIMESTAMP, required=True,
                        help="Start of the range, inclusive (ISO-8601; UTC without an offset).")(function)


# cycles report ----------------------------------------------------------------------


@click.group()
def report() -> None:
    """Spend, top spenders, utilisation, denials, balances, statements, reconciliation."""


@report.command(name="spend")
@range_options
@click.option("--bucket", type=click.Choice(["hour", "day", "month", "total"]), default="day", show_default=True)
@click.option("--by", "group_by", default="tenant", show_default=True,
              help=f"Comma-separated dimensions: {', '.join(DIMENSIONS)}. With scope, by budget; "
                   "otherwise each operation counts once.")
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--unit", type=click.Choice(UNITS), help="Only this unit.")
@click.option("--scope", "scope_prefix", help="Only this scope and below.")
@click.option("--tz", "time_zone", default="UTC", show_default=True, help="Time zone of the buckets.")
@format_option
def report_spend(start: datetime, end: datetime, bucket: str, group_by: str, tenant_id: str | None,
                 unit: str | None, scope_prefix: str | None, time_zone: str, output_format: str) -> None:
    """Spend, debt and holds per time bucket and dimension."""
    dims = _dimensions(group_by)
    rows = _query("SELECT * FROM cycles_reporting.spend(p_from => %(start)s, p_to => %(end)s, p_bucket => %(bucket)s,"
                  " p_group_by => %(dims)s, p_tenant_id => %(tenant)s, p_unit => %(unit)s,"
                  " p_scope_prefix => %(prefix)s, p_time_zone => %(tz)s)",
                  {"start": start, "end": end, "bucket": bucket, "dims": dims, "tenant": tenant_id, "unit": unit,
                   "prefix": scope_prefix, "tz": time_zone})
    columns = ["bucket_start", *[("tenant_id" if d == "tenant" else d) for d in DIMENSIONS
                                 if d in dims or d == "unit"], *MEASURES]
    _emit(f"spend per {bucket}", rows, columns, output_format)


@report.command(name="top")
@range_options
@click.option("--by", "dimension", type=click.Choice([d for d in DIMENSIONS if d != "unit"]), default="agent",
              show_default=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--unit", type=click.Choice(UNITS), help="Only this unit.")
@format_option
def report_top(start: datetime, end: datetime, dimension: str, limit: int, tenant_id: str | None, unit: str | None,
               output_format: str) -> None:
    """The largest spenders in a range, per unit."""
    rows = _query("SELECT * FROM cycles_reporting.top_spenders(p_from => %(start)s, p_to => %(end)s,"
                  " p_dimension => %(dim)s, p_limit => %(limit)s, p_tenant_id => %(tenant)s, p_unit => %(unit)s)",
                  {"start": start, "end": end, "dim": dimension, "limit": limit, "tenant": tenant_id, "unit": unit})
    _emit(f"top {dimension} spenders", rows, ["unit", "rank", "tenant_id", "key", "charged", "charges", "share"],
          output_format)


@report.command(name="utilisation")
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--over-limit", is_flag=True, help="Only budgets over their overdraft limit.")
@click.option("--with-debt", is_flag=True, help="Only budgets with debt.")
@format_option
def report_utilisation(tenant_id: str | None, over_limit: bool, with_debt: bool, output_format: str) -> None:
    """Every budget now: counters, utilisation, debt and over-limit flags."""
    rows = _query("SELECT * FROM cycles_reporting.utilisation"
                  " WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
                  " AND (NOT %(over)s OR is_over_limit) AND (NOT %(debt)s OR has_debt)"
                  " ORDER BY scope COLLATE \"C\", unit",
                  {"tenant": tenant_id, "over": over_limit, "debt": with_debt})
    _emit("utilisation", rows, ["tenant_id", "scope", "unit", "status", "allocated", "spent", "reserved", "debt",
                                "remaining", "utilisation", "debt_utilisation", "has_debt", "is_over_limit"],
          output_format)


@report.command(name="denials")
@range_options
@click.option("--bucket", type=click.Choice(["hour", "day", "month", "total"]), default="day", show_default=True)
@click.option("--tenant", "tenant_id", help="Only this tenant.")
@click.option("--tz", "time_zone", default="UTC", show_default=True, help="Time zone of the buckets.")
@format_option
def report_denials(start: datetime, end: datetime, bucket: str, tenant_id: str | None, time_zone: str,
                   output_format: str) -> None:
    """Denials and expiries over time, from the event outbox."""
    rows = _query("SELECT * FROM cycles_reporting.denials_and_expiries(p_from => %(start)s, p_to => %(end)s,"
                  " p_bucket => %(bucket)s, p_tenant_id => %(tenant)s, p_time_zone => %(tz)s)",
                  {"start": start, "end": end, "bucket": bucket, "tenant": tenant_id, "tz": time_zone})
    _emit(f"denials and expiries per {bucket}", rows,
          ["bucket_start", "tenant_id", "event_type", "reason_code", "unit", "events", "amount"], output_format)


@report.command(name="balance")
@click.argument("scope")
@click.argument("unit", type=click.Choice(UNITS))
@click.option("--at", "moment", type=TIMESTAMP, required=True, help="The instant (ISO-8601; UTC without an offset).")
@format_option
def report_balance(scope: str, unit: str, moment: datetime, output_format: str) -> None:
    """A budget's counters as they stood at an instant, rebuilt from the ledger."""
    rows = _query("SELECT * FROM cycles_reporting.balance_as_of(p_scope => %(scope)s, p_unit => %(unit)s,"
                  " p_at => %(at)s)", {"scope": scope, "unit": unit, "at": moment})
    _emit(f"balance of {scope} {unit}", rows, ["scope", "unit", "as_of", "allocated", "spent", "reserved", "debt",
                                               "remaining", "entry_id", "entry_created_at"], output_format)


STATEMENT_COLUMNS = [
    "scope", "unit", "opening_allocated", "opening_spent", "opening_reserved", "opening_debt", "opening_remaining",
    "funded", "spent", "debt", "spent_adjusted", "debt_repaid", "reserved", "settled", "released", "expired",
    "charges", "closing_allocated", "closing_spent", "closing_reserved", "closing_debt", "closing_remaining",
    "balanced"]


@report.command(name="statement")
@click.argument("tenant_id")
@click.argument("month", type=Month())
@click.option("--tz", "time_zone", default="UTC", show_default=True, help="Time zone of the month's bounds.")
@format_option
def report_statement(tenant_id: str, month: date, time_zone: str, output_format: str) -> None:
    """A tenant's monthly statement: opening, funding, spend by scope, closing, and the check."""
    with _connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        params = {"tenant": tenant_id, "month": month, "tz": time_zone}
        lines = cur.execute("SELECT * FROM cycles_reporting.statement(p_tenant_id => %(tenant)s,"
                            " p_month => %(month)s, p_time_zone => %(tz)s)", params).fetchall()
        funding = cur.execute("SELECT * FROM cycles_reporting.statement_funding(p_tenant_id => %(tenant)s,"
                              " p_month => %(month)s, p_time_zone => %(tz)s)", params).fetchall()
    unbalanced = [line for line in lines if not line["balanced"]]
    if output_format == "json":
        click.echo(json.dumps({
            "tenant_id": tenant_id, "month": month.strftime("%Y-%m"), "time_zone": time_zone,
            "balanced": not unbalanced,
            "lines": [{c: _plain(line[c]) for c in STATEMENT_COLUMNS} for line in lines],
            "funding": [{k: _plain(v) for k, v in row.items()} for row in funding]}, indent=2))
    elif output_format == "csv":
        _emit("statement", lines, STATEMENT_COLUMNS, "csv")
    else:
        title = f"statement of {tenant_id} for {month:%Y-%m} ({time_zone})"
        _emit(title, lines, ["scope", "unit", "opening_remaining", "funded", "spent", "debt", "reserved", "released",
                             "expired", "closing_remaining", "balanced"], "table")
        _emit("funding operations", funding, ["created_at", "scope", "unit", "operation", "allocated_delta",
                                              "reason", "actor_type"], "table")
        click.echo("identity holds: opening + movements = closing on every line" if not unbalanced
                   else f"IDENTITY BROKEN on {len(unbalanced)} line(s)")
    if unbalanced:
        sys.exit(1)


@report.command(name="reconcile")
@format_option
def report_reconcile(output_format: str) -> None:
    """Ledger sums and running balances against every budget's live counters (exit 1 on any difference)."""
    rows = _query("SELECT * FROM cycles_reporting.reconciliation ORDER BY scope COLLATE \"C\", unit, counter", {})
    if output_format == "table" and not rows:
        click.echo("reconciled: every budget's counters equal its ledger")
    else:
        _emit("differences", rows, ["tenant_id", "scope", "unit", "counter", "live", "ledger_sum",
                                    "running_balance"], output_format)
    if rows:
        sys.exit(1)


# cycles ledger ------------------------------------------------------------------------


@click.group()
def ledger() -> None:
    """Verify the ledger's hash chains; export the ledger as CSV or JSON Lines."""


@ledger.command(name="verify")
@click.option("--tenant", "tenant_id", help="Only this tenant's budgets.")
@click.option("--scope", help="Only this budget's scope (with --unit).")
@click.option("--unit", type=click.Choice(UNITS), help="Only budgets in this unit.")
@format_option
def ledger_verify(tenant_id: str | None, scope: str | None, unit: str | None, output_format: str) -> None:
    """Recompute every hash chain; print the first broken link of each broken one (exit 1 if any)."""
    with _connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        params = {"tenant": tenant_id, "scope": scope, "unit": unit}
        broken = cur.execute("SELECT * FROM cycles_reporting.verify_ledger_chain(p_tenant_id => %(tenant)s,"
                             " p_scope => %(scope)s, p_unit => %(unit)s)", params).fetchall()
        counted = cur.execute(
            "SELECT count(DISTINCT budget_id) AS chains, count(*) AS rows FROM cycles_reporting.ledger"
            " WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) AND (%(unit)s::text IS NULL OR unit = %(unit)s)"
            " AND (%(scope)s::text IS NULL OR scope = lower(%(scope)s))", params).fetchone()
    assert counted is not None
    if output_format == "table" and not broken:
        click.echo(f"intact: {counted['chains']:,} chains, {counted['rows']:,} rows")
    else:
        _emit("broken chains", broken, ["tenant_id", "scope", "unit", "entry_id", "created_at", "problem"],
              output_format)
    if broken:
        sys.exit(1)


EXPORT_COLUMNS = [
    "entry_id", "created_at", "tenant_id", "budget_id", "scope", "unit", "operation", "operation_lead",
    "reservation_id", "event_id", "action_kind", "action_name", "operation_path", "workspace", "app", "workflow",
    "agent", "toolset", "subject", "actor_type", "actor_key_id", "request_id", "trace_id", "idempotency_key",
    "reason", "allocated_delta", "spent_delta", "reserved_delta", "debt_delta", "allocated_after", "spent_after",
    "reserved_after", "debt_after", "prev_hash", "entry_hash"]


@ledger.command(name="export")
@click.option("--tenant", "tenant_id", help="Only this tenant's rows.")
@click.option("--from", "start", type=TIMESTAMP, help="Rows written at or after this instant.")
@click.option("--to", "end", type=TIMESTAMP, help="Rows written before this instant.")
@click.option("--format", "output_format", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True, allow_dash=True), default="-",
              show_default=True, help="File to write (- for stdout).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when writing to a file from a terminal].")
def ledger_export(tenant_id: str | None, start: datetime | None, end: datetime | None, output_format: str,
                  output: str, progress: bool | None) -> None:
    """Stream ledger rows in entry order, as CSV or JSON Lines, through a server-side cursor."""
    where = sql.SQL("(%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)"
                    " AND (%(start)s::timestamptz IS NULL OR created_at >= %(start)s)"
                    " AND (%(end)s::timestamptz IS NULL OR created_at < %(end)s)")
    params = {"tenant": tenant_id, "start": start, "end": end}
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in EXPORT_COLUMNS)
    show = progress if progress is not None else (output != "-" and sys.stderr.isatty())
    with _connection() as conn:
        total = 0
        if show:
            counted = conn.execute(sql.SQL("SELECT count(*) FROM cycles_reporting.ledger WHERE {}").format(where),
                                   params).fetchone()
            total = counted[0] if counted else 0
        with click.open_file(output, "w", encoding="utf-8") as out, conn.transaction(), \
                conn.cursor(name="cycles_ledger_export", row_factory=dict_row) as cur:
            # A named cursor: the server keeps the result and sends it in batches,
            # so memory stays flat however large the ledger is.
            cur.itersize = EXPORT_BATCH
            cur.execute(sql.SQL("SELECT {} FROM cycles_reporting.ledger WHERE {} ORDER BY entry_id").format(
                columns, where), params)
            writer = csv.writer(out, lineterminator="\n") if output_format == "csv" else None
            if writer is not None:
                writer.writerow(EXPORT_COLUMNS)
            with _progress(show, total) as advance:
                written = 0
                for row in cur:
                    if writer is not None:
                        writer.writerow(["" if row[c] is None else (json.dumps(row[c]) if isinstance(row[c], dict)
                                                                    else _plain(row[c])) for c in EXPORT_COLUMNS])
                    else:
                        out.write(json.dumps({c: _plain(row[c]) for c in EXPORT_COLUMNS}) + "\n")
                    written += 1
                    if written % 1000 == 0:
                        advance(1000)
                advance(written % 1000)
    if output != "-":
        click.echo(f"exported {written:,} rows to {output}", err=True)


@contextmanager
def _progress(show: bool, total: int) -> Iterator[Any]:
    if not show:
        yield lambda count: None
        return
    bar = Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=False)
    with bar:
        task = bar.add_task("export", total=total or None)
        yield lambda count: bar.advance(task, count)


def register(cli: click.Group) -> None:
    """Adds the report and ledger groups to the ``cycles`` command."""
    cli.add_command(report)
    cli.add_command(ledger)

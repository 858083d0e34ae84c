"""The ``cycles`` command: serve, migrate, psql, version (and the admin groups).

Every failure is reported as one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from typing import Any

import alembic.util
import click
import psycopg
import sqlalchemy.exc

from app import cli_admin, cli_mcp, cli_policies, cli_report, migrate, server
from app.config import ConfigError, Settings
from app.config_doc import reference_markdown
from app.demos.cli import demo
from app.pgcluster import PostgresNotInstalled, find_bindir


def _settings() -> Settings:
    return Settings.from_env()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Cycles: a budget authority for AI agents, on PostgreSQL.

    With no CYCLES_DATABASE_URL, commands use the embedded PostgreSQL cluster
    in the data directory (CYCLES_DATA_DIR), creating it on first use.
    """


@cli.command()
@click.option("--host", default=None, help="Address to listen on [default: CYCLES_HOST or 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [default: CYCLES_PORT or 7878].")
def serve(host: str | None, port: int | None) -> None:
    """Start the HTTP server (and the embedded database unless CYCLES_DATABASE_URL is set)."""
    settings = _settings()
    if host is not None:
        settings = dataclasses.replace(settings, host=host)
    if port is not None:
        settings = dataclasses.replace(settings, port=port)
    server.serve(settings)


@cli.command()
def worker() -> None:
    """Run the webhook delivery worker and the maintenance jobs (the database must be migrated; any number may run at once)."""
    from app.logs import configure as configure_logs
    from app.maintenance import run_worker_process

    settings = _settings()
    configure_logs(settings)
    # Migrating is the server's job; the worker only needs the schema to exist.
    with server.open_database(settings, migrate_to_head=False) as database:
        settings = dataclasses.replace(settings, database_url=database.url)
        click.echo("webhook worker running  (Ctrl-C to stop)", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_worker_process(settings))


@cli.command(name="migrate")
@click.option("--snapshot-initial", is_flag=True,
              help="Development only: rewrite revision 0001's frozen SQL from sql/ (no database is touched).")
def migrate_command(snapshot_initial: bool) -> None:
    """Bring the database to the latest migration and print its revision."""
    if snapshot_initial:
        path = migrate.write_initial_snapshot()
        click.echo(f"wrote {path}")
        return
    with server.open_database(_settings()) as database:
        revision = server.database_revision(database.url)
    click.echo(f"database at revision {revision} (head {migrate.head_revision()})")


def _psql_binary() -> str:
    try:
        candidate = find_bindir() / "psql"
        if candidate.exists():
            return str(candidate)
    except PostgresNotInstalled:
        pass
    found = shutil.which("psql")
    if found is None:
        raise click.ClickException("psql was not found: install the PostgreSQL client (e.g. apt-get install postgresql-client)")
    return found


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def psql(psql_args: tuple[str, ...]) -> None:
    """Open psql on the database. Extra arguments go to psql, e.g. cycles psql -c 'SELECT 1'."""
    settings = _settings()
    binary = _psql_binary()
    if settings.database_url:
        command = [binary, f"--dbname={settings.database_url}", *psql_args]
        os.execv(binary, command)
    cluster = server.embedded_cluster(settings)
    if cluster.running:
        # The server (or an earlier command) runs the cluster: psql replaces us.
        server.ensure_database(cluster)
        os.execv(binary, [binary, f"--dbname={server.cluster_url(cluster)}", *psql_args])
    # Nothing runs the cluster: start it for this session and stop it afterwards.
    with server.open_database(settings) as database:
        # Ctrl-C belongs to psql (it cancels the query); we must survive it to stop the cluster.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            result = subprocess.run([binary, f"--dbname={database.url}", *psql_args], check=False)
        finally:
            signal.signal(signal.SIGINT, previous)
    sys.exit(result.returncode)


@cli.command(name="config")
@click.option("--format", "output", type=click.Choice(["table", "json", "reference"]), default="table",
              show_default=True, help="Output format; reference: every setting documented, as Markdown.")
def config_command(output: str) -> None:
    """Print the effective server configuration (secrets masked); fails on a bad value."""
    if output == "reference":
        click.echo(reference_markdown(), nl=False)
        return
    settings = _settings()
    rows: list[dict[str, Any]] = []
    for entry, shown in settings.effective():
        value = getattr(settings, entry.name)
        rows.append({
            "variable": entry.spec.env, "shown": shown,
            "value": value if isinstance(value, bool | int) and not entry.spec.secret else (
                None if value is None else shown),
            "source": "environment" if os.environ.get(entry.spec.env, "").strip() else "default",
            "secret": entry.spec.secret})
    if output == "json":
        click.echo(json.dumps([{key: row[key] for key in ("variable", "value", "source", "secret")}
                               for row in rows], indent=2))
        return
    width = max(len(row["variable"]) for row in rows)
    for row in rows:
        click.echo(f"{row['variable']:<{width}}  {row['shown']}{'  (set)' if row['source'] == 'environment' else ''}")


@cli.command()
def version() -> None:
    """Print the version of the server and of its database schema."""
    try:
        package = metadata.version("cycles-authority")
    except metadata.PackageNotFoundError:
        package = "unknown"
    click.echo(f"cycles {package} (schema migration head {migrate.head_revision()})")


# The operator commands: tenant, key, budget, audit, policy, event.
cli_admin.register(cli)
cli_policies.register(cli)
cli_report.register(cli)
cli_mcp.register(cli)
cli.add_command(demo)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _describe(exc: Exception) -> str | None:
    """One line for the failures an operator can act on; None for real bugs."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig  # migrations run through SQLAlchemy: report the driver's error
    if isinstance(exc, PostgresNotInstalled | server.ServeError | ConfigError):
        return str(exc)
    if isinstance(exc, psycopg.OperationalError):
        return f"cannot reach the database: {_first_line(exc)}"
    if isinstance(exc, psycopg.Error):
        return f"database error: {_first_line(exc)}"
    if isinstance(exc, alembic.util.CommandError):
        return f"migration failed: {_first_line(exc)}"
    if isinstance(exc, RuntimeError):
        # initdb/pg_ctl failures carry the tool's whole output; its log says more.
        log = Settings.from_env().data_dir / "postgres" / "postgres.log"
        return f"{_first_line(exc)} (see {log})"
    return None


def main() -> None:
    try:
        cli.main(prog_name="cycles")
    except Exception as exc:
        message = _describe(exc)
        if message is None:
            raise
        click.echo(f"cycles: error: {message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

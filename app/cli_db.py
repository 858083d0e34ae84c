"""The database connection of the operator commands (``cycles tenant|key|budget ...``).

CYCLES_DATABASE_URL when set; otherwise the embedded cluster of the data
directory, which these commands never start: a one-shot admin command must
not leave a database running behind the operator's back.
"""

from __future__ import annotations

from typing import Any

import click
import psycopg

from app import server
from app.config import Settings
from app.pgcluster import PostgresNotInstalled


class AdminCommandError(click.ClickException):
    """A failure reported as one line, ``error: <message>``, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def connect() -> psycopg.Connection[Any]:
    """An autocommit connection: every cycles.* call is its own transaction."""
    settings = Settings.from_env()
    if settings.database_url:
        url = settings.database_url
    else:
        try:
            cluster = server.embedded_cluster(settings)
            running = cluster.running
        except PostgresNotInstalled:
            running = False
        if not running:
            raise AdminCommandError(
                f"the embedded database in {settings.data_dir} is not running: "
                "start it with `cycles serve`, or set CYCLES_DATABASE_URL")
        url = server.cluster_url(cluster)
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()
        raise AdminCommandError(f"cannot reach the database: {first[0] if first else type(exc).__name__}") from exc

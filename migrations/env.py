"""Alembic environment: online migrations over the connection app.migrate hands in.

Run through ``cycles migrate`` (app.migrate). The plain ``alembic`` command works
too with ``-x url=postgresql+psycopg://...`` or sqlalchemy.url set in a config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: pass -x url=postgresql+psycopg://... or use `cycles migrate`")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the revisions are raw SQL files already")
_run_online()

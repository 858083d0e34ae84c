"""The initial schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

The SQL is frozen in 0001_initial.sql, a snapshot of sql/ taken when this
revision was written: it never reads sql/.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SQL_FILE = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    # Straight to the psycopg connection, with no parameters: psycopg then sends
    # the text as is (several statements; '%' and ':' inside function bodies
    # are not taken for placeholders, as SQLAlchemy would).
    op.get_bind().connection.driver_connection.execute(SQL_FILE.read_text())


def downgrade() -> None:
    # Everything the snapshot creates lives in schemas cycles and
    # cycles_reporting, except the roles cycles_app and cycles_reporting: roles
    # are cluster-wide and may serve other databases, so they stay.
    op.get_bind().exec_driver_sql("DROP SCHEMA IF EXISTS cycles_reporting CASCADE")
    op.get_bind().exec_driver_sql("DROP SCHEMA IF EXISTS cycles CASCADE")

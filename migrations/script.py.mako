"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

The SQL is frozen in the .sql file next to this one: it never reads sql/.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None

SQL_FILE = Path(__file__).with_suffix(".sql")


def upgrade() -> None:
    # Straight to the psycopg connection, with no parameters: psycopg then sends
    # the text as is (several statements; '%' and ':' inside function bodies
    # are not taken for placeholders, as SQLAlchemy would).
    op.get_bind().connection.driver_connection.execute(SQL_FILE.read_text())


def downgrade() -> None:
    raise NotImplementedError("write the inverse SQL of this revision")

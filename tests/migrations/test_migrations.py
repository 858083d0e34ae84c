"""The migrations build exactly the schema that sql/ describes, and can be undone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from app import migrate
from app.pgcluster import Cluster
from app.schema import sql_files

# Each query lists one kind of object of schema cycles as comparable text rows.
CATALOG_QUERIES: dict[str, str] = {
    "relations": """
        SELECT c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '')
        FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = 'cycles'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
    """,
    "columns": """
        SELECT c.relname || '.' || a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod)
            || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
            || coalesce(' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')
            || CASE WHEN a.attidentity <> '' THEN ' IDENTITY ' || a.attidentity::text ELSE '' END
            || CASE WHEN a.attgenerated <> '' THEN ' GENERATED ' || a.attgenerated::text ELSE '' END
        FROM pg_catalog.pg_attribute AS a
        JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'cycles'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraints": """
        SELECT coalesce(con.conrelid::regclass::text, con.contypid::regtype::text) || ' ' || con.conname || ' '
            || pg_catalog.pg_get_constraintdef(con.oid)
        FROM pg_catalog.pg_constraint AS con
        WHERE con.connamespace = 'cycles'::regnamespace
    """,
    "indexes": """
        SELECT pg_catalog.pg_get_indexdef(i.indexrelid)
        FROM pg_catalog.pg_index AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
        WHERE c.relnamespace = 'cycles'::regnamespace
    """,
    "triggers": """
        SELECT pg_catalog.pg_get_triggerdef(t.oid)
        FROM pg_catalog.pg_trigger AS t
        JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'cycles'::regnamespace AND NOT t.tgisinternal
    """,
    "functions": """
        SELECT pg_catalog.pg_get_functiondef(p.oid) || E'\\n-- acl: ' || coalesce(p.proacl::text, '')
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'cycles'::regnamespace AND p.prokind IN ('f', 'p')
    """,
    "types": """
        SELECT t.typname || ' ' || t.typtype::text
        FROM pg_catalog.pg_type AS t
        LEFT JOIN pg_catalog.pg_class AS c ON c.oid = t.typrelid
        WHERE t.typnamespace = 'cycles'::regnamespace AND (c.oid IS NULL OR c.relkind = 'c')
    """,
    "schema": """
        SELECT n.nspname || ' ' || coalesce(n.nspacl::text, '')
            || ' ' || coalesce(pg_catalog.obj_description(n.oid, 'pg_namespace'), '')
        FROM pg_catalog.pg_namespace AS n
        WHERE n.nspname = 'cycles'
    """,
}


def catalog(conninfo: str) -> dict[str, list[str]]:
    """Every object of schema cycles, per kind, as sorted text: a failing
    comparison shows exactly which object differs."""
    with psycopg.connect(conninfo) as conn:
        return {kind: sorted(str(row[0]) for row in conn.execute(query))
                for kind, query in CATALOG_QUERIES.items()}


@pytest.fixture
def new_database(pg_cluster: Cluster) -> Iterator[Any]:
    """A factory of empty databases on the session cluster, dropped afterwards."""
    created: list[str] = []

    def create() -> str:
        name = f"mig_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return pg_cluster.conninfo(name)

    yield create
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_sql_dir(conninfo: str) -> None:
    with psycopg.connect(conninfo) as conn:
        for path in sql_files():
            conn.execute(path.read_text())


def test_upgrade_builds_the_schema_of_sql_dir(new_database: Any) -> None:
    from_sql, from_migrations = new_database(), new_database()
    load_sql_dir(from_sql)
    migrate.upgrade(from_migrations)

    expected = catalog(from_sql)
    assert expected["functions"], "sql/ defines functions: the catalog query must see them"
    assert catalog(from_migrations) == expected


def test_downgrade_to_base_then_upgrade_again(new_database: Any) -> None:
    from_sql, target = new_database(), new_database()
    load_sql_dir(from_sql)
    expected = catalog(from_sql)

    migrate.upgrade(target)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("INSERT INTO cycles.tenants (tenant_id, name) VALUES ('acme', 'Acme')")
    migrate.downgrade(target)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT pg_catalog.to_regnamespace('cycles')").fetchone() == (None,)
        assert migrate.current_revision(conn) is None

    migrate.upgrade(target)
    assert catalog(target) == expected
    with psycopg.connect(target) as conn:
        # The schema is new: nothing survived the downgrade.
        assert conn.execute("SELECT count(*) FROM cycles.tenants").fetchone() == (0,)


def test_revision_is_recorded_and_upgrade_is_idempotent(new_database: Any) -> None:
    target = new_database()
    with psycopg.connect(target) as conn:
        assert migrate.current_revision(conn) is None

    migrate.upgrade(target)
    migrate.upgrade(target)  # already at head: nothing to do, nothing fails

    head = migrate.head_revision()
    with psycopg.connect(target) as conn:
        assert migrate.current_revision(conn) == head
        assert conn.execute("SELECT count(*) FROM public.alembic_version").fetchone() == (1,)


def test_revision_0001_is_frozen_and_never_reads_sql_dir() -> None:
    revision = migrate.MIGRATIONS_DIR / "versions" / "0001_initial.py"
    assert migrate.INITIAL_SNAPSHOT.read_text().startswith("-- Frozen snapshot of sql/")
    assert "app.schema" not in revision.read_text()
    assert "sql_files" not in revision.read_text()

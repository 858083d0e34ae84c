from __future__ import annotations

import psycopg


def test_schema_loads(db: psycopg.Connection) -> None:
    tables = {row[0] for row in db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'cycles'")}
    assert {"tenants", "api_keys", "budgets", "reservations", "idempotency_records",
            "ledger_entries", "events"} <= tables

-- Distribution of the cycles schema over a Citus cluster.
--
-- NOT part of the normal schema: app.schema loads only sql/*.sql, never this
-- directory. Run it once, as the owner of the schema, on the Citus
-- coordinator, after the schema is loaded and before the application writes
-- (or during a migration: docs/scaling.md, "Moving a running deployment").
-- The whole design, and why each table is where it is: docs/scaling.md.
--
-- Three kinds of table:
--   distributed by tenant_id, all colocated with cycles.budgets: every row of
--     one tenant, in every table, lives on the same node, so a reservation
--     (or a commit, release, extend, event) is a single-shard transaction;
--   reference (replicated to every node): cycles.tenants and cycles.api_keys,
--     read by authentication before the tenant is known, written rarely;
--   coordinator-local (admin plane, not tenant-scoped): cycles.audit_logs,
--     cycles.dashboard_sessions, cycles.bulk_action_records,
--     cycles.dashboard_summary_state, cycles.report_summary_state,
--     cycles.maintenance_jobs and cycles.maintenance_runs.
-- tests/sql/test_distribution_ready.py checks that this file names every
-- tenant-owned table exactly once and colocates them all.

CREATE EXTENSION IF NOT EXISTS citus;

-- The append-only triggers of the ledger and the audit log run on the nodes.
SET citus.enable_unsafe_triggers = on;

BEGIN;

-- Reference tables first: distributed tables hold foreign keys to them.
SELECT create_reference_table('cycles.tenants');
SELECT create_reference_table('cycles.api_keys');

-- Tenant-owned tables, one colocation group.
SELECT create_distributed_table('cycles.budgets', 'tenant_id', colocate_with => 'none');
SELECT create_distributed_table('cycles.reservations', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.idempotency_records', 'tenant_id', colocate_with => 'cycles.budgets');
-- Partitioned: its monthly partitions, present and future (created by
-- cycles.ensure_ledger_partitions), are distributed with it.
SELECT create_distributed_table('cycles.ledger_entries', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.events', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.policies', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.webhook_subscriptions', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.webhook_deliveries', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.webhook_replays', 'tenant_id', colocate_with => 'cycles.budgets');
-- The dashboard's spend summaries, derived from the ledger of the same tenant.
SELECT create_distributed_table('cycles.dashboard_spend_hours', 'tenant_id', colocate_with => 'cycles.budgets');
SELECT create_distributed_table('cycles.dashboard_spend_months', 'tenant_id', colocate_with => 'cycles.budgets');
-- The reports' hourly summaries, likewise.
SELECT create_distributed_table('cycles.report_spend_hours', 'tenant_id', colocate_with => 'cycles.budgets');

-- Coordinator-local tables that reference a reference table must be known to
-- Citus (their foreign key to cycles.tenants then stays enforced).
SELECT citus_add_local_table_to_metadata('cycles.dashboard_sessions', cascade_via_foreign_keys => false);

COMMIT;

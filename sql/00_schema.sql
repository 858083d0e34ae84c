-- The cycles schema: every table of the authority.
--
-- Tables are private: clients reach them only through the cycles.* functions
-- (see 90_grants.sql). Amounts are bigint in the budget's unit. Times that the
-- protocol exposes in milliseconds are stored as bigint epoch milliseconds taken
-- from the database clock, so no conversion ever rounds a deadline.

CREATE SCHEMA IF NOT EXISTS cycles;

COMMENT ON SCHEMA cycles IS 'Cycles authority: budgets, reservations, ledger, outbox and their functions';

-- Tenants ------------------------------------------------------------------

CREATE TABLE cycles.tenants (
    tenant_id                     text        NOT NULL,
    name                          text        NOT NULL,
    status                        text        NOT NULL DEFAULT 'ACTIVE',
    parent_tenant_id              text,
    default_commit_overage_policy text        NOT NULL DEFAULT 'ALLOW_IF_AVAILABLE',
    default_reservation_ttl_ms    bigint      NOT NULL DEFAULT 60000,
    max_reservation_ttl_ms        bigint      NOT NULL DEFAULT 3600000,
    max_reservation_extensions    integer     NOT NULL DEFAULT 10,
    metadata                      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at                    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at                    timestamptz NOT NULL DEFAULT clock_timestamp(),
    suspended_at                  timestamptz,
    closed_at                     timestamptz,
    CONSTRAINT tenants_pkey PRIMARY KEY (tenant_id),
    CONSTRAINT tenants_tenant_id_format CHECK (tenant_id ~ '^[a-z0-9-]{3,64}$'),
    CONSTRAINT tenants_name_length CHECK (char_length(name) BETWEEN 1 AND 256),
    CONSTRAINT tenants_status_valid CHECK (status IN ('ACTIVE', 'SUSPENDED', 'CLOSED')),
    CONSTRAINT tenants_closed_at_iff_closed CHECK ((status = 'CLOSED') = (closed_at IS NOT NULL)),
    CONSTRAINT tenants_parent_fkey FOREIGN KEY (parent_tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT tenants_overage_policy_valid CHECK (
        default_commit_overage_policy IN ('REJECT', 'ALLOW_IF_AVAILABLE', 'ALLOW_WITH_OVERDRAFT')),
    CONSTRAINT tenants_default_ttl_range CHECK (default_reservation_ttl_ms BETWEEN 1000 AND 86400000),
    CONSTRAINT tenants_max_ttl_range CHECK (max_reservation_ttl_ms BETWEEN 1000 AND 86400000),
    CONSTRAINT tenants_max_extensions_range CHECK (max_reservation_extensions BETWEEN 0 AND 10000),
    CONSTRAINT tenants_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- API keys -----------------------------------------------------------------
-- Only a SHA-256 of the secret is kept. key_prefix (the first 14 characters of
-- the secret) identifies a key to humans and in logs without revealing it.

CREATE TABLE cycles.api_keys (
    key_id         text        NOT NULL,
    tenant_id      text        NOT NULL,
    key_prefix     text        NOT NULL,
    key_hash       bytea       NOT NULL,
    name           text        NOT NULL,
    description    text,
    permissions    text[]      NOT NULL,
    scope_filter   text[]      NOT NULL DEFAULT '{}',
    status         text        NOT NULL DEFAULT 'ACTIVE',
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz,
    revoked_reason text,
    last_used_at   timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (key_id),
    CONSTRAINT api_keys_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_key_prefix_key UNIQUE (key_prefix),
    CONSTRAINT api_keys_key_hash_sha256 CHECK (octet_length(key_hash) = 32),
    CONSTRAINT api_keys_name_length CHECK (char_length(name) BETWEEN 1 AND 256),
    CONSTRAINT api_keys_status_valid CHECK (status IN ('ACTIVE', 'REVOKED')),
    CONSTRAINT api_keys_revoked_at_iff_revoked CHECK ((status = 'REVOKED') = (revoked_at IS NOT NULL)),
    CONSTRAINT api_keys_expiry_after_creation CHECK (expires_at > created_at),
    CONSTRAINT api_keys_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

CREATE INDEX api_keys_tenant_idx ON cycles.api_keys (tenant_id, created_at);

-- Budgets ------------------------------------------------------------------
-- Keys of tenant-owned tables lead with tenant_id, so that every row of a
-- tenant can live on one node of a distributed database (docs/scaling.md).
-- One row per (scope, unit). scope is a canonical path that starts with the
-- owning tenant, e.g. tenant:acme/workspace:prod/agent:bot. The stored
-- remaining is kept equal to allocated - spent - reserved - debt by every
-- function and by the budgets_remaining_identity constraint.

CREATE TABLE cycles.budgets (
    budget_id             bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id             text        NOT NULL,
    scope                 text        NOT NULL,
    unit                  text        NOT NULL,
    allocated             bigint      NOT NULL,
    spent                 bigint      NOT NULL DEFAULT 0,
    reserved              bigint      NOT NULL DEFAULT 0,
    debt                  bigint      NOT NULL DEFAULT 0,
    remaining             bigint      NOT NULL,
    overdraft_limit       bigint      NOT NULL DEFAULT 0,
    is_over_limit         boolean     NOT NULL DEFAULT false,
    commit_overage_policy text,
    status                text        NOT NULL DEFAULT 'ACTIVE',
    metadata              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    closed_at             timestamptz,
    CONSTRAINT budgets_pkey PRIMARY KEY (tenant_id, budget_id),
    CONSTRAINT budgets_scope_unit_key UNIQUE (tenant_id, scope, unit),
    CONSTRAINT budgets_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT budgets_scope_in_tenant CHECK (
        scope = 'tenant:' || tenant_id OR left(scope, char_length(tenant_id) + 8) = 'tenant:' || tenant_id || '/'),
    CONSTRAINT budgets_unit_valid CHECK (unit IN ('USD_MICROCENTS', 'TOKENS', 'CREDITS', 'RISK_POINTS')),
    CONSTRAINT budgets_allocated_nonnegative CHECK (allocated >= 0),
    CONSTRAINT budgets_spent_nonnegative CHECK (spent >= 0),
    CONSTRAINT budgets_reserved_nonnegative CHECK (reserved >= 0),
    CONSTRAINT budgets_debt_nonnegative CHECK (debt >= 0),
    CONSTRAINT budgets_overdraft_limit_nonnegative CHECK (overdraft_limit >= 0),
    CONSTRAINT budgets_remaining_identity CHECK (remaining = allocated - spent - reserved - debt),
    CONSTRAINT budgets_status_valid CHECK (status IN ('ACTIVE', 'FROZEN', 'CLOSED')),
    CONSTRAINT budgets_closed_at_iff_closed CHECK ((status = 'CLOSED') = (closed_at IS NOT NULL)),
    CONSTRAINT budgets_overage_policy_valid CHECK (
        commit_overage_policy IN ('REJECT', 'ALLOW_IF_AVAILABLE', 'ALLOW_WITH_OVERDRAFT')),
    CONSTRAINT budgets_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
);

-- Lookups and locks go by scope in byte order (COLLATE "C"), which is the
-- hierarchy order because an ancestor scope is a prefix of its descendants.
CREATE INDEX budgets_tenant_scope_idx ON cycles.budgets (tenant_id, scope COLLATE "C", unit);
-- Balances filtered by subject levels: the scopes containing every requested
-- level:value segment, whatever the levels between them.
CREATE INDEX budgets_scope_segments_idx ON cycles.budgets USING gin (string_to_array(scope, '/'));

-- Reservations -------------------------------------------------------------

CREATE TABLE cycles.reservations (
    reservation_id     text        NOT NULL,
    tenant_id          text        NOT NULL,
    api_key_id         text,
    idempotency_key    text        NOT NULL,
    subject            jsonb       NOT NULL,
    action             jsonb       NOT NULL,
    unit               text        NOT NULL,
    estimate           bigint      NOT NULL,
    scope_path         text        NOT NULL,
    affected_scopes    text[]      NOT NULL,
    budgeted_scopes    text[]      NOT NULL,
    overage_policy     text        NOT NULL,
    status             text        NOT NULL DEFAULT 'ACTIVE',
    created_at_ms      bigint      NOT NULL,
    expires_at_ms      bigint      NOT NULL,
    grace_period_ms    bigint      NOT NULL,
    ttl_ms             bigint      NOT NULL,
    extension_count    integer     NOT NULL DEFAULT 0,
    max_extensions     integer     NOT NULL,
    finalized_at_ms    bigint,
    committed          bigint,
    released           bigint,
    metadata           jsonb,
    committed_metadata jsonb,
    metrics            jsonb,
    release_reason     text,
    request_id         text,
    trace_id           text,
    CONSTRAINT reservations_pkey PRIMARY KEY (tenant_id, reservation_id),
    CONSTRAINT reservations_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT reservations_unit_valid CHECK (unit IN ('USD_MICROCENTS', 'TOKENS', 'CREDITS', 'RISK_POINTS')),
    CONSTRAINT reservations_estimate_nonnegative CHECK (estimate >= 0),
    CONSTRAINT reservations_status_valid CHECK (status IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED')),
    CONSTRAINT reservations_overage_policy_valid CHECK (
        overage_policy IN ('REJECT', 'ALLOW_IF_AVAILABLE', 'ALLOW_WITH_OVERDRAFT')),
    CONSTRAINT reservations_expiry_after_creation CHECK (expires_at_ms > created_at_ms),
    CONSTRAINT reservations_grace_range CHECK (grace_period_ms BETWEEN 0 AND 60000),
    CONSTRAINT reservations_extension_count_range CHECK (extension_count BETWEEN 0 AND max_extensions),
    CONSTRAINT reservations_finalized_iff_settled CHECK (
        (status IN ('COMMITTED', 'RELEASED')) = (finalized_at_ms IS NOT NULL)),
    CONSTRAINT reservations_committed_iff_committed CHECK ((status = 'COMMITTED') = (committed IS NOT NULL)),
    CONSTRAINT reservations_committed_nonnegative CHECK (committed >= 0),
    CONSTRAINT reservations_released_nonnegative CHECK (released >= 0)
);

-- The list's sort orders that are served from an index: newest first (the
-- default, and the created window) and by expiry (the expires window). The
-- tie-breaker is compared byte-wise, as the list compares it.
CREATE INDEX reservations_tenant_created_idx
    ON cycles.reservations (tenant_id, created_at_ms DESC, reservation_id COLLATE "C");
CREATE INDEX reservations_tenant_expires_idx
    ON cycles.reservations (tenant_id, expires_at_ms, reservation_id COLLATE "C");
-- An admin acting on a reservation by id alone (no tenant in the request):
-- ids are random, so this finds one row; tenant callers use the primary key.
CREATE INDEX reservations_id_idx ON cycles.reservations (reservation_id);
-- The expiry sweeper scans only live reservations, in deadline order.
CREATE INDEX reservations_active_deadline_idx ON cycles.reservations ((expires_at_ms + grace_period_ms))
    WHERE status = 'ACTIVE';

-- Idempotency records ------------------------------------------------------
-- One row per (tenant, endpoint, key): the hash of the canonical request and
-- the response it produced, written in the same transaction as the effect.

CREATE TABLE cycles.idempotency_records (
    tenant_id       text        NOT NULL,
    endpoint        text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    bytea       NOT NULL,
    response        jsonb       NOT NULL,
    reservation_id  text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL,
    CONSTRAINT idempotency_records_pkey PRIMARY KEY (tenant_id, endpoint, idempotency_key),
    CONSTRAINT idempotency_records_tenant_fkey FOREIGN KEY (tenant_id) REFERENCES cycles.tenants (tenant_id),
    CONSTRAINT idempotency_records_key_length CHECK (char_length(idempotency_key) BETWEEN 1 AND 256),
    CONSTRAINT idempotency_records_expiry_after_creation CHECK (expires_at > created_at)
);

CREATE INDEX idempotency_records_expires_idx ON cycles.idempotency_records (expires_at);

-- The ledger ---------------------------------------------------------------
-- Append-only: one row per affected (scope, unit) for every balance change,
-- carrying the deltas it applied. For every budget the sums of the deltas
-- equal its counters (cycles.verify_ledger()). UPDATE, DELETE and TRUNCATE are
-- refused by trigger (below) and by grants (90_grants.sql).
--
-- Rows are written only by cycles._append_ledger_rows, which also fills:
--   subject_*        the operation's subject levels (lower-cased, as in scope
--                    paths), or for an admin row the levels of its scope, so
--                    reports group by agent or workflow without parsing JSON;
--   operation_lead   true on exactly one row per operation (the first it
--                    wrote): a reserve, commit, release, expiry or event that
--                    touched three budgets writes three rows with the same
--                    amounts, and reports that count operations rather than
--                    budgets sum only the lead rows;
--   *_after          the budget's counters after this row (running balances):
--                    a balance at any instant is one index lookup;
--   prev_hash, entry_hash
--                    the hash chain of the budget (see cycles._ledger_entry_hash):
--                    changing, removing or reordering a row breaks it
--                    (cycles.verify_ledger_chain).
-- created_at is strictly increasing within a budget (the writer holds the
-- budget row locked and takes the later of the clock and the previous row's
-- time plus one microsecond), so (budget_id, created_at) orders each chain.
--
-- The table is partitioned by month of created_at (05_partitions.sql creates
-- the partitions): an old month can be detached and archived without
-- rewriting anything. Unique keys of a partitioned table must hold the
-- partition key, so the primary key is (tenant_id, entry_id, created_at);
-- entry_id alone stays unique because one sequence hands it out.

CREATE TABLE cycles.ledger_entries (
    entry_id        bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id       text        NOT NULL,
    budget_id       bigint      NOT NULL,
    scope           text        NOT NULL,
    unit            text        NOT NULL,
    operation       text        NOT NULL,
    allocated_delta bigint      NOT NULL DEFAULT 0,
    spent_delta     bigint      NOT NULL DEFAULT 0,
    reserved_delta  bigint      NOT NULL DEFAULT 0,
    debt_delta      bigint      NOT NULL DEFAULT 0,
    reservation_id  text,
    event_id        text,
    action_kind     text,
    action_name     text,
    subject         jsonb,
    idempotency_key text,
    reason          text,
    request_id      text,
    trace_id        text,
    actor_type      text        NOT NULL,
    actor_key_id    text,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    subject_workspace text,
    subject_app       text,
    subject_workflow  text,
    subject_agent     text,
    subject_toolset   text,
    operation_lead  boolean     NOT NULL,
    allocated_after bigint      NOT NULL,
    spent_after     bigint      NOT NULL,
    reserved_after  bigint      NOT NULL,
    debt_after      bigint      NOT NULL,
    prev_hash       bytea,
    entry_hash      bytea       NOT NULL,
    CONSTRAINT ledger_entries_pkey PRIMARY KEY (tenant_id, entry_id, created_at),
    CONSTRAINT ledger_entries_budget_time_key UNIQUE (tenant_id, budget_id, created_at),
    -- The tenant is checked through this key (a budget's tenant exists: its
    -- own foreign key), not by a second key to tenants, which would cost
    -- every ledger row a second check.
    CONSTRAINT ledger_entries_budget_fkey FOREIGN KEY (tenant_id, budget_id)
        REFERENCES cycles.budgets (tenant_id, budget_id),
    CONSTRAINT ledger_entries_operation_valid CHECK (operation IN (
        'CREATE', 'CREDIT', 'DEBIT', 'RESET', 'RESET_SPENT', 'REPAY_DEBT', 'CLOSE',
        'RESERVE', 'COMMIT', 'RELEASE', 'EXPIRE', 'EVENT')),
    CONSTRAINT ledger_entries_actor_type_valid CHECK (
        actor_type IN ('admin', 'api_key', 'admin_on_behalf_of', 'system')),
    CONSTRAINT ledger_entries_changes_something CHECK (
        allocated_delta <> 0 OR spent_delta <> 0 OR reserved_delta <> 0 OR debt_delta <> 0
        OR operation IN ('CREATE', 'CLOSE', 'RESET', 'RESET_SPENT', 'COMMIT', 'EVENT')),
    CONSTRAINT ledger_entries_hashes_sha256 CHECK (
        octet_length(entry_hash) = 32 AND (prev_hash IS NULL OR octet_length(prev_hash) = 32))
) PARTITION BY RANGE (created_at);

-- Reports by tenant and time (cycles_reporting). operation_lead sits between
-- them so that reports counting each operation once read only lead rows, a
-- third of the ledger when budgets sit at three levels; reports by budget
-- read both values (operation_lead IN (true, false)), still as two ranges.
CREATE INDEX ledger_entries_tenant_lead_time_idx ON cycles.ledger_entries (tenant_id, operation_lead, created_at);
CREATE INDEX ledger_entries_reservation_idx ON cycles.ledger_entries (tenant_id, reservation_id)
    WHERE reservation_id IS NOT NULL;

CREATE FUNCTION cycles._ledger_is_append_only() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'cycles.ledger_entries is append-only: % is not allowed', tg_op
        USING ERRCODE = 'CY0LA';
END;
$$;

-- The row trigger is cloned onto every partition, present and future; a
-- TRUNCATE of one partition fires only that partition's own statement
-- trigger, which cycles.ensure_ledger_partitions adds to each partition.
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON cycles.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION cycles._ledger_is_append_only();

CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON cycles.ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION cycles._ledger_is_append_only();

-- The event outbox ---------------------------------------------------------
-- Events are written in the same transaction as the change that caused them;
-- delivery is a separate worker. seq orders events within the whole store.

CREATE TABLE cycles.events (
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    event_id       text        NOT NULL,
    tenant_id      text        NOT NULL,
    event_type     text        NOT NULL,
    category       text        NOT NULL,
    scope          text,
    source         text        NOT NULL,
    actor          jsonb,
    data           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id text,
    request_id     text,
    trace_id       text,
    metadata       jsonb,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (tenant_id, seq),
    CONSTRAINT events_event_id_key UNIQUE (tenant_id, event_id),
    CONSTRAINT events_category_valid CHECK (
        category IN ('budget', 'tenant', 'api_key', 'policy', 'reservation', 'system', 'webhook')),
    CONSTRAINT events_type_in_category CHECK (
        event_type LIKE category || '.%' OR event_type LIKE 'custom.%'),
    CONSTRAINT events_source_valid CHECK (
        source IN ('cycles-admin', 'cycles-server', 'cycles-events', 'expiry-sweeper', 'anomaly-detector')),
    CONSTRAINT events_data_object CHECK (jsonb_typeof(data) = 'object')
);

CREATE INDEX events_tenant_time_idx ON cycles.events (tenant_id, created_at, seq);
-- Delivery workers read the outbox in seq order across tenants; an admin
-- reads one event by id alone.
CREATE INDEX events_seq_idx ON cycles.events (seq);
CREATE INDEX events_event_id_idx ON cycles.events (event_id);
CREATE INDEX events_type_idx ON cycles.events (event_type, created_at);

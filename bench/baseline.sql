-- The physical baseline: a bare function shaped like a reserve. It locks
-- three rows in key order, updates them and inserts two rows, with none of
-- the protocol's work (authentication, validation, idempotency, events,
-- JSON). Measured in the same run as our functions, it is what this machine
-- and this PostgreSQL can do at best for that shape.

CREATE SCHEMA IF NOT EXISTS bench;

CREATE TABLE IF NOT EXISTS bench.accounts (
    account_id integer NOT NULL,
    reserved   bigint  NOT NULL DEFAULT 0,
    CONSTRAINT accounts_pkey PRIMARY KEY (account_id)
);

CREATE TABLE IF NOT EXISTS bench.holds (
    hold_id     bigint      GENERATED ALWAYS AS IDENTITY,
    account_ids integer[]   NOT NULL,
    amount      bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT holds_pkey PRIMARY KEY (hold_id)
);

CREATE TABLE IF NOT EXISTS bench.entries (
    entry_id   bigint      GENERATED ALWAYS AS IDENTITY,
    hold_id    bigint      NOT NULL,
    amount     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT entries_pkey PRIMARY KEY (entry_id)
);

CREATE OR REPLACE FUNCTION bench.bare_reserve(p_account_ids integer[], p_amount bigint) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    v_hold_id bigint;
BEGIN
    PERFORM 1 FROM bench.accounts AS a
    WHERE a.account_id = ANY (p_account_ids) ORDER BY a.account_id FOR UPDATE;
    UPDATE bench.accounts AS a SET reserved = a.reserved + p_amount WHERE a.account_id = ANY (p_account_ids);
    INSERT INTO bench.holds (account_ids, amount) VALUES (p_account_ids, p_amount) RETURNING hold_id INTO v_hold_id;
    INSERT INTO bench.entries (hold_id, amount) VALUES (v_hold_id, p_amount);
    RETURN v_hold_id;
END;
$$;

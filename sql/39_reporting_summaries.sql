-- Hourly summaries of the ledger for the spend reports (cycles_reporting.spend
-- and top_spenders, sql/40_reporting.sql).
--
-- A report over a day of a large tenant would otherwise add up every ledger
-- row of the day on every call (a million rows take seconds). Like the
-- dashboard's spend summaries (sql/50_dashboard.sql), the ledger is added up
-- once, in the background, by the maintenance job summarise_report_spend
-- (cycles.summarise_report_spend, sql/60_maintenance.sql), never by the
-- write path: no trigger on the ledger, no index added to it.
--
-- cycles.report_spend_hours holds, per closed UTC hour, tenant, lead flag and
-- every report dimension (scope, unit, action kind and name, the five subject
-- levels), the report measures of that hour's RESERVE, COMMIT, RELEASE,
-- EXPIRE and EVENT rows: exactly what the reports group and filter by, so a
-- report can add up summary rows instead of ledger rows for every whole hour
-- that lies inside one of its buckets. Reports by budget read both lead
-- values, reports by operation the lead rows only, as on the ledger itself.
--
-- cycles.report_summary_state says which hours are summarised:
-- [summarised_from, summarised_to), whole UTC hours. Reports read the
-- summaries for the hours of their range inside it that fit in one bucket,
-- and the ledger for everything else (the unsummarised tail, hours cut by the
-- range's ends, hours that straddle a bucket boundary of a time zone whose
-- offset is not a whole number of hours). The answer is the same either way.
--
-- Why the summarised hours are final: an hour is summarised only when it
-- ended at least two minutes ago and no transaction of this database that
-- has written anything started before its end (pg_stat_activity, where
-- visible); a ledger row's created_at is taken while its transaction runs,
-- so no row can still appear in a summarised hour. Rows inserted later with
-- a back-dated created_at (bulk loads, restores) are not seen by the
-- summaries: call cycles._report_summaries_reset() after such a load.

CREATE TABLE cycles.report_spend_hours (
    summary_id        bigint      GENERATED ALWAYS AS IDENTITY,
    tenant_id         text        NOT NULL,
    hour_start        timestamptz NOT NULL,
    operation_lead    boolean     NOT NULL,
    scope             text        NOT NULL,
    unit              text        NOT NULL,
    action_kind       text,
    action_name       text,
    subject_workspace text,
    subject_app       text,
    subject_workflow  text,
    subject_agent     text,
    subject_toolset   text,
    -- The operation's own scope path (what prefix filters by operation
    -- match), in byte order so that a prefix is an index range.
    operation_path    text        COLLATE "C" NOT NULL GENERATED ALWAYS AS (
        'tenant:' || tenant_id || coalesce('/workspace:' || subject_workspace, '')
        || coalesce('/app:' || subject_app, '') || coalesce('/workflow:' || subject_workflow, '')
        || coalesce('/agent:' || subject_agent, '') || coalesce('/toolset:' || subject_toolset, '')) STORED,
    spent             numeric     NOT NULL,
    debt              numeric     NOT NULL,
    reserved          numeric     NOT NULL,
    released          numeric     NOT NULL,
    expired           numeric     NOT NULL,
    charges           bigint      NOT NULL,
    CONSTRAINT report_spend_hours_pkey PRIMARY KEY (tenant_id, summary_id),
    -- One row per hour and group; the summariser adds into it (ON CONFLICT).
    -- The key leads with what reports select by: tenant, lead flag, hour.
    CONSTRAINT report_spend_hours_group_key UNIQUE NULLS NOT DISTINCT (
        tenant_id, operation_lead, hour_start, unit, scope, action_kind, action_name, subject_workspace,
        subject_app, subject_workflow, subject_agent, subject_toolset),
    CONSTRAINT report_spend_hours_whole_hour CHECK (
        extract(minute FROM hour_start AT TIME ZONE 'UTC') = 0
        AND extract(second FROM hour_start AT TIME ZONE 'UTC') = 0),
    CONSTRAINT report_spend_hours_charges_not_negative CHECK (charges >= 0)
);

-- Reports across tenants, and pruning, read by hour.
CREATE INDEX report_spend_hours_time_idx ON cycles.report_spend_hours (hour_start);
-- Reports under a scope prefix: by operation (the operation's path), by
-- budget (the budget's scope); both in byte order, so "equal to the prefix
-- or below it" is one equality and one range.
CREATE INDEX report_spend_hours_path_idx
    ON cycles.report_spend_hours (tenant_id, operation_lead, operation_path, hour_start);
CREATE INDEX report_spend_hours_scope_idx
    ON cycles.report_spend_hours (tenant_id, (scope COLLATE "C"), hour_start);

-- Which hours the summaries hold: one row, name 'spend'.
CREATE TABLE cycles.report_summary_state (
    name            text        NOT NULL,
    summarised_from timestamptz NOT NULL,
    summarised_to   timestamptz NOT NULL,
    CONSTRAINT report_summary_state_pkey PRIMARY KEY (name),
    CONSTRAINT report_summary_state_ordered CHECK (summarised_from <= summarised_to)
);

-- cycles._report_summarise_spend: brings the summaries towards the last hour
-- that is final (see above), five minutes of ledger at a time, for at most
-- about p_budget_ms of work, and returns the time up to which they are
-- complete. p_until (tests, tools) stops earlier: at the hour of p_until at
-- the latest. Hours without ledger rows are skipped at once. The first call
-- starts at the hour of the ledger's earliest row, so the whole history gets
-- summarised, a share per call. Locks: the state row FOR UPDATE SKIP LOCKED
-- (a concurrent call that holds it is summarising: this one returns the
-- previous point instead of waiting). Reads the ledger per tenant by
-- (tenant_id, operation_lead, created_at). Errors: none.
CREATE FUNCTION cycles._report_summarise_spend(
    p_budget_ms integer DEFAULT 300,
    p_until     timestamptz DEFAULT NULL
) RETURNS timestamptz
LANGUAGE plpgsql
SET jit = off
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_target  timestamptz := date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC');
    v_oldest  timestamptz;
    v_from    timestamptz;
    v_next    timestamptz;
    v_first   timestamptz;
BEGIN
    -- No hour a running writer may still add rows to.
    SELECT min(a.xact_start) INTO v_oldest FROM pg_catalog.pg_stat_activity AS a
    WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL AND a.pid <> pg_catalog.pg_backend_pid();
    v_target := least(v_target, date_trunc('hour', v_oldest, 'UTC'),
                      date_trunc('hour', p_until, 'UTC'));
    SELECT s.summarised_to INTO v_from FROM cycles.report_summary_state AS s WHERE s.name = 'spend';
    IF v_from IS NULL THEN
        SELECT least(min(f.created_at), v_target) INTO v_first
        FROM cycles.tenants AS t
        CROSS JOIN (VALUES (true), (false)) AS v(lead)
        CROSS JOIN LATERAL (
            SELECT e.created_at FROM cycles.ledger_entries AS e
            WHERE e.tenant_id = t.tenant_id AND e.operation_lead = v.lead
            ORDER BY e.created_at LIMIT 1) AS f;
        v_first := date_trunc('hour', coalesce(v_first, v_target), 'UTC');
        INSERT INTO cycles.report_summary_state (name, summarised_from, summarised_to)
        VALUES ('spend', v_first, v_first)
        ON CONFLICT ON CONSTRAINT report_summary_state_pkey DO NOTHING;
    ELSIF v_from >= v_target THEN
        RETURN v_from;
    END IF;
    SELECT s.summarised_to INTO v_from FROM cycles.report_summary_state AS s
    WHERE s.name = 'spend' FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        SELECT s.summarised_to INTO v_from FROM cycles.report_summary_state AS s WHERE s.name = 'spend';
        RETURN v_from;
    END IF;
    WHILE v_from < v_target LOOP
        -- The next hour that has a ledger row to summarise, if any.
        SELECT min(f.created_at) INTO v_first
        FROM cycles.tenants AS t
        CROSS JOIN (VALUES (true), (false)) AS v(lead)
        CROSS JOIN LATERAL (
            SELECT e.created_at FROM cycles.ledger_entries AS e
            WHERE e.tenant_id = t.tenant_id AND e.operation_lead = v.lead
              AND e.created_at >= v_from AND e.created_at < v_target
            ORDER BY e.created_at LIMIT 1) AS f;
        IF v_first IS NULL THEN
            v_from := v_target;
            EXIT;
        END IF;
        v_from := greatest(v_from, date_trunc('hour', v_first, 'UTC'));
        -- Five minutes at a time (within one hour): a busy hour is summarised
        -- over several calls rather than in one long statement.
        v_next := least(v_target, v_from + interval '5 minutes', date_trunc('hour', v_from, 'UTC') + interval '1 hour');
        INSERT INTO cycles.report_spend_hours AS h (
            tenant_id, hour_start, operation_lead, scope, unit, action_kind, action_name, subject_workspace,
            subject_app, subject_workflow, subject_agent, subject_toolset,
            spent, debt, reserved, released, expired, charges)
        SELECT t.tenant_id, date_trunc('hour', v_from, 'UTC'), l.operation_lead, l.scope, l.unit, l.action_kind,
               l.action_name, l.subject_workspace, l.subject_app, l.subject_workflow, l.subject_agent,
               l.subject_toolset,
               sum(CASE WHEN l.operation IN ('COMMIT', 'EVENT') THEN l.spent_delta ELSE 0 END),
               sum(CASE WHEN l.operation IN ('COMMIT', 'EVENT') THEN l.debt_delta ELSE 0 END),
               sum(CASE WHEN l.operation = 'RESERVE' THEN l.reserved_delta ELSE 0 END),
               sum(CASE WHEN l.operation = 'RELEASE' THEN -l.reserved_delta ELSE 0 END),
               sum(CASE WHEN l.operation = 'EXPIRE' THEN -l.reserved_delta ELSE 0 END),
               count(*) FILTER (WHERE l.operation IN ('COMMIT', 'EVENT'))
        FROM cycles.tenants AS t
        CROSS JOIN LATERAL (
            SELECT e.operation_lead, e.scope, e.unit, e.action_kind, e.action_name, e.subject_workspace,
                   e.subject_app, e.subject_workflow, e.subject_agent, e.subject_toolset, e.operation,
                   e.spent_delta, e.debt_delta, e.reserved_delta
            FROM cycles.ledger_entries AS e
            WHERE e.tenant_id = t.tenant_id AND e.operation_lead IN (true, false)
              AND e.created_at >= v_from AND e.created_at < v_next
              AND e.operation IN ('RESERVE', 'COMMIT', 'RELEASE', 'EXPIRE', 'EVENT')
            OFFSET 0) AS l
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
        ON CONFLICT ON CONSTRAINT report_spend_hours_group_key
        DO UPDATE SET spent = h.spent + excluded.spent, debt = h.debt + excluded.debt,
                      reserved = h.reserved + excluded.reserved, released = h.released + excluded.released,
                      expired = h.expired + excluded.expired, charges = h.charges + excluded.charges;
        v_from := v_next;
        EXIT WHEN clock_timestamp() - v_started > make_interval(secs => p_budget_ms / 1000.0);
    END LOOP;
    UPDATE cycles.report_summary_state AS s SET summarised_to = v_from WHERE s.name = 'spend';
    RETURN v_from;
END;
$$;

-- cycles._report_summaries_reset: forgets the summaries, so that the next
-- summariser call starts again from the ledger's earliest row. For after a
-- load of back-dated ledger rows (which the summaries would otherwise never
-- see). Reports stay exact meanwhile (they read the ledger for what is not
-- summarised). Locks: the state row, the summaries (deleted). Errors: none.
CREATE FUNCTION cycles._report_summaries_reset() RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    DELETE FROM cycles.report_summary_state AS s WHERE s.name = 'spend';
    DELETE FROM cycles.report_spend_hours;
END;
$$;

-- cycles._report_summarised_hours: the part of [p_from, p_to) a report may
-- read from the summaries: the summarised whole UTC hours inside the range
-- that each lie inside one p_bucket of p_time_zone (every hour for 'total').
-- Empty when nothing is summarised. Arguments are already checked.
-- Reads the state row only. Errors: none.
CREATE FUNCTION cycles._report_summarised_hours(
    p_from      timestamptz,
    p_to        timestamptz,
    p_bucket    text,
    p_time_zone text
) RETURNS tstzmultirange
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_state cycles.report_summary_state;
    v_first timestamptz;
    v_end   timestamptz;
    v_hours tstzmultirange;
BEGIN
    SELECT s.* INTO v_state FROM cycles.report_summary_state AS s WHERE s.name = 'spend';
    IF v_state.name IS NULL THEN
        RETURN '{}'::tstzmultirange;
    END IF;
    -- The first whole hour at or after p_from; the end of the last one before p_to.
    v_first := greatest(date_trunc('hour', p_from + interval '1 hour' - interval '1 microsecond', 'UTC'),
                        v_state.summarised_from);
    v_end := least(date_trunc('hour', p_to, 'UTC'), v_state.summarised_to);
    IF v_first >= v_end THEN
        RETURN '{}'::tstzmultirange;
    END IF;
    IF p_bucket = 'total' THEN
        RETURN tstzmultirange(tstzrange(v_first, v_end));
    END IF;
    SELECT coalesce(range_agg(tstzrange(h.h, h.h + interval '1 hour')), '{}'::tstzmultirange) INTO v_hours
    FROM generate_series(v_first, v_end - interval '1 hour', interval '1 hour') AS h(h)
    WHERE date_trunc(p_bucket, h.h, p_time_zone)
          = date_trunc(p_bucket, h.h + interval '1 hour' - interval '1 microsecond', p_time_zone);
    RETURN v_hours;
END;
$$;

-- cycles._report_ledger_sql: the ledger rows in p_ranges as a FROM item (a
-- subquery), one UNION ALL arm per range with its bounds written out (see
-- cycles._report_ranges_sql); NULL for more than 64 ranges. The report's
-- tenant and other conditions reach into every arm, so each range is one
-- scan of the (tenant_id, operation_lead, created_at) index. One condition
-- ORing the ranges is estimated worse: the planner judges each range by all
-- tenants' rows in it (a busy current hour) and reads every row of the
-- tenant instead.
CREATE FUNCTION cycles._report_ledger_sql(p_ranges tstzmultirange) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_arms text[];
BEGIN
    SELECT array_agg('SELECT * FROM cycles.ledger_entries AS l WHERE '
                     || cycles._report_ranges_sql(tstzmultirange(r.r), 'l.created_at') ORDER BY lower(r.r))
    INTO v_arms
    FROM unnest(p_ranges) AS r(r);
    IF v_arms IS NULL THEN
        RETURN '(SELECT * FROM cycles.ledger_entries AS l WHERE false)';
    ELSIF cardinality(v_arms) > 64 THEN
        RETURN NULL;
    END IF;
    RETURN '(' || array_to_string(v_arms, ' UNION ALL ') || ')';
END;
$$;

-- cycles._report_ranges_sql: the condition "p_column in one of p_ranges"
-- as SQL text with the bounds written out, so that the planner sees each
-- range (reads each through an index, estimates rows right); 'false' for
-- no range; NULL for more than 64 ranges (the caller then reads the whole
-- range from the ledger). Bounds are ISO 8601 in UTC, whatever the session's
-- DateStyle. Errors: none.
CREATE FUNCTION cycles._report_ranges_sql(p_ranges tstzmultirange, p_column text) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_parts text[];
BEGIN
    SELECT array_agg(format('(%1$s >= %2$L::timestamptz AND %1$s < %3$L::timestamptz)', p_column,
                            CASE WHEN isfinite(lower(r.r)) THEN
                                     to_char(lower(r.r) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z" AD')
                                 ELSE lower(r.r)::text END,
                            CASE WHEN isfinite(upper(r.r)) THEN
                                     to_char(upper(r.r) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z" AD')
                                 ELSE upper(r.r)::text END)
                     ORDER BY lower(r.r))
    INTO v_parts
    FROM unnest(p_ranges) AS r(r);
    IF v_parts IS NULL THEN
        RETURN 'false';
    ELSIF cardinality(v_parts) > 64 THEN
        RETURN NULL;
    END IF;
    RETURN '(' || array_to_string(v_parts, ' OR ') || ')';
END;
$$;

-- Maintenance: retention of the tables that grow without bound, and the
-- election of the one process that runs each maintenance job.
--
-- Every server process (and every `cycles worker`) runs the maintenance loop,
-- so with several instances on one database N processes would prune N times.
-- Instead each job is claimed per interval: cycles.maintenance_claim moves
-- the job's next_due_at one interval ahead and succeeds for exactly one
-- caller per interval (the row update serialises claimers, and the
-- transaction-scoped advisory lock makes a concurrent claimer give up at once
-- instead of queueing). The winner then prunes in small batches, each its own
-- short transaction, and records the outcome with cycles.maintenance_finish.
-- A runner that dies mid-job leaves the rest for the next interval, when any
-- live process claims the job again: pruning is idempotent, so nothing is
-- done twice and nothing is lost. Only transaction-scoped locks are used,
-- which is what a transaction pooler (PgBouncer) can carry.
--
-- What is pruned (the ledger and the audit log never are; they are
-- append-only):
--   * idempotency records past their replay window (cycles.prune_idempotency_records);
--   * settled webhook deliveries and finished replay requests
--     (cycles.prune_webhook_deliveries);
--   * events no open delivery needs any more (cycles.prune_events);
--   * expired dashboard sessions (cycles.prune_dashboard_sessions);
--   * report summaries past their retention (cycles.prune_report_summaries).
-- Each prune function deletes at most p_batch_size rows per table and returns
-- {"deleted": n, "more": true|false}; "more" means a batch was full and the
-- caller should call again. Rows are picked FOR UPDATE SKIP LOCKED, so two
-- pruners (or a pruner and a request touching a row) never wait for each other.

-- Tables ----------------------------------------------------------------------

-- One row per job: when it may run next, and how its last run went.
CREATE TABLE cycles.maintenance_jobs (
    job              text        NOT NULL,
    next_due_at      timestamptz NOT NULL,
    runs             bigint      NOT NULL DEFAULT 0,
    last_runner      text,
    last_started_at  timestamptz,
    last_finished_at timestamptz,
    last_result      jsonb,
    CONSTRAINT maintenance_jobs_pkey PRIMARY KEY (job),
    CONSTRAINT maintenance_jobs_runs_nonnegative CHECK (runs >= 0)
);

-- One row per run, kept seven days: which process ran which job when, and
-- what it deleted (operators read it to see that each job runs once per
-- interval, whichever instance runs it).
CREATE TABLE cycles.maintenance_runs (
    job         text        NOT NULL,
    run         bigint      NOT NULL,
    runner      text,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    result      jsonb,
    CONSTRAINT maintenance_runs_pkey PRIMARY KEY (job, run),
    CONSTRAINT maintenance_runs_job_fkey FOREIGN KEY (job) REFERENCES cycles.maintenance_jobs (job),
    CONSTRAINT maintenance_runs_finished_after_start CHECK (finished_at IS NULL OR finished_at >= started_at)
);

CREATE INDEX maintenance_runs_started_idx ON cycles.maintenance_runs (job, started_at);

-- Retention of settled deliveries scans by completion time.
CREATE INDEX webhook_deliveries_settled_idx
    ON cycles.webhook_deliveries (completed_at) WHERE status IN ('SUCCESS', 'FAILED');

-- Private helpers ---------------------------------------------------------------

-- Refuses a batch size outside 1..100000 (the bound cycles.expire_due uses).
-- Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._require_batch_size(p_batch_size integer) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 100000 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'batch size must be between 1 and 100000');
    END IF;
END;
$$;

-- Election ----------------------------------------------------------------------

-- cycles.maintenance_claim: claims one run of job p_job for this interval.
--
-- Returns {"claimed": true, "run": n} to exactly one caller per p_interval_ms
-- (the first to call once the job is due), {"claimed": false} to every other.
-- The run is recorded in cycles.maintenance_runs with p_runner (who claimed
-- it, e.g. host:pid); runs older than seven days are deleted on the way.
--
-- Locks: a transaction-scoped advisory lock on the job (try only: a
-- concurrent claimer returns at once), then the job's row. Released at
-- commit, or when the claimer's connection drops.
--
-- Errors, in precedence order: INVALID_REQUEST (job name not 1..64
-- characters of a-z, 0-9 and _; interval outside 1 ms .. 7 days).
--
-- Invariant: two claims that succeed for one job start at least the
-- interval apart.
CREATE FUNCTION cycles.maintenance_claim(
    p_job         text,
    p_interval_ms bigint,
    p_runner      text DEFAULT NULL,
    p_ctx         jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_run bigint;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_job IS NULL OR p_job !~ '^[a-z0-9_]{1,64}$' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'job name must be 1 to 64 characters of a-z, 0-9 and _');
    END IF;
    IF p_interval_ms IS NULL OR p_interval_ms NOT BETWEEN 1 AND 604800000 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'interval must be between 1 ms and 7 days');
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('cycles.maintenance:' || p_job, 0)) THEN
        RETURN jsonb_build_object('claimed', false);
    END IF;

    INSERT INTO cycles.maintenance_jobs AS j (job, next_due_at) VALUES (p_job, '-infinity')
    ON CONFLICT ON CONSTRAINT maintenance_jobs_pkey DO NOTHING;
    UPDATE cycles.maintenance_jobs AS j SET
        next_due_at = v_now + make_interval(secs => p_interval_ms / 1000.0),
        runs = j.runs + 1,
        last_runner = left(p_runner, 200),
        last_started_at = v_now
    WHERE j.job = p_job AND j.next_due_at <= v_now
    RETURNING j.runs INTO v_run;
    IF v_run IS NULL THEN
        RETURN jsonb_build_object('claimed', false);
    END IF;

    INSERT INTO cycles.maintenance_runs (job, run, runner, started_at)
    VALUES (p_job, v_run, left(p_runner, 200), v_now);
    DELETE FROM cycles.maintenance_runs AS r
    WHERE r.job = p_job AND r.started_at < v_now - interval '7 days';
    RETURN jsonb_build_object('claimed', true, 'run', v_run);
END;
$$;

-- cycles.maintenance_finish: records the outcome of a claimed run (what the
-- runner deleted, or the error that stopped it). Finishing a run twice keeps
-- the first outcome. Returns {}.
-- Locks: the run's row, then the job's row.
-- Errors: NOT_FOUND (no such run).
CREATE FUNCTION cycles.maintenance_finish(
    p_job    text,
    p_run    bigint,
    p_result jsonb DEFAULT '{}',
    p_ctx    jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_now     timestamptz := clock_timestamp();
    v_started timestamptz;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    UPDATE cycles.maintenance_runs AS r SET finished_at = v_now, result = coalesce(p_result, '{}'::jsonb)
    WHERE r.job = p_job AND r.run = p_run AND r.finished_at IS NULL
    RETURNING r.started_at INTO v_started;
    IF v_started IS NULL THEN
        IF NOT EXISTS (SELECT FROM cycles.maintenance_runs AS r WHERE r.job = p_job AND r.run = p_run) THEN
            PERFORM cycles._fail('NOT_FOUND', format('maintenance run %s of %L not found', p_run, p_job));
        END IF;
        RETURN '{}'::jsonb;
    END IF;
    UPDATE cycles.maintenance_jobs AS j SET last_finished_at = v_now, last_result = coalesce(p_result, '{}'::jsonb)
    WHERE j.job = p_job AND j.runs = p_run;
    RETURN '{}'::jsonb;
END;
$$;

-- cycles.maintenance_status: every job with its schedule and last outcome,
-- for operators: {"jobs": [{job, runs, next_due_at, last_runner,
-- last_started_at, last_finished_at, last_result}]}. Takes no locks.
CREATE FUNCTION cycles.maintenance_status(p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_jobs jsonb;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'job', j.job, 'runs', j.runs,
               'next_due_at', CASE WHEN isfinite(j.next_due_at) THEN cycles._iso8601(j.next_due_at) END,
               'last_runner', j.last_runner,
               'last_started_at', cycles._iso8601(j.last_started_at),
               'last_finished_at', cycles._iso8601(j.last_finished_at),
               'last_result', j.last_result)) ORDER BY j.job), '[]'::jsonb)
    INTO v_jobs
    FROM cycles.maintenance_jobs AS j;
    RETURN jsonb_build_object('jobs', v_jobs);
END;
$$;

-- Retention ---------------------------------------------------------------------

-- cycles.prune_idempotency_records: deletes up to p_batch_size idempotency
-- records that can no longer be replayed or are older than the replay window.
--
-- A record is deleted when its expires_at has passed (a replay would be
-- refused anyway), or when it was written more than p_retention_hours ago --
-- except the record of a reserve whose reservation is still ACTIVE: a replay
-- of that reserve must keep naming the live reservation. Records are written
-- with a 7-day expiry, so p_retention_hours can only shorten the window; the
-- protocol asks for at least 24 hours.
--
-- Locks: the records deleted (FOR UPDATE SKIP LOCKED: a record being
-- replayed or rewritten right now is left for the next batch).
-- Errors: INVALID_REQUEST (retention outside 24..168 hours; batch size
-- outside 1..100000).
CREATE FUNCTION cycles.prune_idempotency_records(
    p_retention_hours integer DEFAULT 168,
    p_batch_size      integer DEFAULT 1000,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_now     timestamptz := clock_timestamp();
    v_deleted integer;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_retention_hours IS NULL OR p_retention_hours NOT BETWEEN 24 AND 168 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'idempotency retention must be between 24 and 168 hours');
    END IF;
    PERFORM cycles._require_batch_size(p_batch_size);
    -- A record written with the default 7-day expiry and older than the
    -- window expires before now + (168h - window): that bound lets the
    -- expiry index find the candidates. Records kept longer for a live
    -- reservation lie beyond it, and are kept anyway.
    DELETE FROM cycles.idempotency_records AS i
    WHERE (i.tenant_id, i.endpoint, i.idempotency_key) IN (
        SELECT o.tenant_id, o.endpoint, o.idempotency_key
        FROM cycles.idempotency_records AS o
        WHERE o.expires_at < v_now + make_interval(hours => 168 - p_retention_hours)
          AND (o.expires_at <= v_now
               OR (o.created_at < v_now - make_interval(hours => p_retention_hours)
                   AND NOT EXISTS (
                       SELECT FROM cycles.reservations AS r
                       WHERE o.endpoint = 'reserve' AND r.tenant_id = o.tenant_id
                         AND r.reservation_id = o.reservation_id
                         AND r.status = 'ACTIVE')))
        ORDER BY o.expires_at
        LIMIT p_batch_size
        FOR UPDATE OF o SKIP LOCKED);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted, 'more', v_deleted >= p_batch_size);
END;
$$;

-- cycles.prune_webhook_deliveries: deletes up to p_batch_size settled
-- deliveries (SUCCESS or FAILED) completed more than p_retention_days ago,
-- and up to p_batch_size replay requests as old with no delivery still open.
-- Pending and retrying deliveries are never deleted.
-- Locks: the rows deleted (FOR UPDATE SKIP LOCKED).
-- Errors: INVALID_REQUEST (retention outside 1..36500 days; batch size
-- outside 1..100000).
CREATE FUNCTION cycles.prune_webhook_deliveries(
    p_retention_days integer DEFAULT 14,
    p_batch_size     integer DEFAULT 1000,
    p_ctx            jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_cutoff     timestamptz;
    v_deliveries integer;
    v_replays    integer;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_retention_days IS NULL OR p_retention_days NOT BETWEEN 1 AND 36500 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'delivery retention must be between 1 and 36500 days');
    END IF;
    PERFORM cycles._require_batch_size(p_batch_size);
    v_cutoff := clock_timestamp() - make_interval(days => p_retention_days);
    DELETE FROM cycles.webhook_deliveries AS d
    WHERE d.delivery_id IN (
        SELECT o.delivery_id
        FROM cycles.webhook_deliveries AS o
        WHERE o.status IN ('SUCCESS', 'FAILED') AND o.completed_at < v_cutoff
        ORDER BY o.completed_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_deliveries = ROW_COUNT;
    DELETE FROM cycles.webhook_replays AS r
    WHERE r.replay_id IN (
        SELECT o.replay_id
        FROM cycles.webhook_replays AS o
        WHERE o.created_at < v_cutoff
          AND NOT EXISTS (
              SELECT FROM cycles.webhook_deliveries AS d
              WHERE d.replay_id = o.replay_id AND d.status IN ('PENDING', 'RETRYING'))
        ORDER BY o.created_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_replays = ROW_COUNT;
    RETURN jsonb_build_object(
        'deleted', v_deliveries + v_replays,
        'more', v_deliveries >= p_batch_size OR v_replays >= p_batch_size);
END;
$$;

-- cycles.prune_events: deletes up to p_batch_size events older than
-- p_retention_days that no open (PENDING or RETRYING) delivery still needs.
-- The ledger keeps every balance change whatever happens to events.
-- Locks: the events deleted (FOR UPDATE SKIP LOCKED).
-- Errors: INVALID_REQUEST (retention outside 1..36500 days; batch size
-- outside 1..100000).
CREATE FUNCTION cycles.prune_events(
    p_retention_days integer DEFAULT 90,
    p_batch_size     integer DEFAULT 1000,
    p_ctx            jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_deleted integer;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_retention_days IS NULL OR p_retention_days NOT BETWEEN 1 AND 36500 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'event retention must be between 1 and 36500 days');
    END IF;
    PERFORM cycles._require_batch_size(p_batch_size);
    DELETE FROM cycles.events AS e
    WHERE e.seq IN (
        SELECT o.seq
        FROM cycles.events AS o
        WHERE o.created_at < clock_timestamp() - make_interval(days => p_retention_days)
          AND NOT EXISTS (
              SELECT FROM cycles.webhook_deliveries AS d
              WHERE d.event_seq = o.seq AND d.status IN ('PENDING', 'RETRYING'))
        ORDER BY o.created_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted, 'more', v_deleted >= p_batch_size);
END;
$$;

-- cycles.prune_dashboard_sessions: deletes up to p_batch_size dashboard
-- sessions past their expiry (a login also removes them, but a dashboard
-- nobody logs into again would keep them forever).
-- Locks: the sessions deleted (FOR UPDATE SKIP LOCKED).
-- Errors: INVALID_REQUEST (batch size outside 1..100000).
CREATE FUNCTION cycles.prune_dashboard_sessions(
    p_batch_size integer DEFAULT 1000,
    p_ctx        jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_deleted integer;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    PERFORM cycles._require_batch_size(p_batch_size);
    DELETE FROM cycles.dashboard_sessions AS s
    WHERE s.session_hash IN (
        SELECT o.session_hash
        FROM cycles.dashboard_sessions AS o
        WHERE o.expires_at <= clock_timestamp()
        ORDER BY o.expires_at
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted, 'more', v_deleted >= p_batch_size);
END;
$$;

-- cycles.summarise_dashboard_spend: brings the dashboard's spend summaries
-- up to date for about p_budget_ms of work (cycles._dashboard_summarise_spend),
-- so that the overview finds them current instead of catching up itself.
-- Returns {"summarised_to", "more"}: more is true while hours that ended
-- more than two minutes ago remain to be summarised.
-- Locks: the summaries' state row (SKIP LOCKED: a concurrent caller wins).
-- Errors: INVALID_REQUEST (budget outside 10..60000 ms).
CREATE FUNCTION cycles.summarise_dashboard_spend(
    p_budget_ms integer DEFAULT 1000,
    p_ctx       jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_to timestamptz;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_budget_ms IS NULL OR p_budget_ms NOT BETWEEN 10 AND 60000 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'budget must be between 10 and 60000 milliseconds');
    END IF;
    v_to := cycles._dashboard_summarise_spend(p_budget_ms);
    RETURN jsonb_build_object(
        'summarised_to', to_char(v_to AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'more', v_to < date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC'));
END;
$$;

-- cycles.summarise_report_spend: brings the reports' hourly summaries
-- (sql/39_reporting_summaries.sql) up to date for about p_budget_ms of work
-- (cycles._report_summarise_spend), so that reports read a day of summary
-- rows rather than a day of ledger rows. Returns {"summarised_to", "more"}:
-- more is true while this call moved forward and final hours remain (a call
-- held back by a running transaction reports no more, so the loop does not
-- spin until it ends).
-- Locks: the summaries' state row (SKIP LOCKED: a concurrent caller wins).
-- Errors: INVALID_REQUEST (budget outside 10..60000 ms).
CREATE FUNCTION cycles.summarise_report_spend(
    p_budget_ms integer DEFAULT 1000,
    p_ctx       jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_before timestamptz;
    v_to     timestamptz;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_budget_ms IS NULL OR p_budget_ms NOT BETWEEN 10 AND 60000 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'budget must be between 10 and 60000 milliseconds');
    END IF;
    SELECT s.summarised_to INTO v_before FROM cycles.report_summary_state AS s WHERE s.name = 'spend';
    v_to := cycles._report_summarise_spend(p_budget_ms);
    RETURN jsonb_build_object(
        'summarised_to', to_char(v_to AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'more', v_to > coalesce(v_before, '-infinity')
                AND v_to < date_trunc('hour', clock_timestamp() - interval '2 minutes', 'UTC'));
END;
$$;

-- cycles.prune_report_summaries: deletes up to p_batch_size report summary
-- rows of hours older than p_retention_days (reports over older ranges then
-- read the ledger, exactly as before). First moves the summaries' start
-- past those hours, in the same transaction, so no report reads a half-pruned
-- hour. Locks: the state row; the rows deleted (FOR UPDATE SKIP LOCKED).
-- Errors: INVALID_REQUEST (retention outside 1..36500 days, batch size
-- outside 1..100000).
CREATE FUNCTION cycles.prune_report_summaries(
    p_retention_days integer DEFAULT 400,
    p_batch_size     integer DEFAULT 1000,
    p_ctx            jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_cutoff  timestamptz;
    v_deleted integer;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_retention_days IS NULL OR p_retention_days NOT BETWEEN 1 AND 36500 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'retention must be between 1 and 36500 days');
    END IF;
    PERFORM cycles._require_batch_size(p_batch_size);
    v_cutoff := date_trunc('hour', clock_timestamp() - make_interval(days => p_retention_days), 'UTC');
    UPDATE cycles.report_summary_state AS s SET summarised_from = least(v_cutoff, s.summarised_to)
    WHERE s.name = 'spend' AND s.summarised_from < least(v_cutoff, s.summarised_to);
    DELETE FROM cycles.report_spend_hours AS h
    WHERE (h.tenant_id, h.summary_id) IN (
        SELECT o.tenant_id, o.summary_id
        FROM cycles.report_spend_hours AS o
        WHERE o.hour_start < v_cutoff
        ORDER BY o.hour_start
        LIMIT p_batch_size
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('deleted', v_deleted, 'more', v_deleted >= p_batch_size);
END;
$$;

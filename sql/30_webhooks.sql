-- Webhooks: subscriptions, durable delivery from the outbox, history, replay
-- and retention.
--
-- How delivery works, and why it is at-least-once, ordered and never sent
-- twice by two workers:
--
-- * Fan-out at emit time. An AFTER INSERT trigger on cycles.events writes one
--   cycles.webhook_deliveries row per matching ACTIVE subscription, in the
--   same transaction as the event (and so as the change that caused it). A
--   committed event therefore always has its delivery rows committed with it,
--   and a rolled-back change leaves none. Scanning cycles.events by seq with a
--   cursor would not be safe: identity values are handed out at insert, not at
--   commit, so a slow transaction can commit an event *below* a cursor that
--   has already moved past it. The trigger's cost is one lookup in a partial
--   index of ACTIVE subscriptions of the event's tenant (and __system__); most
--   runtime calls emit no event at all. Only when a delivery row is written
--   does it pg_notify('cycles_webhooks'), so the hot path never takes the
--   notification queue lock.
--
-- * Claiming. A worker opens a transaction, calls
--   cycles.claim_webhook_deliveries (which locks due rows FOR UPDATE SKIP
--   LOCKED), POSTs them, records each outcome with
--   cycles.complete_webhook_delivery and commits. The row locks are held while
--   the requests are in flight, so a second worker skips those rows: no double
--   send. If the worker dies (even SIGKILL), its connection drops, the
--   transaction rolls back and the rows are due again: at-least-once. The only
--   duplicates are the requests that were in flight when it died; they carry
--   the same event id (X-Cycles-Event-Id) for the receiver to dedupe.
--
-- * Ordering. Only the head of a subscription's queue may be claimed: the
--   oldest (by delivery seq) delivery still PENDING or RETRYING. While the head
--   waits for a retry, later events wait behind it; once it succeeds or fails
--   for good, the next one becomes the head. A locked head makes the whole
--   subscription invisible to other workers. Deliveries of events from
--   concurrent transactions follow commit order, which is the only order such
--   events have. Test probes (kind 'test') stand outside the queue.
--
-- * Retries follow the subscription's WebhookRetryPolicy: after attempt n
--   fails the next is due after min(initial_delay_ms * backoff_multiplier^(n-1),
--   max_delay_ms); after 1 + max_retries attempts the delivery is FAILED, the
--   subscription's consecutive_failures grows by one and
--   system.webhook_delivery_failed is written. When consecutive_failures
--   reaches disable_after_failures the subscription becomes DISABLED and
--   webhook.disabled is written. A success resets the counter.
--
-- Locks, in the one order every path takes them: tenant row (admin changes,
-- FOR SHARE; tenant close, FOR NO KEY UPDATE), then subscription row, then
-- delivery rows. The worker holds delivery rows before it updates their
-- subscription, so every path that changes delivery rows while holding a
-- subscription lock skips locked ones (SKIP LOCKED) instead of waiting: the
-- in-flight delivery is settled by the worker when it completes.
--
-- The two normative subscription invariants are named CHECK constraints
-- (nothing, psql included, can store a violating row) and are checked first
-- by every function, which reports INVALID_REQUEST and stores nothing:
--   1. selector presence: event_types or event_categories is non-empty;
--   2. a subscription owned by a concrete tenant (not __system__) selects only
--      tenant-accessible events: budget.*, reservation.*, tenant.* types and
--      the budget, reservation and tenant categories.

-- Event vocabulary ------------------------------------------------------------

-- Invariant 2 as a predicate: every selector is tenant-accessible. IMMUTABLE,
-- so the CHECK constraint can use it.
CREATE FUNCTION cycles._webhook_selectors_tenant_accessible(p_event_types text[], p_event_categories text[])
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN p_event_categories <@ ARRAY['budget', 'reservation', 'tenant']
        AND NOT EXISTS (
            SELECT FROM unnest(p_event_types) AS t(event_type)
            WHERE split_part(t.event_type, '.', 1) NOT IN ('budget', 'reservation', 'tenant'));
END;
$$;

-- Tables ----------------------------------------------------------------------

CREATE TABLE cycles.webhook_subscriptions (
    seq                    bigint      GENERATED ALWAYS AS IDENTITY,
    subscription_id        text        NOT NULL,
    tenant_id              text        NOT NULL,
    name                   text,
    description            text,
    url                    text        NOT NULL,
    event_types            text[]      NOT NULL DEFAULT '{}',
    event_categories       text[]      NOT NULL DEFAULT '{}',
    scope_filter           text,
    thresholds             jsonb,
    signing_secret         text        NOT NULL,
    headers                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status                 text        NOT NULL DEFAULT 'ACTIVE',
    retry_policy           jsonb       NOT NULL,
    disable_after_failures integer     NOT NULL DEFAULT 10,
    consecutive_failures   integer     NOT NULL DEFAULT 0,
    metadata               jsonb,
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_triggered_at      timestamptz,
    last_success_at        timestamptz,
    last_failure_at        timestamptz,
    CONSTRAINT webhook_subscriptions_pkey PRIMARY KEY (tenant_id, subscription_id),
    CONSTRAINT webhook_subscriptions_seq_key UNIQUE (tenant_id, seq),
    CONSTRAINT webhook_subscriptions_selector_present CHECK (
        cardinality(event_types) > 0 OR cardinality(event_categories) > 0),
    CONSTRAINT webhook_subscriptions_tenant_selectors CHECK (
        tenant_id = '__system__' OR cycles._webhook_selectors_tenant_accessible(event_types, event_categories)),
    CONSTRAINT webhook_subscriptions_status_valid CHECK (status IN ('ACTIVE', 'PAUSED', 'DISABLED')),
    CONSTRAINT webhook_subscriptions_url_valid CHECK (
        char_length(url) <= 2048 AND url ~ '^https?://[^/?#[:space:]]+'),
    CONSTRAINT webhook_subscriptions_secret_length CHECK (char_length(signing_secret) BETWEEN 8 AND 512),
    CONSTRAINT webhook_subscriptions_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT webhook_subscriptions_retry_policy_valid CHECK (
        jsonb_typeof(retry_policy) = 'object'
        AND retry_policy ?& ARRAY['max_retries', 'initial_delay_ms', 'backoff_multiplier', 'max_delay_ms']
        AND (retry_policy ->> 'max_retries')::integer BETWEEN 0 AND 10
        AND (retry_policy ->> 'initial_delay_ms')::integer BETWEEN 100 AND 60000
        AND (retry_policy ->> 'backoff_multiplier')::numeric BETWEEN 1 AND 10
        AND (retry_policy ->> 'max_delay_ms')::integer BETWEEN 1000 AND 3600000),
    CONSTRAINT webhook_subscriptions_disable_after_positive CHECK (disable_after_failures >= 1),
    CONSTRAINT webhook_subscriptions_failures_nonnegative CHECK (consecutive_failures >= 0)
);

-- The fan-out lookup: ACTIVE subscriptions of one tenant (or __system__).
CREATE INDEX webhook_subscriptions_active_tenant
    ON cycles.webhook_subscriptions (tenant_id) WHERE status = 'ACTIVE';
-- Keys lead with tenant_id (docs/scaling.md); the admin API and the delivery
-- worker name a subscription by id alone, and list all of them by seq.
CREATE INDEX webhook_subscriptions_id_idx ON cycles.webhook_subscriptions (subscription_id);
CREATE INDEX webhook_subscriptions_seq_idx ON cycles.webhook_subscriptions (seq);

-- One row per (event, subscription) delivery, kept as history once settled.
-- No foreign keys: history outlives a deleted subscription until retention
-- prunes it, and an event may be pruned once its deliveries are settled.
CREATE TABLE cycles.webhook_deliveries (
    seq              bigint      GENERATED ALWAYS AS IDENTITY,
    delivery_id      text        NOT NULL,
    subscription_id  text        NOT NULL,
    tenant_id        text        NOT NULL,
    kind             text        NOT NULL DEFAULT 'live',
    replay_id        text,
    event_seq        bigint,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    test_event       jsonb,
    status           text        NOT NULL DEFAULT 'PENDING',
    attempts         integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempted_at     timestamptz,
    completed_at     timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    response_status  integer,
    response_time_ms integer,
    error_message    text,
    trace_id         text,
    trace_flags      text        NOT NULL DEFAULT '01',
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (tenant_id, delivery_id),
    CONSTRAINT webhook_deliveries_seq_key UNIQUE (tenant_id, seq),
    CONSTRAINT webhook_deliveries_kind_valid CHECK (kind IN ('live', 'replay', 'test')),
    CONSTRAINT webhook_deliveries_status_valid CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED', 'RETRYING')),
    CONSTRAINT webhook_deliveries_event_source CHECK (
        (kind = 'test') = (event_seq IS NULL) AND (kind = 'test') = (test_event IS NOT NULL)),
    CONSTRAINT webhook_deliveries_replay_id_iff_replay CHECK ((kind = 'replay') = (replay_id IS NOT NULL)),
    CONSTRAINT webhook_deliveries_attempts_nonnegative CHECK (attempts >= 0),
    CONSTRAINT webhook_deliveries_completed_iff_settled CHECK (
        (status IN ('SUCCESS', 'FAILED')) = (completed_at IS NOT NULL)),
    CONSTRAINT webhook_deliveries_trace_flags_hex CHECK (trace_flags ~ '^[0-9a-f]{2}$')
);

-- Due work, and the head of each subscription's queue.
CREATE INDEX webhook_deliveries_due
    ON cycles.webhook_deliveries (next_attempt_at) WHERE status IN ('PENDING', 'RETRYING');
CREATE INDEX webhook_deliveries_open_by_subscription
    ON cycles.webhook_deliveries (subscription_id, seq) WHERE status IN ('PENDING', 'RETRYING');
-- The worker names a delivery by id alone.
CREATE INDEX webhook_deliveries_id_idx ON cycles.webhook_deliveries (delivery_id);
-- History listing, newest first.
CREATE INDEX webhook_deliveries_history ON cycles.webhook_deliveries (subscription_id, seq DESC);
-- Retention: does a pending delivery still need this event?
CREATE INDEX webhook_deliveries_open_event
    ON cycles.webhook_deliveries (event_seq) WHERE status IN ('PENDING', 'RETRYING');

-- Replay windows of __system__ subscriptions and retention scan events by
-- time alone.
CREATE INDEX events_created_at_idx ON cycles.events (created_at);

-- Replay requests, for the 202 body and the audit trail. A replay is running
-- while any of its deliveries is still PENDING or RETRYING.
CREATE TABLE cycles.webhook_replays (
    replay_id       text        NOT NULL,
    subscription_id text        NOT NULL,
    tenant_id       text        NOT NULL,
    window_from     timestamptz NOT NULL,
    window_to       timestamptz NOT NULL,
    event_types     text[],
    max_events      integer     NOT NULL,
    events_queued   integer     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT webhook_replays_pkey PRIMARY KEY (tenant_id, replay_id),
    CONSTRAINT webhook_replays_window_ordered CHECK (window_from <= window_to),
    CONSTRAINT webhook_replays_max_events_range CHECK (max_events BETWEEN 1 AND 1000),
    CONSTRAINT webhook_replays_queued_range CHECK (events_queued BETWEEN 0 AND max_events)
);

CREATE INDEX webhook_replays_id_idx ON cycles.webhook_replays (replay_id);

-- Rendering ---------------------------------------------------------------------

-- The spec's WebhookSubscription: no secret, header values masked, no nulls.
CREATE FUNCTION cycles._webhook_json(p_sub cycles.webhook_subscriptions) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'subscription_id', p_sub.subscription_id,
        'tenant_id', p_sub.tenant_id,
        'name', p_sub.name,
        'description', p_sub.description,
        'url', p_sub.url,
        'event_types', to_jsonb(p_sub.event_types),
        'event_categories', to_jsonb(p_sub.event_categories),
        'scope_filter', p_sub.scope_filter,
        'thresholds', p_sub.thresholds,
        'headers', CASE WHEN p_sub.headers <> '{}'::jsonb THEN (
            SELECT jsonb_object_agg(h.key, '********') FROM jsonb_each(p_sub.headers) AS h) END,
        'status', p_sub.status,
        'retry_policy', p_sub.retry_policy,
        'disable_after_failures', p_sub.disable_after_failures,
        'consecutive_failures', p_sub.consecutive_failures,
        'created_at', cycles._iso8601(p_sub.created_at),
        'updated_at', cycles._iso8601(p_sub.updated_at),
        'last_triggered_at', cycles._iso8601(p_sub.last_triggered_at),
        'last_success_at', cycles._iso8601(p_sub.last_success_at),
        'last_failure_at', cycles._iso8601(p_sub.last_failure_at),
        'metadata', p_sub.metadata));
END;
$$;

-- The spec's WebhookDelivery. attempted_at is the latest attempt, or the time
-- the delivery was queued while it has not been attempted yet.
CREATE FUNCTION cycles._webhook_delivery_json(p_delivery cycles.webhook_deliveries) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
BEGIN
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'delivery_id', p_delivery.delivery_id,
        'subscription_id', p_delivery.subscription_id,
        'event_id', p_delivery.event_id,
        'event_type', p_delivery.event_type,
        'status', p_delivery.status,
        'attempted_at', cycles._iso8601(coalesce(p_delivery.attempted_at, p_delivery.created_at)),
        'completed_at', cycles._iso8601(p_delivery.completed_at),
        'attempts', p_delivery.attempts,
        'response_status', p_delivery.response_status,
        'response_time_ms', p_delivery.response_time_ms,
        'error_message', p_delivery.error_message,
        'next_retry_at', CASE WHEN p_delivery.status = 'RETRYING'
            THEN cycles._iso8601(p_delivery.next_attempt_at) END,
        'trace_id', p_delivery.trace_id,
        'trace_flags', p_delivery.trace_flags));
END;
$$;

-- Matching ----------------------------------------------------------------------

-- Whether a subscription wants an event. scope_filter: NULL matches
-- everything; '*' any scoped event; 'x/*' the strict descendants of x;
-- anything else that exact scope. An unscoped event never matches a filter.
-- A tenant-owned subscription never receives an admin-only event (the
-- constraint already keeps its selectors tenant-accessible; this guards the
-- delivery path as well). system.webhook_test is only ever sent by /test.
CREATE FUNCTION cycles._webhook_matches(
    p_sub        cycles.webhook_subscriptions,
    p_event_type text,
    p_category   text,
    p_scope      text
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_event_type = 'system.webhook_test' THEN
        RETURN false;
    END IF;
    IF NOT (p_event_type = ANY (p_sub.event_types) OR p_category = ANY (p_sub.event_categories)) THEN
        RETURN false;
    END IF;
    IF p_sub.tenant_id <> '__system__' AND p_category NOT IN ('budget', 'reservation', 'tenant') THEN
        RETURN false;
    END IF;
    IF p_sub.scope_filter IS NULL THEN
        RETURN true;
    END IF;
    IF p_scope IS NULL THEN
        RETURN false;
    END IF;
    IF p_sub.scope_filter = '*' THEN
        RETURN true;
    END IF;
    IF right(p_sub.scope_filter, 2) = '/*' THEN
        RETURN left(p_scope, char_length(p_sub.scope_filter) - 1) = left(p_sub.scope_filter, -1)
            AND char_length(p_scope) > char_length(p_sub.scope_filter) - 1;
    END IF;
    RETURN p_scope = p_sub.scope_filter;
END;
$$;

-- Fan-out trigger (see the header): one delivery per matching ACTIVE
-- subscription of the event's tenant or of __system__. A
-- system.webhook_delivery_failed event is not sent to the subscription it is
-- about (a failing endpoint would otherwise feed itself forever).
CREATE FUNCTION cycles._webhook_fan_out() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_count integer;
BEGIN
    INSERT INTO cycles.webhook_deliveries (
        delivery_id, subscription_id, tenant_id, kind, event_seq, event_id, event_type, trace_id)
    SELECT cycles._new_id('del_', 16), s.subscription_id, s.tenant_id, 'live', NEW.seq, NEW.event_id,
           NEW.event_type, NEW.trace_id
    FROM cycles.webhook_subscriptions AS s
    WHERE s.status = 'ACTIVE'
      AND s.tenant_id IN (NEW.tenant_id, '__system__')
      AND cycles._webhook_matches(s, NEW.event_type, NEW.category, NEW.scope)
      AND NOT (NEW.event_type = 'system.webhook_delivery_failed'
               AND NEW.data ->> 'subscription_id' = s.subscription_id)
    ORDER BY s.seq;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('cycles_webhooks', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_webhook_fan_out
    AFTER INSERT ON cycles.events
    FOR EACH ROW EXECUTE FUNCTION cycles._webhook_fan_out();

-- Validation ----------------------------------------------------------------------

-- A text[] from a JSON array of strings (NULL when absent or null).
CREATE FUNCTION cycles._webhook_text_array(p_request jsonb, p_key text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_value jsonb := p_request -> p_key;
BEGIN
    IF v_value IS NULL OR v_value = 'null'::jsonb THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_value) <> 'array' OR jsonb_array_length(v_value) > 100
       OR EXISTS (SELECT FROM jsonb_array_elements(v_value) AS e WHERE jsonb_typeof(e) <> 'string') THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('%s must be an array of at most 100 strings', p_key));
    END IF;
    RETURN ARRAY(SELECT DISTINCT e FROM jsonb_array_elements_text(v_value) AS e ORDER BY e);
END;
$$;

-- Known event types and categories, then the two invariants. Errors:
-- INVALID_REQUEST (the offending entries in details).
CREATE FUNCTION cycles._webhook_check_selectors(
    p_tenant_id        text,
    p_event_types      text[],
    p_event_categories text[]
) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_bad text[];
BEGIN
    SELECT array_agg(t) INTO v_bad FROM unnest(p_event_types) AS t
    WHERE t <> ALL (cycles._event_types()) AND t !~ '^custom\.[a-z0-9_.]+$';
    IF v_bad IS NOT NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', format('unknown event types: %s', array_to_string(v_bad, ', ')),
            jsonb_build_object('event_types', to_jsonb(v_bad)));
    END IF;
    SELECT array_agg(c) INTO v_bad FROM unnest(p_event_categories) AS c
    WHERE c NOT IN ('budget', 'tenant', 'api_key', 'policy', 'reservation', 'system', 'webhook');
    IF v_bad IS NOT NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('unknown event categories: %s', array_to_string(v_bad, ', ')),
            jsonb_build_object('event_categories', to_jsonb(v_bad)));
    END IF;
    IF cardinality(p_event_types) = 0 AND cardinality(p_event_categories) = 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'a subscription needs at least one selector: event_types or event_categories must be non-empty');
    END IF;
    IF p_tenant_id <> '__system__'
       AND NOT cycles._webhook_selectors_tenant_accessible(p_event_types, p_event_categories) THEN
        SELECT array_agg(x) INTO v_bad FROM (
            SELECT t AS x FROM unnest(p_event_types) AS t
            WHERE split_part(t, '.', 1) NOT IN ('budget', 'reservation', 'tenant')
            UNION ALL
            SELECT c FROM unnest(p_event_categories) AS c
            WHERE c NOT IN ('budget', 'reservation', 'tenant')) AS restricted;
        PERFORM cycles._fail('INVALID_REQUEST',
            format('a tenant-owned subscription may only select budget, reservation and tenant events; '
                   'admin-only: %s', array_to_string(v_bad, ', ')),
            jsonb_build_object('restricted', to_jsonb(v_bad)));
    END IF;
END;
$$;

-- The URL's shape: http(s), a host, at most 2048 characters. Whether https
-- is required and which addresses are allowed is server configuration,
-- checked by the server on create/update and again by the worker before
-- every request. Errors: WEBHOOK_URL_INVALID.
CREATE FUNCTION cycles._webhook_check_url(p_url text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_url IS NULL OR char_length(p_url) > 2048 OR p_url !~ '^https?://[^/?#[:space:]]+'
       OR p_url ~ '[[:space:][:cntrl:]]' THEN
        PERFORM cycles._fail('WEBHOOK_URL_INVALID',
            'url must be an http(s) URL of at most 2048 characters',
            jsonb_build_object('url', left(p_url, 256)));
    END IF;
    RETURN p_url;
END;
$$;

-- A full WebhookRetryPolicy from a partial one (spec defaults). Errors:
-- INVALID_REQUEST.
CREATE FUNCTION cycles._webhook_retry_policy(p_policy jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v_policy jsonb := cycles._require_known_options(
        p_policy, ARRAY['max_retries', 'initial_delay_ms', 'backoff_multiplier', 'max_delay_ms'], 'retry_policy field');
    v_multiplier jsonb := v_policy -> 'backoff_multiplier';
BEGIN
    IF v_multiplier IS NULL OR v_multiplier = 'null'::jsonb THEN
        v_multiplier := '2.0';
    ELSIF jsonb_typeof(v_multiplier) <> 'number' OR v_multiplier::text::numeric NOT BETWEEN 1 AND 10 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'backoff_multiplier must be a number between 1 and 10');
    END IF;
    RETURN jsonb_build_object(
        'max_retries', cycles._json_int(v_policy, 'max_retries', 0, 10, 5),
        'initial_delay_ms', cycles._json_int(v_policy, 'initial_delay_ms', 100, 60000, 1000),
        'backoff_multiplier', v_multiplier,
        'max_delay_ms', cycles._json_int(v_policy, 'max_delay_ms', 1000, 3600000, 60000));
END;
$$;

-- Custom headers: at most 32 string values with token names, none of the
-- headers the delivery itself sets. Errors: INVALID_REQUEST.
CREATE FUNCTION cycles._webhook_headers(p_headers jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_headers IS NULL OR p_headers = 'null'::jsonb THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_headers) <> 'object' OR (SELECT count(*) FROM jsonb_each(p_headers)) > 32
       OR EXISTS (
           SELECT FROM jsonb_each(p_headers) AS h
           WHERE jsonb_typeof(h.value) <> 'string'
              OR h.key !~ '^[A-Za-z0-9!#$%&''*+.^_`|~-]{1,128}$'
              OR char_length(h.value #>> '{}') > 4096
              OR (h.value #>> '{}') !~ '^[\x20-\x7e]*$') THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'headers must be an object of at most 32 header names mapped to printable ASCII values');
    END IF;
    IF EXISTS (
        SELECT FROM jsonb_object_keys(p_headers) AS k
        WHERE lower(k) IN ('content-type', 'content-length', 'host', 'traceparent', 'user-agent',
                           'x-request-id', 'transfer-encoding', 'connection')
           OR lower(k) LIKE 'x-cycles-%') THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'headers must not override the headers a delivery sets');
    END IF;
    RETURN p_headers;
END;
$$;

-- A scope filter: '*', a scope path, or a scope path followed by '/*'.
CREATE FUNCTION cycles._webhook_scope_filter(p_filter text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF p_filter IS NULL THEN
        RETURN NULL;
    END IF;
    IF char_length(p_filter) = 0 OR char_length(p_filter) > 1024 OR p_filter ~ '[[:space:][:cntrl:]]' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'scope_filter must be 1 to 1024 characters without spaces');
    END IF;
    RETURN lower(p_filter);
END;
$$;

CREATE FUNCTION cycles._webhook_secret(p_secret text) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF p_secret IS NULL THEN
        RETURN 'whsec_' || encode(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()), 'hex');
    END IF;
    IF char_length(p_secret) NOT BETWEEN 8 AND 512 OR p_secret ~ '[[:cntrl:]]' THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'signing_secret must be 8 to 512 printable characters');
    END IF;
    RETURN p_secret;
END;
$$;

-- Events ------------------------------------------------------------------------

CREATE FUNCTION cycles._webhook_lifecycle_event(
    p_sub             cycles.webhook_subscriptions,
    p_event_type      text,
    p_previous_status text,
    p_changed_fields  text[],
    p_ctx             jsonb,
    p_correlation_id  text,
    p_source          text DEFAULT 'cycles-admin',
    p_disable_reason  text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql
AS $$
BEGIN
    RETURN cycles._emit_event(
        p_tenant_id => p_sub.tenant_id, p_event_type => p_event_type, p_source => p_source,
        p_actor => cycles._actor(p_ctx),
        p_data => jsonb_build_object(
            'subscription_id', p_sub.subscription_id, 'tenant_id', p_sub.tenant_id,
            'previous_status', p_previous_status,
            'new_status', CASE WHEN p_event_type <> 'webhook.deleted' THEN p_sub.status END,
            'changed_fields', to_jsonb(coalesce(p_changed_fields, '{}')),
            'disable_reason', p_disable_reason),
        p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id',
        p_correlation_id => p_correlation_id);
END;
$$;

-- Settles the open deliveries of a subscription that will not deliver any
-- more (disabled or deleted). Rows a worker holds are skipped: the worker
-- settles them when it completes them.
CREATE FUNCTION cycles._webhook_fail_open_deliveries(p_subscription_id text, p_reason text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE cycles.webhook_deliveries AS d
    SET status = 'FAILED', completed_at = clock_timestamp(), error_message = p_reason
    WHERE d.delivery_id IN (
        SELECT o.delivery_id FROM cycles.webhook_deliveries AS o
        WHERE o.subscription_id = p_subscription_id AND o.status IN ('PENDING', 'RETRYING')
        ORDER BY o.seq
        FOR UPDATE SKIP LOCKED);
END;
$$;

-- Tenant close cascade step (called by cycles.close_tenant, which holds the
-- tenant row): every ACTIVE|PAUSED subscription of the tenant -> DISABLED,
-- one webhook.disabled_via_tenant_cascade event each, open deliveries failed.
-- Locks: the tenant's subscriptions ORDER BY subscription_id.
CREATE FUNCTION cycles._disable_tenant_webhooks(
    p_tenant_id      text,
    p_ctx            jsonb,
    p_correlation_id text
) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    v_sub      cycles.webhook_subscriptions;
    v_previous text;
BEGIN
    FOR v_sub IN
        SELECT s.* FROM cycles.webhook_subscriptions AS s
        WHERE s.tenant_id = p_tenant_id AND s.status IN ('ACTIVE', 'PAUSED')
        ORDER BY s.subscription_id
        FOR UPDATE
    LOOP
        v_previous := v_sub.status;
        UPDATE cycles.webhook_subscriptions AS s
        SET status = 'DISABLED', updated_at = clock_timestamp()
        WHERE s.subscription_id = v_sub.subscription_id
        RETURNING s.* INTO v_sub;
        PERFORM cycles._webhook_fail_open_deliveries(v_sub.subscription_id, 'subscription disabled: tenant closed');
        PERFORM cycles._emit_event(
            p_tenant_id => p_tenant_id, p_event_type => 'webhook.disabled_via_tenant_cascade',
            p_source => 'cycles-admin', p_actor => cycles._actor(p_ctx),
            p_data => jsonb_build_object(
                'subscription_id', v_sub.subscription_id, 'name', v_sub.name, 'prior_status', v_previous,
                'new_status', 'DISABLED', 'cascade_reason', 'tenant_closed'),
            p_request_id => p_ctx ->> 'request_id', p_trace_id => p_ctx ->> 'trace_id',
            p_correlation_id => p_correlation_id);
    END LOOP;
END;
$$;

-- Subscriptions -------------------------------------------------------------------

-- A subscription by id, optionally confined to one tenant (another tenant's
-- subscription looks absent), optionally locked. Errors: WEBHOOK_NOT_FOUND.
CREATE FUNCTION cycles._webhook_find(
    p_subscription_id text,
    p_tenant_id       text,
    p_lock            boolean
) RETURNS cycles.webhook_subscriptions
LANGUAGE plpgsql
AS $$
DECLARE
    v_sub cycles.webhook_subscriptions;
BEGIN
    IF p_lock THEN
        SELECT s.* INTO v_sub FROM cycles.webhook_subscriptions AS s
        WHERE s.subscription_id = p_subscription_id FOR NO KEY UPDATE;
    ELSE
        SELECT s.* INTO v_sub FROM cycles.webhook_subscriptions AS s WHERE s.subscription_id = p_subscription_id;
    END IF;
    IF v_sub.subscription_id IS NULL OR (p_tenant_id IS NOT NULL AND v_sub.tenant_id <> p_tenant_id) THEN
        PERFORM cycles._fail('WEBHOOK_NOT_FOUND', format('webhook subscription %L not found', p_subscription_id),
            jsonb_build_object('subscription_id', left(p_subscription_id, 128)));
    END IF;
    RETURN v_sub;
END;
$$;

-- The owner of a subscription about to change: a concrete tenant is locked
-- FOR SHARE (a concurrent close waits, or this change sees it CLOSED).
-- Errors: TENANT_NOT_FOUND, TENANT_CLOSED.
CREATE FUNCTION cycles._webhook_lock_owner(p_tenant_id text) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_tenant_id <> '__system__' THEN
        PERFORM cycles._lock_tenant_for_child_change(p_tenant_id);
    END IF;
END;
$$;

-- The tenant a lookup is confined to: a tenant key's own tenant (naming
-- another tenant finds nothing), else the admin's optional p_tenant_id.
CREATE FUNCTION cycles._webhook_confine(p_ctx jsonb, p_tenant_id text, p_subscription_id text) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    v_own text := p_ctx ->> 'principal_tenant_id';
BEGIN
    IF v_own IS NOT NULL AND p_tenant_id IS NOT NULL AND p_tenant_id <> v_own THEN
        PERFORM cycles._fail('WEBHOOK_NOT_FOUND', format('webhook subscription %L not found', p_subscription_id),
            jsonb_build_object('subscription_id', left(p_subscription_id, 128)));
    END IF;
    RETURN coalesce(v_own, p_tenant_id);
END;
$$;

-- cycles.create_webhook ---------------------------------------------------------
-- Creates a subscription for p_tenant_id (NULL or '__system__': system-wide)
-- from a WebhookCreateRequest. Returns WebhookCreateResponse{subscription,
-- signing_secret}: the only time the secret is shown.
--   SELECT cycles.create_webhook('{"url": "https://example.com/hook",
--                                  "event_types": ["budget.exhausted"]}', 'acme');
-- Locks: the owning tenant FOR SHARE.
-- Errors, in order: INVALID_REQUEST (shape, unknown fields, event_types
-- missing or empty, unknown types/categories, invariants 1 and 2, retry
-- policy, headers), WEBHOOK_URL_INVALID, TENANT_NOT_FOUND, TENANT_CLOSED.
-- Emits webhook.created (correlation webhook_create:<id>).
CREATE FUNCTION cycles.create_webhook(
    p_request   jsonb,
    p_tenant_id text DEFAULT NULL,
    p_ctx       jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx       jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:write', 'admin:webhooks:write']);
    v_tenant_id text := coalesce(cycles._admin_scope_tenant(v_ctx, p_tenant_id), '__system__');
    v_request   jsonb := cycles._require_known_options(p_request, ARRAY[
        'name', 'description', 'url', 'event_types', 'event_categories', 'scope_filter', 'thresholds',
        'signing_secret', 'headers', 'retry_policy', 'disable_after_failures', 'metadata'], 'field');
    v_types     text[] := cycles._webhook_text_array(p_request, 'event_types');
    v_categories text[] := coalesce(cycles._webhook_text_array(p_request, 'event_categories'), '{}');
    v_sub       cycles.webhook_subscriptions;
BEGIN
    IF p_request IS NULL THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'request body is required');
    END IF;
    IF v_types IS NULL OR cardinality(v_types) = 0 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'event_types is required and must not be empty');
    END IF;
    PERFORM cycles._webhook_check_selectors(v_tenant_id, v_types, v_categories);
    PERFORM cycles._webhook_lock_owner(v_tenant_id);
    INSERT INTO cycles.webhook_subscriptions (
        subscription_id, tenant_id, name, description, url, event_types, event_categories, scope_filter,
        thresholds, signing_secret, headers, retry_policy, disable_after_failures, metadata)
    VALUES (
        cycles._new_id('whsub_', 16), v_tenant_id,
        cycles._text_option(v_request, 'name', 256), cycles._text_option(v_request, 'description', 1024),
        cycles._webhook_check_url(cycles._text_option(v_request, 'url', 4096)), v_types, v_categories,
        cycles._webhook_scope_filter(cycles._text_option(v_request, 'scope_filter', 4096)),
        cycles._request_object(v_request, 'thresholds'),
        cycles._webhook_secret(cycles._text_option(v_request, 'signing_secret', 4096)),
        cycles._webhook_headers(v_request -> 'headers'),
        cycles._webhook_retry_policy(v_request -> 'retry_policy'),
        cycles._json_int(v_request, 'disable_after_failures', 1, 1000000, 10),
        cycles._request_object(v_request, 'metadata'))
    RETURNING * INTO v_sub;
    PERFORM cycles._webhook_lifecycle_event(
        v_sub, 'webhook.created', NULL, NULL, v_ctx, 'webhook_create:' || v_sub.subscription_id);
    PERFORM cycles._audit(v_ctx, 'createWebhookSubscription', 'webhook', v_sub.subscription_id, 201,
        nullif(v_tenant_id, '__system__'));
    RETURN jsonb_build_object('subscription', cycles._webhook_json(v_sub), 'signing_secret', v_sub.signing_secret);
END;
$$;

-- cycles.get_webhook ------------------------------------------------------------
-- One WebhookSubscription. p_tenant_id confines the lookup to that tenant.
-- Errors: WEBHOOK_NOT_FOUND.
CREATE FUNCTION cycles.get_webhook(
    p_subscription_id text,
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:read', 'admin:webhooks:read']);
BEGIN
    RETURN cycles._webhook_json(cycles._webhook_find(
        p_subscription_id, cycles._webhook_confine(v_ctx, p_tenant_id, p_subscription_id), false));
END;
$$;

-- cycles.list_webhooks -----------------------------------------------------------
-- WebhookListResponse, newest first; filters combine with AND. search is a
-- case-insensitive substring of subscription_id or url (<= 128 characters).
-- The cursor is opaque (the last row's position). Errors: INVALID_REQUEST.
CREATE FUNCTION cycles.list_webhooks(
    p_tenant_id  text DEFAULT NULL,
    p_status     text DEFAULT NULL,
    p_event_type text DEFAULT NULL,
    p_search     text DEFAULT NULL,
    p_cursor     text DEFAULT NULL,
    p_limit      integer DEFAULT 50,
    p_ctx        jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:read', 'admin:webhooks:read']);
    v_tenant text := cycles._admin_scope_tenant(v_ctx, p_tenant_id);
    v_limit  integer := cycles._page_limit(p_limit);
    v_after  bigint;
    v_rows   cycles.webhook_subscriptions[];
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('ACTIVE', 'PAUSED', 'DISABLED') THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'status must be one of ACTIVE, PAUSED, DISABLED');
    END IF;
    IF char_length(p_search) > 128 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'search must be at most 128 characters');
    END IF;
    IF p_cursor IS NOT NULL THEN
        IF p_cursor !~ '^[0-9]{1,18}$' THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'invalid cursor');
        END IF;
        v_after := p_cursor::bigint;
    END IF;
    SELECT coalesce(array_agg(page ORDER BY page.seq DESC), '{}') INTO v_rows FROM (
        SELECT s.* FROM cycles.webhook_subscriptions AS s
        WHERE (v_tenant IS NULL OR s.tenant_id = v_tenant)
          AND (p_status IS NULL OR s.status = p_status)
          AND (p_event_type IS NULL OR p_event_type = ANY (s.event_types))
          AND (nullif(p_search, '') IS NULL
               OR strpos(lower(s.subscription_id), lower(p_search)) > 0
               OR strpos(lower(s.url), lower(p_search)) > 0)
          AND (v_after IS NULL OR s.seq < v_after)
        ORDER BY s.seq DESC
        LIMIT v_limit + 1) AS page;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'subscriptions', coalesce((
            SELECT jsonb_agg(cycles._webhook_json(v_rows[i]) ORDER BY i)
            FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).seq::text END));
END;
$$;

-- cycles.update_webhook ------------------------------------------------------------
-- Applies a WebhookUpdateRequest. p_tenant_id confines it to that tenant.
-- status accepts ACTIVE|PAUSED; ACTIVE re-enables a DISABLED subscription and
-- resets consecutive_failures. The resulting selectors must satisfy both
-- invariants. Emits exactly one event when something changed:
-- webhook.paused / webhook.resumed on a status change, else webhook.updated
-- (changed_fields lists the other fields); a no-op emits nothing.
-- Locks: the owning tenant FOR SHARE, then the subscription.
-- Errors, in order: WEBHOOK_NOT_FOUND, TENANT_CLOSED, INVALID_REQUEST,
-- WEBHOOK_URL_INVALID.
CREATE FUNCTION cycles.update_webhook(
    p_subscription_id text,
    p_patch           jsonb,
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx     jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:write', 'admin:webhooks:write']);
    v_tenant  text := cycles._webhook_confine(v_ctx, p_tenant_id, p_subscription_id);
    v_patch   jsonb;
    v_old     cycles.webhook_subscriptions;
    v_new     cycles.webhook_subscriptions;
    v_changed text[] := '{}';
    v_status  text;
    v_event   text;
BEGIN
    v_old := cycles._webhook_find(p_subscription_id, v_tenant, false);
    PERFORM cycles._webhook_lock_owner(v_old.tenant_id);
    v_old := cycles._webhook_find(p_subscription_id, v_tenant, true);
    v_patch := cycles._require_known_options(p_patch, ARRAY[
        'name', 'description', 'url', 'event_types', 'event_categories', 'scope_filter', 'thresholds',
        'signing_secret', 'headers', 'retry_policy', 'disable_after_failures', 'status', 'metadata'], 'field');
    v_new := v_old;
    IF v_patch ? 'name' THEN v_new.name := cycles._text_option(v_patch, 'name', 256); END IF;
    IF v_patch ? 'description' THEN v_new.description := cycles._text_option(v_patch, 'description', 1024); END IF;
    IF v_patch ? 'url' THEN
        v_new.url := cycles._webhook_check_url(cycles._text_option(v_patch, 'url', 4096));
    END IF;
    IF v_patch ? 'event_types' THEN
        v_new.event_types := coalesce(cycles._webhook_text_array(v_patch, 'event_types'), '{}');
    END IF;
    IF v_patch ? 'event_categories' THEN
        v_new.event_categories := coalesce(cycles._webhook_text_array(v_patch, 'event_categories'), '{}');
    END IF;
    IF v_patch ? 'scope_filter' THEN
        v_new.scope_filter := cycles._webhook_scope_filter(cycles._text_option(v_patch, 'scope_filter', 4096));
    END IF;
    IF v_patch ? 'thresholds' THEN v_new.thresholds := cycles._request_object(v_patch, 'thresholds'); END IF;
    IF v_patch ? 'signing_secret' THEN
        IF jsonb_typeof(v_patch -> 'signing_secret') IS DISTINCT FROM 'string' THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'signing_secret must be a string');
        END IF;
        v_new.signing_secret := cycles._webhook_secret(v_patch ->> 'signing_secret');
    END IF;
    IF v_patch ? 'headers' THEN v_new.headers := cycles._webhook_headers(v_patch -> 'headers'); END IF;
    IF v_patch ? 'retry_policy' THEN
        v_new.retry_policy := cycles._webhook_retry_policy(
            v_old.retry_policy || cycles._require_known_options(v_patch -> 'retry_policy', ARRAY[
                'max_retries', 'initial_delay_ms', 'backoff_multiplier', 'max_delay_ms'], 'retry_policy field'));
    END IF;
    IF v_patch ? 'disable_after_failures' THEN
        v_new.disable_after_failures := cycles._json_int(v_patch, 'disable_after_failures', 1, 1000000,
            v_old.disable_after_failures);
    END IF;
    IF v_patch ? 'metadata' THEN v_new.metadata := cycles._request_object(v_patch, 'metadata'); END IF;
    v_status := cycles._text_option(v_patch, 'status', 16);
    IF v_status IS NOT NULL AND v_status NOT IN ('ACTIVE', 'PAUSED') THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'status must be ACTIVE or PAUSED');
    END IF;
    PERFORM cycles._webhook_check_selectors(v_old.tenant_id, v_new.event_types, v_new.event_categories);

    SELECT coalesce(array_agg(f ORDER BY f), '{}') INTO v_changed FROM (VALUES
        ('name', v_new.name IS DISTINCT FROM v_old.name),
        ('description', v_new.description IS DISTINCT FROM v_old.description),
        ('url', v_new.url IS DISTINCT FROM v_old.url),
        ('event_types', v_new.event_types IS DISTINCT FROM v_old.event_types),
        ('event_categories', v_new.event_categories IS DISTINCT FROM v_old.event_categories),
        ('scope_filter', v_new.scope_filter IS DISTINCT FROM v_old.scope_filter),
        ('thresholds', v_new.thresholds IS DISTINCT FROM v_old.thresholds),
        ('signing_secret', v_new.signing_secret IS DISTINCT FROM v_old.signing_secret),
        ('headers', v_new.headers IS DISTINCT FROM v_old.headers),
        ('retry_policy', v_new.retry_policy IS DISTINCT FROM v_old.retry_policy),
        ('disable_after_failures', v_new.disable_after_failures IS DISTINCT FROM v_old.disable_after_failures),
        ('metadata', v_new.metadata IS DISTINCT FROM v_old.metadata)) AS c(f, changed)
    WHERE c.changed;

    IF v_status IS NOT NULL AND v_status <> v_old.status THEN
        v_new.status := v_status;
        v_event := CASE v_status WHEN 'PAUSED' THEN 'webhook.paused' ELSE 'webhook.resumed' END;
        IF v_status = 'ACTIVE' THEN
            v_new.consecutive_failures := 0;
        END IF;
    ELSIF cardinality(v_changed) > 0 THEN
        v_event := 'webhook.updated';
    ELSE
        RETURN cycles._webhook_json(v_old);
    END IF;

    UPDATE cycles.webhook_subscriptions AS s
    SET name = v_new.name, description = v_new.description, url = v_new.url,
        event_types = v_new.event_types, event_categories = v_new.event_categories,
        scope_filter = v_new.scope_filter, thresholds = v_new.thresholds,
        signing_secret = v_new.signing_secret, headers = v_new.headers, retry_policy = v_new.retry_policy,
        disable_after_failures = v_new.disable_after_failures, metadata = v_new.metadata,
        status = v_new.status, consecutive_failures = v_new.consecutive_failures,
        updated_at = clock_timestamp()
    WHERE s.subscription_id = v_old.subscription_id
    RETURNING s.* INTO v_new;
    PERFORM cycles._webhook_lifecycle_event(
        v_new, v_event, v_old.status, v_changed, v_ctx,
        format('webhook_update:%s:%s', v_new.subscription_id,
               coalesce(v_ctx ->> 'request_id', cycles._new_id('req_', 32))));
    PERFORM cycles._audit(v_ctx, 'updateWebhookSubscription', 'webhook', v_new.subscription_id, 200,
        nullif(v_new.tenant_id, '__system__'));
    IF v_event = 'webhook.resumed' THEN
        -- Deliveries held while PAUSED are due again.
        PERFORM pg_notify('cycles_webhooks', '');
    END IF;
    RETURN cycles._webhook_json(v_new);
END;
$$;

-- cycles.delete_webhook -------------------------------------------------------------
-- Removes a subscription; its open deliveries are failed ('subscription
-- deleted'), settled history stays until retention. Returns {} (HTTP 204).
-- Locks: the owning tenant FOR SHARE, then the subscription.
-- Errors: WEBHOOK_NOT_FOUND, TENANT_CLOSED. Emits webhook.deleted.
CREATE FUNCTION cycles.delete_webhook(
    p_subscription_id text,
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx    jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:write', 'admin:webhooks:write']);
    v_tenant text := cycles._webhook_confine(v_ctx, p_tenant_id, p_subscription_id);
    v_sub    cycles.webhook_subscriptions;
BEGIN
    v_sub := cycles._webhook_find(p_subscription_id, v_tenant, false);
    PERFORM cycles._webhook_lock_owner(v_sub.tenant_id);
    v_sub := cycles._webhook_find(p_subscription_id, v_tenant, true);
    DELETE FROM cycles.webhook_subscriptions AS s WHERE s.subscription_id = v_sub.subscription_id;
    PERFORM cycles._webhook_fail_open_deliveries(v_sub.subscription_id, 'subscription deleted');
    PERFORM cycles._webhook_lifecycle_event(
        v_sub, 'webhook.deleted', v_sub.status, NULL, v_ctx, 'webhook_delete:' || v_sub.subscription_id);
    PERFORM cycles._audit(v_ctx, 'deleteWebhookSubscription', 'webhook', v_sub.subscription_id, 204,
        nullif(v_sub.tenant_id, '__system__'));
    RETURN '{}'::jsonb;
END;
$$;

-- cycles.test_webhook -----------------------------------------------------------------
-- Queues a synthetic system.webhook_test event for one subscription, whatever
-- its status and selectors (the owner's probe is exempt from invariant 2).
-- It stands outside the subscription's queue, is attempted once and never
-- touches consecutive_failures or status. From psql the worker sends it; the
-- HTTP endpoint calls this, sends it itself and records the outcome in the
-- same transaction. Returns {delivery_id, event_id}.
-- Locks: the owning tenant FOR SHARE. Errors: WEBHOOK_NOT_FOUND, TENANT_CLOSED.
CREATE FUNCTION cycles.test_webhook(
    p_subscription_id text,
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx      jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:write', 'admin:webhooks:write']);
    v_sub      cycles.webhook_subscriptions;
    v_event_id text := cycles._new_id('evt_', 16);
    v_delivery text := cycles._new_id('del_', 16);
BEGIN
    v_sub := cycles._webhook_find(
        p_subscription_id, cycles._webhook_confine(v_ctx, p_tenant_id, p_subscription_id), false);
    PERFORM cycles._webhook_lock_owner(v_sub.tenant_id);
    INSERT INTO cycles.webhook_deliveries (
        delivery_id, subscription_id, tenant_id, kind, event_id, event_type, test_event, trace_id)
    VALUES (
        v_delivery, v_sub.subscription_id, v_sub.tenant_id, 'test', v_event_id, 'system.webhook_test',
        jsonb_strip_nulls(jsonb_build_object(
            'event_id', v_event_id, 'event_type', 'system.webhook_test', 'category', 'system',
            'timestamp', cycles._iso8601(clock_timestamp()), 'tenant_id', v_sub.tenant_id,
            'actor', cycles._actor(v_ctx), 'source', 'cycles-admin',
            'data', jsonb_build_object('subscription_id', v_sub.subscription_id, 'test', true),
            'request_id', v_ctx ->> 'request_id', 'trace_id', v_ctx ->> 'trace_id')),
        v_ctx ->> 'trace_id');
    PERFORM pg_notify('cycles_webhooks', '');
    RETURN jsonb_build_object('delivery_id', v_delivery, 'event_id', v_event_id);
END;
$$;

-- Delivery history -------------------------------------------------------------------

-- cycles.list_webhook_deliveries --------------------------------------------------------
-- WebhookDeliveryListResponse for one subscription, newest first; status and
-- the [from, to] window (on the time a delivery was queued) filter.
-- p_tenant_id confines it to that tenant. Deliveries of a deleted
-- subscription are no longer listed. Errors: WEBHOOK_NOT_FOUND, INVALID_REQUEST.
CREATE FUNCTION cycles.list_webhook_deliveries(
    p_subscription_id text,
    p_status          text DEFAULT NULL,
    p_from            timestamptz DEFAULT NULL,
    p_to              timestamptz DEFAULT NULL,
    p_cursor          text DEFAULT NULL,
    p_limit           integer DEFAULT 50,
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx   jsonb := cycles._admin_principal(p_ctx, ARRAY['webhooks:read', 'admin:webhooks:read']);
    v_sub   cycles.webhook_subscriptions := cycles._webhook_find(
        p_subscription_id, cycles._webhook_confine(v_ctx, p_tenant_id, p_subscription_id), false);
    v_limit integer := cycles._page_limit(p_limit);
    v_after bigint;
    v_rows  cycles.webhook_deliveries[];
BEGIN
    IF p_status IS NOT NULL AND p_status NOT IN ('PENDING', 'SUCCESS', 'FAILED', 'RETRYING') THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'status must be one of PENDING, SUCCESS, FAILED, RETRYING');
    END IF;
    IF p_cursor IS NOT NULL THEN
        IF p_cursor !~ '^[0-9]{1,18}$' THEN
            PERFORM cycles._fail('INVALID_REQUEST', 'invalid cursor');
        END IF;
        v_after := p_cursor::bigint;
    END IF;
    SELECT coalesce(array_agg(page ORDER BY page.seq DESC), '{}') INTO v_rows FROM (
        SELECT d.* FROM cycles.webhook_deliveries AS d
        WHERE d.subscription_id = v_sub.subscription_id
          AND (p_status IS NULL OR d.status = p_status)
          AND (p_from IS NULL OR d.created_at >= p_from)
          AND (p_to IS NULL OR d.created_at <= p_to)
          AND (v_after IS NULL OR d.seq < v_after)
        ORDER BY d.seq DESC
        LIMIT v_limit + 1) AS page;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'deliveries', coalesce((
            SELECT jsonb_agg(cycles._webhook_delivery_json(v_rows[i]) ORDER BY i)
            FROM generate_series(1, least(cardinality(v_rows), v_limit)) AS i), '[]'::jsonb),
        'has_more', cardinality(v_rows) > v_limit,
        'next_cursor', CASE WHEN cardinality(v_rows) > v_limit THEN (v_rows[v_limit]).seq::text END));
END;
$$;

-- Replay ---------------------------------------------------------------------------------

-- cycles.replay_webhook_events -------------------------------------------------------------
-- Queues every stored event of the [from, to] window (inclusive; defaults: the
-- last 24 hours up to now) that the subscription would receive (its
-- selectors, scope filter and owner boundary; optionally narrowed to
-- event_types) as fresh deliveries, oldest first. Selection is all-or-narrow:
-- more than max_events (1..1000, default 100) matching events, or more than
-- 20000 candidate events in the window, is INVALID_REQUEST and queues
-- nothing. A subscription that is not ACTIVE queues 0. A replay is running
-- while any of its deliveries is open; a second one meanwhile is
-- REPLAY_IN_PROGRESS. Returns {replay_id, events_queued,
-- estimated_completion_seconds}.
-- Locks: the subscription (serialises replays of one subscription).
-- Errors, in order: WEBHOOK_NOT_FOUND, INVALID_REQUEST, REPLAY_IN_PROGRESS.
CREATE FUNCTION cycles.replay_webhook_events(
    p_subscription_id text,
    p_request         jsonb DEFAULT '{}',
    p_tenant_id       text DEFAULT NULL,
    p_ctx             jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_ctx        jsonb := cycles._admin_principal(p_ctx, ARRAY['admin:webhooks:write']);
    v_request    jsonb := cycles._require_known_options(
        coalesce(p_request, '{}'::jsonb), ARRAY['from', 'to', 'event_types', 'max_events'], 'field');
    v_sub        cycles.webhook_subscriptions;
    v_to         timestamptz;
    v_from       timestamptz;
    v_types      text[] := cycles._webhook_text_array(v_request, 'event_types');
    v_max        integer := cycles._json_int(v_request, 'max_events', 1, 1000, 100);
    v_candidates bigint;
    v_selected   bigint;
    v_replay_id  text := cycles._new_id('rpl_', 16);
    v_queued     integer := 0;
BEGIN
    v_sub := cycles._webhook_find(
        p_subscription_id, cycles._webhook_confine(v_ctx, p_tenant_id, p_subscription_id), true);
    BEGIN
        v_to := coalesce((cycles._text_option(v_request, 'to', 64))::timestamptz, clock_timestamp());
        v_from := coalesce((cycles._text_option(v_request, 'from', 64))::timestamptz, v_to - interval '24 hours');
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_parameter_value THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'from and to must be ISO-8601 date-times');
    END;
    IF v_from > v_to THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'from must not be after to');
    END IF;
    IF v_types IS NOT NULL THEN
        PERFORM cycles._webhook_check_selectors('__system__', v_types, ARRAY['system']);
    END IF;

    SELECT count(*) INTO v_candidates FROM (
        SELECT FROM cycles.events AS e
        WHERE e.created_at BETWEEN v_from AND v_to
          AND (v_sub.tenant_id = '__system__' OR e.tenant_id = v_sub.tenant_id)
        LIMIT 20001) AS c;
    IF v_candidates > 20000 THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            'the replay window holds more than 20000 events: narrow from/to', jsonb_build_object('scan_limit', 20000));
    END IF;

    SELECT count(*) INTO v_selected FROM cycles.events AS e
    WHERE e.created_at BETWEEN v_from AND v_to
      AND (v_sub.tenant_id = '__system__' OR e.tenant_id = v_sub.tenant_id)
      AND cycles._webhook_matches(v_sub, e.event_type, e.category, e.scope)
      AND (v_types IS NULL OR e.event_type = ANY (v_types));
    IF v_selected > v_max THEN
        PERFORM cycles._fail('INVALID_REQUEST',
            format('the replay window holds %s matching events, more than max_events (%s): narrow from/to '
                   'or raise max_events (at most 1000)', v_selected, v_max),
            jsonb_build_object('matching_events', v_selected, 'max_events', v_max));
    END IF;
    IF EXISTS (
        SELECT FROM cycles.webhook_deliveries AS d
        WHERE d.subscription_id = v_sub.subscription_id AND d.kind = 'replay'
          AND d.status IN ('PENDING', 'RETRYING')) THEN
        PERFORM cycles._fail('REPLAY_IN_PROGRESS',
            format('a replay for subscription %L is still running', v_sub.subscription_id),
            jsonb_build_object('subscription_id', v_sub.subscription_id));
    END IF;

    IF v_sub.status = 'ACTIVE' THEN
        INSERT INTO cycles.webhook_deliveries (
            delivery_id, subscription_id, tenant_id, kind, replay_id, event_seq, event_id, event_type, trace_id)
        SELECT cycles._new_id('del_', 16), v_sub.subscription_id, v_sub.tenant_id, 'replay', v_replay_id,
               e.seq, e.event_id, e.event_type, e.trace_id
        FROM cycles.events AS e
        WHERE e.created_at BETWEEN v_from AND v_to
          AND (v_sub.tenant_id = '__system__' OR e.tenant_id = v_sub.tenant_id)
          AND cycles._webhook_matches(v_sub, e.event_type, e.category, e.scope)
          AND (v_types IS NULL OR e.event_type = ANY (v_types))
        ORDER BY e.created_at, e.seq
        LIMIT v_max;
        GET DIAGNOSTICS v_queued = ROW_COUNT;
    END IF;
    INSERT INTO cycles.webhook_replays (
        replay_id, subscription_id, tenant_id, window_from, window_to, event_types, max_events, events_queued)
    VALUES (v_replay_id, v_sub.subscription_id, v_sub.tenant_id, v_from, v_to, v_types, v_max, v_queued);
    IF v_queued > 0 THEN
        PERFORM pg_notify('cycles_webhooks', '');
    END IF;
    RETURN jsonb_build_object(
        'replay_id', v_replay_id, 'events_queued', v_queued,
        'estimated_completion_seconds', ceil(v_queued / 10.0)::integer);
END;
$$;

-- Worker --------------------------------------------------------------------------------

-- cycles.claim_webhook_deliveries ------------------------------------------------------------
-- For the delivery worker, inside its own transaction (see the header):
-- locks up to p_limit due deliveries, each the head of an ACTIVE
-- subscription's queue (or a test probe), FOR UPDATE SKIP LOCKED, and
-- returns what sending them takes: {deliveries: [{delivery_id, kind, url,
-- signing_secret, headers, event, attempts}], next_due_ms} where next_due_ms
-- is how long until the next not-yet-due delivery (absent when none).
-- Deliveries whose event has been pruned or whose subscription is gone or
-- DISABLED are settled as FAILED on the way.
CREATE FUNCTION cycles.claim_webhook_deliveries(p_limit integer DEFAULT 20, p_ctx jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_claims jsonb := '[]'::jsonb;
    v_row    record;
    v_event  cycles.events;
    v_next   timestamptz;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        PERFORM cycles._fail('INVALID_REQUEST', 'p_limit must be between 1 and 1000');
    END IF;
    FOR v_row IN
        SELECT d.delivery_id, d.kind, d.attempts, d.test_event, d.event_seq, d.trace_id, d.trace_flags,
               s.subscription_id AS sub_id, s.status AS sub_status, s.url, s.signing_secret, s.headers
        FROM cycles.webhook_deliveries AS d
        LEFT JOIN cycles.webhook_subscriptions AS s ON s.subscription_id = d.subscription_id
        WHERE d.status IN ('PENDING', 'RETRYING') AND d.next_attempt_at <= v_now
          AND (s.status IS DISTINCT FROM 'PAUSED' OR d.kind = 'test')
          AND (d.kind = 'test' OR NOT EXISTS (
                SELECT FROM cycles.webhook_deliveries AS p
                WHERE p.subscription_id = d.subscription_id AND p.status IN ('PENDING', 'RETRYING')
                  AND p.kind <> 'test' AND p.seq < d.seq))
        ORDER BY d.next_attempt_at, d.seq
        LIMIT p_limit
        FOR UPDATE OF d SKIP LOCKED
    LOOP
        IF v_row.sub_id IS NULL OR (v_row.sub_status = 'DISABLED' AND v_row.kind <> 'test') THEN
            UPDATE cycles.webhook_deliveries AS d
            SET status = 'FAILED', completed_at = clock_timestamp(),
                error_message = CASE WHEN v_row.sub_id IS NULL THEN 'subscription deleted'
                                     ELSE 'subscription disabled' END
            WHERE d.delivery_id = v_row.delivery_id;
            CONTINUE;
        END IF;
        IF v_row.kind = 'test' THEN
            v_claims := v_claims || jsonb_build_array(jsonb_build_object(
                'delivery_id', v_row.delivery_id, 'kind', v_row.kind, 'url', v_row.url,
                'signing_secret', v_row.signing_secret, 'headers', v_row.headers,
                'event', v_row.test_event, 'attempts', v_row.attempts, 'trace_flags', v_row.trace_flags));
            CONTINUE;
        END IF;
        SELECT e.* INTO v_event FROM cycles.events AS e WHERE e.seq = v_row.event_seq;
        IF v_event.seq IS NULL THEN
            UPDATE cycles.webhook_deliveries AS d
            SET status = 'FAILED', completed_at = clock_timestamp(), error_message = 'event no longer stored'
            WHERE d.delivery_id = v_row.delivery_id;
            CONTINUE;
        END IF;
        v_claims := v_claims || jsonb_build_array(jsonb_build_object(
            'delivery_id', v_row.delivery_id, 'kind', v_row.kind, 'url', v_row.url,
            'signing_secret', v_row.signing_secret, 'headers', v_row.headers,
            'event', cycles._event_json(v_event), 'attempts', v_row.attempts,
            'trace_flags', v_row.trace_flags));
    END LOOP;
    SELECT min(d.next_attempt_at) INTO v_next FROM cycles.webhook_deliveries AS d
    WHERE d.status IN ('PENDING', 'RETRYING') AND d.next_attempt_at > v_now;
    RETURN jsonb_strip_nulls(jsonb_build_object(
        'deliveries', v_claims,
        'next_due_ms', CASE WHEN v_next IS NOT NULL
            THEN greatest(0, ceil(extract(epoch FROM v_next - clock_timestamp()) * 1000))::bigint END));
END;
$$;

-- cycles.claim_webhook_delivery ------------------------------------------------------------------
-- Locks one open delivery (waiting for it, unlike the batch claim) and
-- returns it in the claim shape, or {} when it is settled or unknown. Used to
-- send a test probe synchronously in the transaction that queued it.
CREATE FUNCTION cycles.claim_webhook_delivery(p_delivery_id text, p_ctx jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_delivery cycles.webhook_deliveries;
    v_sub      cycles.webhook_subscriptions;
    v_event    jsonb;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    SELECT d.* INTO v_delivery FROM cycles.webhook_deliveries AS d
    WHERE d.delivery_id = p_delivery_id AND d.status IN ('PENDING', 'RETRYING') FOR UPDATE;
    SELECT s.* INTO v_sub FROM cycles.webhook_subscriptions AS s
    WHERE s.subscription_id = v_delivery.subscription_id;
    IF v_delivery.delivery_id IS NULL OR v_sub.subscription_id IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    v_event := coalesce(v_delivery.test_event,
        (SELECT cycles._event_json(e) FROM cycles.events AS e WHERE e.seq = v_delivery.event_seq));
    IF v_event IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    RETURN jsonb_build_object(
        'delivery_id', v_delivery.delivery_id, 'kind', v_delivery.kind, 'url', v_sub.url,
        'signing_secret', v_sub.signing_secret, 'headers', v_sub.headers, 'event', v_event,
        'attempts', v_delivery.attempts, 'trace_flags', v_delivery.trace_flags);
END;
$$;

-- cycles.complete_webhook_delivery --------------------------------------------------------------
-- Records the outcome of one attempt (p_success: a 2xx arrived). A test probe
-- is settled at once and leaves the subscription alone. Otherwise: success
-- settles it SUCCESS and resets consecutive_failures; a failure schedules a
-- retry per the subscription's retry policy, or, once retries are exhausted
-- (or the subscription no longer delivers), settles it FAILED, writes
-- system.webhook_delivery_failed, counts a consecutive failure and, at
-- disable_after_failures, disables the subscription (webhook.disabled,
-- correlation webhook_auto_disable:<id>:<delivery_id>) and fails its other
-- open deliveries. Settled deliveries are left as they are (idempotent).
-- Returns the WebhookDelivery.
-- Locks: the delivery (already held by the claim), then its subscription.
-- Errors: NOT_FOUND (unknown delivery).
CREATE FUNCTION cycles.complete_webhook_delivery(
    p_delivery_id      text,
    p_success          boolean,
    p_response_status  integer DEFAULT NULL,
    p_response_time_ms integer DEFAULT NULL,
    p_error_message    text DEFAULT NULL,
    p_ctx              jsonb DEFAULT '{}'
) RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    v_delivery cycles.webhook_deliveries;
    v_sub      cycles.webhook_subscriptions;
    v_attempts integer;
    v_delay_ms numeric;
    v_now      timestamptz := clock_timestamp();
    v_error    text := left(p_error_message, 1024);
    v_system   jsonb := '{"actor_type": "system"}';
    v_previous text;
BEGIN
    PERFORM cycles._admin_principal(p_ctx, NULL);
    SELECT d.* INTO v_delivery FROM cycles.webhook_deliveries AS d
    WHERE d.delivery_id = p_delivery_id FOR UPDATE;
    IF v_delivery.delivery_id IS NULL THEN
        PERFORM cycles._fail('NOT_FOUND', format('delivery %L not found', p_delivery_id));
    END IF;
    IF v_delivery.status NOT IN ('PENDING', 'RETRYING') THEN
        RETURN cycles._webhook_delivery_json(v_delivery);
    END IF;
    v_attempts := v_delivery.attempts + 1;

    IF v_delivery.kind = 'test' THEN
        UPDATE cycles.webhook_deliveries AS d
        SET status = CASE WHEN p_success THEN 'SUCCESS' ELSE 'FAILED' END, attempts = v_attempts,
            attempted_at = v_now, completed_at = v_now, response_status = p_response_status,
            response_time_ms = p_response_time_ms, error_message = CASE WHEN NOT p_success THEN v_error END
        WHERE d.delivery_id = p_delivery_id
        RETURNING d.* INTO v_delivery;
        RETURN cycles._webhook_delivery_json(v_delivery);
    END IF;

    SELECT s.* INTO v_sub FROM cycles.webhook_subscriptions AS s
    WHERE s.subscription_id = v_delivery.subscription_id FOR NO KEY UPDATE;

    IF p_success THEN
        UPDATE cycles.webhook_deliveries AS d
        SET status = 'SUCCESS', attempts = v_attempts, attempted_at = v_now, completed_at = v_now,
            response_status = p_response_status, response_time_ms = p_response_time_ms, error_message = NULL
        WHERE d.delivery_id = p_delivery_id
        RETURNING d.* INTO v_delivery;
        UPDATE cycles.webhook_subscriptions AS s
        SET consecutive_failures = 0, last_success_at = v_now, last_triggered_at = v_now
        WHERE s.subscription_id = v_delivery.subscription_id;
        RETURN cycles._webhook_delivery_json(v_delivery);
    END IF;

    IF v_sub.subscription_id IS NOT NULL AND v_sub.status <> 'DISABLED'
       AND v_attempts <= (v_sub.retry_policy ->> 'max_retries')::integer THEN
        v_delay_ms := least(
            (v_sub.retry_policy ->> 'initial_delay_ms')::numeric
                * power((v_sub.retry_policy ->> 'backoff_multiplier')::numeric, v_attempts - 1),
            (v_sub.retry_policy ->> 'max_delay_ms')::numeric);
        UPDATE cycles.webhook_deliveries AS d
        SET status = 'RETRYING', attempts = v_attempts, attempted_at = v_now,
            next_attempt_at = v_now + make_interval(secs => v_delay_ms / 1000.0),
            response_status = p_response_status, response_time_ms = p_response_time_ms, error_message = v_error
        WHERE d.delivery_id = p_delivery_id
        RETURNING d.* INTO v_delivery;
        UPDATE cycles.webhook_subscriptions AS s
        SET last_failure_at = v_now, last_triggered_at = v_now
        WHERE s.subscription_id = v_sub.subscription_id;
        RETURN cycles._webhook_delivery_json(v_delivery);
    END IF;

    UPDATE cycles.webhook_deliveries AS d
    SET status = 'FAILED', attempts = v_attempts, attempted_at = v_now, completed_at = v_now,
        response_status = p_response_status, response_time_ms = p_response_time_ms, error_message = v_error
    WHERE d.delivery_id = p_delivery_id
    RETURNING d.* INTO v_delivery;
    IF v_sub.subscription_id IS NULL THEN
        RETURN cycles._webhook_delivery_json(v_delivery);
    END IF;
    UPDATE cycles.webhook_subscriptions AS s
    SET consecutive_failures = s.consecutive_failures + 1, last_failure_at = v_now, last_triggered_at = v_now
    WHERE s.subscription_id = v_sub.subscription_id
    RETURNING s.* INTO v_sub;
    PERFORM cycles._emit_event(
        p_tenant_id => v_sub.tenant_id, p_event_type => 'system.webhook_delivery_failed',
        p_source => 'cycles-events', p_actor => '{"type": "system"}'::jsonb,
        p_data => jsonb_build_object(
            'component', 'webhook-delivery', 'severity', 'warning',
            'message', format('delivery of %s to subscription %s failed after %s attempts',
                              v_delivery.event_id, v_sub.subscription_id, v_attempts),
            'subscription_id', v_sub.subscription_id,
            'details', jsonb_strip_nulls(jsonb_build_object(
                'delivery_id', v_delivery.delivery_id, 'event_id', v_delivery.event_id,
                'attempts', v_attempts, 'response_status', p_response_status, 'error_message', v_error))),
        p_trace_id => v_delivery.trace_id);
    IF v_sub.consecutive_failures >= v_sub.disable_after_failures AND v_sub.status IN ('ACTIVE', 'PAUSED') THEN
        v_previous := v_sub.status;
        UPDATE cycles.webhook_subscriptions AS s
        SET status = 'DISABLED', updated_at = v_now
        WHERE s.subscription_id = v_sub.subscription_id
        RETURNING s.* INTO v_sub;
        PERFORM cycles._webhook_fail_open_deliveries(v_sub.subscription_id, 'subscription disabled');
        PERFORM cycles._webhook_lifecycle_event(
            v_sub, 'webhook.disabled', v_previous, NULL, v_system,
            format('webhook_auto_disable:%s:%s', v_sub.subscription_id, v_delivery.delivery_id),
            'cycles-events', 'consecutive_failures_exceeded_threshold');
    END IF;
    RETURN cycles._webhook_delivery_json(v_delivery);
END;
$$;


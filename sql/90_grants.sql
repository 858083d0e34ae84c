-- Privileges: tables are private; clients get functions.
--
-- cycles_app is the role a server connects as in a hardened deployment (grant
-- it to the login role). It may EXECUTE the public cycles.* functions and
-- nothing else: it cannot read or write a table directly, so every change goes
-- through a function that keeps the invariants and writes the ledger. The
-- public functions run with their owner's rights (SECURITY DEFINER) and a
-- pinned search_path, so a caller cannot shadow anything they reference.
--
-- Roles are cluster-wide objects: create them only if absent, never drop them
-- (another database of the cluster may use them).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'cycles_app') THEN
        CREATE ROLE cycles_app NOLOGIN;
    END IF;
END;
$$;

REVOKE ALL ON SCHEMA cycles FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA cycles FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA cycles FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA cycles FROM PUBLIC;

-- Even the owner's functions never rewrite history: the triggers on the ledger
-- and the audit log refuse UPDATE, DELETE and TRUNCATE; no role is granted them here.
REVOKE UPDATE, DELETE, TRUNCATE ON cycles.ledger_entries FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON cycles.audit_logs FROM PUBLIC;

GRANT USAGE ON SCHEMA cycles TO cycles_app;

DO $$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN
        SELECT p.oid::regprocedure
        FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = 'cycles'::regnamespace
          AND p.proname !~ '^_'
          AND p.prokind = 'f'
        ORDER BY p.oid
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, cycles, pg_temp',
                       v_function);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO cycles_app', v_function);
    END LOOP;
END;
$$;

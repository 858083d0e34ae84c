"""Reporting at scale, and what the hash chain costs a reserve.

``.venv/bin/python -m bench.reporting_scale [--rows 10000000] [--skip-chain-cost]``

Starts a throwaway PostgreSQL cluster (app.pgcluster) in a temporary
directory, then:

1. chain cost: two databases in the same cluster, one with the schema as it
   was before the ledger carried hashes and running balances (sql/ at the
   parent of the commit that added sql/40_reporting.sql) and one with the
   current sql/; pgbench calls cycles.reserve (three budgets, so three ledger
   rows per call) on each in turn, several rounds, and reports the median
   latency of each and the difference per ledger row;
2. scale: fills a database with --rows ledger rows (50 tenants of very
   different sizes over six months: reserves, commits, releases, expiries
   and credits at tenant, workspace and agent level, with the running
   balances a real history has; hashes are placeholders, since a chain is
   written one row at a time), then times the reports: a month's daily spend
   for the busiest tenant, balance_as_of on the busiest budgets, top
   spenders, a monthly statement.

Results go to stdout and bench/reporting_results.json; docs/reporting.md
quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from app.pgcluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
MONTHS = 6
TENANTS = 50
WORKSPACES = 3
AGENTS = 5


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# Schemas ----------------------------------------------------------------------


def before_sql() -> list[str]:
    """sql/ files as they were just before the reporting work."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "sql/40_reporting.sql"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    ref = f"{added[-1]}^"
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{ref}:sql"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return [subprocess.run(["git", "show", f"{ref}:sql/{name}"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout for name in sorted(names) if name.endswith(".sql")]


def current_sql() -> list[str]:
    return [path.read_text() for path in sorted((ROOT / "sql").glob("*.sql"))]


def create_database(cluster: Cluster, name: str, files: list[str]) -> None:
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[arg-type]
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    with psycopg.connect(cluster.conninfo(name), autocommit=True) as conn:
        for text in files:
            conn.execute(text)  # type: ignore[arg-type]


# 1. Chain cost ----------------------------------------------------------------

PROVISION = """
    SELECT cycles.create_tenant('bench-' || n, 'bench') FROM generate_series(0, 3) AS n;
    SELECT cycles.create_budget(s, 'USD_MICROCENTS', 1000000000000000)
    FROM generate_series(0, 3) AS n,
         LATERAL unnest(ARRAY['tenant:bench-' || n, 'tenant:bench-' || n || '/workspace:w',
                              'tenant:bench-' || n || '/workspace:w/agent:a']) AS s;
    INSERT INTO cycles.api_keys (key_id, tenant_id, key_prefix, key_hash, name, permissions, expires_at)
    SELECT 'key_bench_' || n, 'bench-' || n, 'bench_' || n, cycles._hash_secret('cyc_live_bench_' || n), 'bench',
           cycles._default_permissions(), clock_timestamp() + interval '1 day'
    FROM generate_series(0, 3) AS n;
"""

RESERVE = (
    "SELECT cycles.reserve(p_api_key => 'cyc_live_bench_' || :client_id, p_request => ("
    "'{\"idempotency_key\":\"' || gen_random_uuid() || '\",\"ttl_ms\":3600000,\"subject\":{\"tenant\":\"bench-'"
    " || :client_id || '\",\"workspace\":\"w\",\"agent\":\"a\"},\"action\":{\"kind\":\"llm.completion\","
    "\"name\":\"bench\"},\"estimate\":{\"unit\":\"USD_MICROCENTS\",\"amount\":1}}')::jsonb);\n")


APPENDS = """
    DO $$
    BEGIN
        FOR i IN 1..20000 LOOP
            PERFORM cycles._append_ledger(1, 'bench-0', 'tenant:bench-0', 'USD_MICROCENTS', 'RESERVE',
                '{"type": "api_key", "key_id": "key_bench_0"}', p_reserved_delta => 1,
                p_reservation_id => 'rsv_' || i, p_action => '{"kind": "llm.completion", "name": "bench"}',
                p_subject => '{"tenant": "bench-0", "workspace": "w", "agent": "a"}', p_idempotency_key => 'idem');
        END LOOP;
    END;
    $$
"""


def pgbench(cluster: Cluster, workdir: Path, dbname: str, seconds: int, clients: int) -> dict[str, float]:
    script = workdir / "reserve.sql"
    script.write_text(RESERVE)
    script.chmod(0o644)
    command = [str(cluster.bindir / "pgbench"), "-n", "-M", "prepared", "-h", str(cluster.socket_dir),
               "-p", str(cluster.port), "-U", cluster.superuser, "-c", str(clients), "-j", str(clients),
               "-T", str(seconds), "-f", str(script), dbname]
    if cluster.run_as:
        command = ["runuser", "-u", cluster.run_as, "--", *command]
    # Commits are not flushed: the figure is the work per call, not the disk's fsync.
    out = subprocess.run(command, capture_output=True, text=True, check=False,
                         env={**os.environ, "PGOPTIONS": "-c synchronous_commit=off"})
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))  # type: ignore[union-attr]
    return {"tps": tps, "latency_ms": latency}


def chain_cost(cluster: Cluster, workdir: Path, seconds: int, rounds: int, clients: int) -> dict[str, Any]:
    variants = {"before": before_sql(), "after": current_sql()}
    for name, files in variants.items():
        create_database(cluster, f"cost_{name}", files)
        with psycopg.connect(cluster.conninfo(f"cost_{name}"), autocommit=True) as conn:
            conn.execute(PROVISION)  # type: ignore[arg-type]
            conn.execute("VACUUM ANALYZE")
    # The ledger write alone: 20,000 appends to one budget in a transaction
    # that is rolled back, so the databases stay alike.
    appends: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            with psycopg.connect(cluster.conninfo(f"cost_{name}")) as conn:
                started = time.perf_counter()
                conn.execute(APPENDS)  # type: ignore[arg-type]
                appends[name].append((time.perf_counter() - started) * 1e6 / 20000)
                conn.rollback()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_number in range(rounds):
        for name in variants:
            samples[name].append(pgbench(cluster, workdir, f"cost_{name}", seconds, clients))
            say(f"chain cost round {round_number + 1}/{rounds} {name}: {samples[name][-1]}")
    result: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "clients": clients, "ledger_rows_per_reserve": 3}
    for name in variants:
        result[name] = {"latency_ms": statistics.median(s["latency_ms"] for s in samples[name]),
                        "tps": statistics.median(s["tps"] for s in samples[name])}
    for name in variants:
        result[name]["append_ledger_us"] = round(statistics.median(appends[name]), 1)
    result["extra_us_per_append_ledger"] = round(
        result["after"]["append_ledger_us"] - result["before"]["append_ledger_us"], 1)
    extra = result["after"]["latency_ms"] - result["before"]["latency_ms"]
    result["extra_ms_per_reserve"] = round(extra, 4)
    result["extra_us_per_ledger_row"] = round(extra * 1000 / 3, 1)
    result["extra_percent"] = round(100 * extra / result["before"]["latency_ms"], 1)
    return result


# 2. Scale -------------------------------------------------------------------------

# One row per generated reservation g: tenant (Zipf-like weights), workspace,
# agent, action, amount, outcome and times. Times are a strictly increasing
# function of g, so they are unique within every budget, as real ones are.
WEIGHTS = """
    CREATE TABLE gen_weight AS
    SELECT t, coalesce(lag(upper_bound) OVER (ORDER BY t), 0) AS lower_bound, upper_bound
    FROM (
        SELECT t, sum(w) OVER (ORDER BY t) / sum(w) OVER () AS upper_bound
        FROM (SELECT t, 1.0 / power(t + 1, 1.1) AS w FROM generate_series(0, %(tenants)s - 1) AS t) AS weights
    ) AS cumulative
"""

RESERVATIONS = """
    CREATE TABLE gen_reservation AS
    SELECT g, w.t AS tenant,
           (g * 7 %% %(workspaces)s) AS workspace,
           (g * 13 %% %(agents)s) AS agent,
           (g %% 4) AS action,
           1 + (g * 7919 %% 5000) AS estimate,
           CASE WHEN r.o < 0.85 THEN 'COMMIT' WHEN r.o < 0.95 THEN 'RELEASE' ELSE 'EXPIRE' END AS outcome,
           timestamptz '2026-01-01 00:00:00+00'
               + (g::numeric * %(span_us)s / %(count)s)::bigint * interval '1 microsecond' AS reserved_at
    FROM (SELECT g, random() AS u, random() AS o FROM generate_series(1::bigint, %(count)s) AS g) AS r
    JOIN gen_weight AS w ON r.u >= w.lower_bound AND r.u < w.upper_bound
"""

LEDGER = """
    INSERT INTO cycles.ledger_entries OVERRIDING SYSTEM VALUE
    SELECT x.entry_id, x.tenant_id, x.budget_id, x.scope, x.unit, x.operation,
           x.allocated_delta, x.spent_delta, x.reserved_delta, x.debt_delta,
           x.reservation_id, x.event_id, x.action_kind, x.action_name, x.subject, x.idempotency_key, x.reason,
           NULL, NULL, x.actor_type, x.actor_key_id, x.created_at,
           x.subject_workspace, NULL, NULL, x.subject_agent, NULL, x.operation_lead,
           sum(x.allocated_delta) OVER chain, sum(x.spent_delta) OVER chain,
           sum(x.reserved_delta) OVER chain, sum(x.debt_delta) OVER chain,
           NULL, sha256(x.entry_id::text::bytea)
    FROM (
        SELECT row_number() OVER (ORDER BY legs.created_at, legs.budget_id) AS entry_id, legs.*
        FROM (
            SELECT b.tenant_id, b.budget_id, b.scope, b.unit, 'CREATE' AS operation,
                   b.allocated AS allocated_delta, 0::bigint AS spent_delta, 0::bigint AS reserved_delta,
                   0::bigint AS debt_delta, NULL::text AS reservation_id, NULL::text AS event_id,
                   NULL::text AS action_kind, NULL::text AS action_name, NULL::jsonb AS subject,
                   NULL::text AS idempotency_key, NULL::text AS reason, 'admin' AS actor_type,
                   NULL::text AS actor_key_id, timestamptz '2025-12-31 00:00:00+00' AS created_at,
                   substring(b.scope FROM '/workspace:([^/]+)') AS subject_workspace,
                   substring(b.scope FROM '/agent:([^/]+)') AS subject_agent, true AS operation_lead
            FROM cycles.budgets AS b
            UNION ALL
            SELECT b.tenant_id, b.budget_id, b.scope, b.unit, 'CREDIT', 100000000, 0, 0, 0, NULL, NULL, NULL,
                   NULL, NULL, 'credit-' || m || '-' || b.budget_id, 'monthly top-up', 'admin', NULL,
                   timestamptz '2026-01-01 00:00:00.5+00' + m * interval '1 month',
                   substring(b.scope FROM '/workspace:([^/]+)'), substring(b.scope FROM '/agent:([^/]+)'), true
            FROM cycles.budgets AS b, generate_series(0, %(months)s - 1) AS m
            WHERE b.scope NOT LIKE '%%/agent:%%'
            UNION ALL
            SELECT b.tenant_id, b.budget_id, b.scope, b.unit, step.operation, 0, step.spent, step.reserved, 0,
                   'rsv_' || r.g, NULL, a.kind, a.name,
                   jsonb_build_object('tenant', 'org' || r.tenant, 'workspace', 'w' || r.workspace,
                                      'agent', 'a' || r.agent),
                   'idem-' || r.g, CASE step.operation WHEN 'EXPIRE' THEN 'expired' END,
                   CASE step.operation WHEN 'EXPIRE' THEN 'system' ELSE 'api_key' END,
                   CASE step.operation WHEN 'EXPIRE' THEN NULL ELSE 'key_t' || r.tenant END,
                   step.at + level.depth * interval '1 microsecond',
                   'w' || r.workspace, 'a' || r.agent, level.depth = 0
            FROM gen_reservation AS r
            CROSS JOIN LATERAL (VALUES
                (0, 'tenant:org' || r.tenant),
                (1, 'tenant:org' || r.tenant || '/workspace:w' || r.workspace),
                (2, 'tenant:org' || r.tenant || '/workspace:w' || r.workspace || '/agent:a' || r.agent)
            ) AS level (depth, scope)
            JOIN cycles.budgets AS b ON b.scope = level.scope AND b.unit = 'USD_MICROCENTS'
            CROSS JOIN LATERAL (VALUES
                (r.action, CASE r.action WHEN 0 THEN 'llm.completion' WHEN 1 THEN 'llm.completion'
                                         ELSE 'tool.call' END,
                           CASE r.action WHEN 0 THEN 'gpt' WHEN 1 THEN 'claude' WHEN 2 THEN 'search'
                                         ELSE 'fetch' END)
            ) AS a (action, kind, name)
            CROSS JOIN LATERAL (VALUES
                ('RESERVE', 0::bigint, r.estimate::bigint, r.reserved_at),
                (r.outcome, CASE WHEN r.outcome = 'COMMIT' THEN (r.estimate * 3 / 4)::bigint ELSE 0 END,
                 -r.estimate::bigint, r.reserved_at + interval '3 seconds')
            ) AS step (operation, spent, reserved, at)
        ) AS legs
    ) AS x
    WINDOW chain AS (PARTITION BY x.budget_id ORDER BY x.created_at)
"""


def populate(cluster: Cluster, rows: int) -> None:
    create_database(cluster, "scale", current_sql())
    # Rows per reservation: 3 legs x 2 steps; plus the credits and creates.
    reservations = max(1, rows // 6)
    with psycopg.connect(cluster.conninfo("scale"), autocommit=True) as conn:
        conn.execute("SET work_mem = '1GB'")
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("INSERT INTO cycles.tenants (tenant_id, name) SELECT 'org' || t, 'Tenant ' || t"
                     " FROM generate_series(0, %s - 1) AS t", (TENANTS,))
        conn.execute("""
            INSERT INTO cycles.budgets (tenant_id, scope, unit, allocated, remaining)
            SELECT 'org' || t, s, 'USD_MICROCENTS', 1000000000, 1000000000
            FROM generate_series(0, %(tenants)s - 1) AS t
            CROSS JOIN LATERAL (
                SELECT 'tenant:org' || t AS s
                UNION ALL SELECT 'tenant:org' || t || '/workspace:w' || w FROM generate_series(0, %(workspaces)s - 1) AS w
                UNION ALL SELECT 'tenant:org' || t || '/workspace:w' || w || '/agent:a' || a
                FROM generate_series(0, %(workspaces)s - 1) AS w, generate_series(0, %(agents)s - 1) AS a
            ) AS scopes""", {"tenants": TENANTS, "workspaces": WORKSPACES, "agents": AGENTS})
        say(f"generating {reservations:,} reservations")
        conn.execute(WEIGHTS, {"tenants": TENANTS})  # type: ignore[arg-type]
        conn.execute(RESERVATIONS, {"tenants": TENANTS, "workspaces": WORKSPACES, "agents": AGENTS,  # type: ignore[arg-type]
                                    "count": reservations, "span_us": 181 * 86400 * 1_000_000})
        # Indexes are built after the load, as a restore would.
        conn.execute("ALTER TABLE cycles.ledger_entries DROP CONSTRAINT ledger_entries_budget_time_key")
        conn.execute("DROP INDEX cycles.ledger_entries_tenant_lead_time_idx")
        conn.execute("DROP INDEX cycles.ledger_entries_reservation_idx")
        say("writing the ledger")
        # One partition per month of the generated history (it starts 2026-01-01).
        conn.execute("SELECT cycles.ensure_ledger_partitions(%s, '2026-01-01')", (MONTHS,))
        conn.execute(LEDGER, {"months": MONTHS})  # type: ignore[arg-type]
        say("indexing")
        conn.execute("ALTER TABLE cycles.ledger_entries ADD CONSTRAINT ledger_entries_budget_time_key"
                     " UNIQUE (tenant_id, budget_id, created_at)")
        conn.execute("CREATE INDEX ledger_entries_tenant_lead_time_idx ON cycles.ledger_entries"
                     " (tenant_id, operation_lead, created_at)")
        conn.execute("CREATE INDEX ledger_entries_reservation_idx ON cycles.ledger_entries (tenant_id, reservation_id)"
                     " WHERE reservation_id IS NOT NULL")
        conn.execute("SELECT setval('cycles.ledger_entries_entry_id_seq', (SELECT max(entry_id)"
                     " FROM cycles.ledger_entries))")
        # The live counters are what the ledger says.
        conn.execute("""
            UPDATE cycles.budgets AS b
            SET allocated = s.allocated, spent = s.spent, reserved = s.reserved, debt = s.debt,
                remaining = s.allocated - s.spent - s.reserved - s.debt
            FROM (SELECT budget_id, sum(allocated_delta)::bigint AS allocated, sum(spent_delta)::bigint AS spent,
                         sum(reserved_delta)::bigint AS reserved, sum(debt_delta)::bigint AS debt
                  FROM cycles.ledger_entries GROUP BY budget_id) AS s
            WHERE s.budget_id = b.budget_id""")
        conn.execute("DROP TABLE gen_reservation, gen_weight")
        say("vacuum analyze")
        conn.execute("VACUUM ANALYZE")


def timed(conn: psycopg.Connection, sql: str, params: Any = None, repeat: int = 5) -> dict[str, Any]:
    timings = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        rows = len(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]
        timings.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(timings), 1), "max_ms": round(max(timings), 1), "rows": rows}


def scale_timings(conninfo: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM cycles.ledger_entries").fetchone()
        busiest = conn.execute("""
            SELECT tenant_id, date_trunc('month', created_at, 'UTC') AS month, count(*) AS n
            FROM cycles.ledger_entries GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1""").fetchone()
        assert count is not None and busiest is not None
        tenant, month, month_rows = busiest
        results["ledger_rows"] = count[0]
        results["busiest_tenant"] = tenant
        results["busiest_tenant_month_rows"] = month_rows
        results["size"] = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('cycles.ledger_entries'))"
                                       ).fetchone()[0]  # type: ignore[index]
        span = {"from": month, "to": conn.execute("SELECT %s::timestamptz + interval '1 month'", (month,)
                                                  ).fetchone()[0]}  # type: ignore[index]
        say(f"{count[0]:,} rows; busiest tenant-month {tenant} {month:%Y-%m}: {month_rows:,} rows")
        results["daily spend, busiest tenant, one month"] = timed(
            conn, "SELECT * FROM cycles_reporting.spend(%(from)s, %(to)s, 'day', '{tenant}', %(t)s)",
            {**span, "t": tenant})
        results["daily spend by agent, busiest tenant, one month"] = timed(
            conn, "SELECT * FROM cycles_reporting.spend(%(from)s, %(to)s, 'day', '{agent}', %(t)s)",
            {**span, "t": tenant})
        results["daily spend by scope, busiest tenant, one month"] = timed(
            conn, "SELECT * FROM cycles_reporting.spend(%(from)s, %(to)s, 'day', '{scope}', %(t)s)",
            {**span, "t": tenant})
        results["daily spend, a small tenant, one month"] = timed(
            conn, "SELECT * FROM cycles_reporting.spend(%(from)s, %(to)s, 'day', '{tenant}', 'org40')", span)
        budgets = conn.execute("""
            SELECT b.scope FROM cycles.budgets AS b WHERE b.tenant_id = %s ORDER BY char_length(b.scope) LIMIT 3
        """, (tenant,)).fetchall()
        as_of = []
        for (scope,) in budgets:
            for moment in ("2026-01-15", "2026-03-31 23:59:59", "2026-06-30 12:00"):
                as_of.append(timed(conn, "SELECT * FROM cycles_reporting.balance_as_of(%s, 'USD_MICROCENTS', %s)",
                                   (scope, moment), repeat=3)["max_ms"])
        results["balance_as_of, busiest budgets (max of 9 instants)"] = {"max_ms": max(as_of),
                                                                          "median_ms": statistics.median(as_of)}
        results["top 10 agents, all tenants, one month"] = timed(
            conn, "SELECT * FROM cycles_reporting.top_spenders(%(from)s, %(to)s, 'agent', 10)", span, repeat=2)
        results["monthly statement, busiest tenant"] = timed(
            conn, "SELECT * FROM cycles_reporting.statement(%s, %s::date)", (tenant, month), repeat=2)
        results["reconciliation (all budgets)"] = timed(
            conn, "SELECT * FROM cycles_reporting.reconciliation", repeat=1)
    for name, value in results.items():
        if isinstance(value, dict):
            say(f"{name}: {value}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=10_000_000, help="ledger rows to generate [10,000,000]")
    parser.add_argument("--seconds", type=int, default=20, help="length of each pgbench run [20]")
    parser.add_argument("--rounds", type=int, default=3, help="pgbench rounds per schema [3]")
    parser.add_argument("--clients", type=int, default=1, help="pgbench clients [1]")
    parser.add_argument("--skip-chain-cost", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running and print where")
    parser.add_argument("--existing", metavar="CONNINFO",
                        help="time the reports on a database an earlier --keep run filled, and stop")
    args = parser.parse_args()
    output = BENCH / "reporting_results.json"
    if args.existing:
        results = json.loads(output.read_text()) if output.exists() else {}
        results["scale"] = scale_timings(args.existing)
        output.write_text(json.dumps(results, indent=2, default=str) + "\n")
        return
    workdir = Path(tempfile.mkdtemp(prefix="cycles-reporting-bench-"))
    workdir.chmod(0o755)
    cluster = Cluster(workdir / "cluster", port=5499)
    cluster.start("-c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min")
    # Runs may measure one part at a time: each updates its own keys.
    results: dict[str, Any] = json.loads(output.read_text()) if output.exists() else {}
    results.update({"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
                    "rows_requested": args.rows})
    try:
        if not args.skip_chain_cost:
            results["chain_cost"] = chain_cost(cluster, workdir, args.seconds, args.rounds, args.clients)
            say(f"chain cost: {results['chain_cost']}")
        if not args.skip_scale:
            started = time.perf_counter()
            populate(cluster, args.rows)
            results["populate_seconds"] = round(time.perf_counter() - started)
            results["scale"] = scale_timings(cluster.conninfo("scale"))
        output.write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"wrote {output}")
    finally:
        if args.keep:
            say(f"cluster kept: {cluster.conninfo('scale')}")
        else:
            cluster.stop("immediate")
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Dashboard page times at scale: ``.venv/bin/python -m bench.dashboard_scale [--samples 30]``.

Starts a throwaway server (``cycles serve`` on its own embedded cluster, as
bench.run does), loads the scale stage's data (bench.run.populate_scale:
10,000 agent budgets and 1,000,000 committed reservations, each with its
COMMIT ledger row, straight in SQL) plus what the other pages list (a few
hundred active reservations, tenants, policies, webhook subscriptions with a
delivery history, events sharing correlation ids), logs in to /dashboard
with the admin key and with a tenant key, and requests every page
``--samples`` times over HTTP. Prints the p50/p99 of each page's response
time (localhost, one server worker) and writes bench/dashboard_results.json;
docs/dashboard.md quotes the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import httpx

from app.demos.sandbox import throwaway_server
from bench.run import Stack, populate_scale

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "dashboard_results.json"
ACTIVE_RESERVATIONS = 500
EXTRA_TENANTS = 200
_HIDDEN = re.compile(r'name="(?P<name>login_token|csrf_token)" value="(?P<value>[^"]+)"')


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def populate_extras(stack: Stack) -> dict[str, str]:
    """What the scale stage does not load: active reservations (some about to
    expire), other tenants, policies, webhooks with deliveries, events with
    shared correlation ids, and a tenant key with every read permission."""
    with stack.connect() as conn:
        # The scale stage's committed reservations expire a day after the
        # load; a real one expires a TTL (60 s) after it was created, and was
        # committed before that. (The finalisation windows rely on it.)
        conn.execute("UPDATE cycles.reservations SET expires_at_ms = created_at_ms + 60000"
                     " WHERE tenant_id = 'scale' AND status = 'COMMITTED'")
        conn.execute("""
            INSERT INTO cycles.reservations (
                reservation_id, tenant_id, idempotency_key, subject, action, unit, estimate, scope_path,
                affected_scopes, budgeted_scopes, overage_policy, status, created_at_ms, expires_at_ms,
                grace_period_ms, ttl_ms, max_extensions)
            SELECT 'rsv_live_' || g, 'scale', 'live-' || g,
                   jsonb_build_object('tenant', 'scale', 'workspace', 'w' || (g %% 100), 'agent', 'a' || g),
                   '{"kind": "llm.completion", "name": "bench"}', 'USD_MICROCENTS', 100,
                   'tenant:scale/workspace:w' || (g %% 100) || '/agent:a' || g,
                   ARRAY['tenant:scale'], ARRAY['tenant:scale/workspace:w' || (g %% 100) || '/agent:a' || g],
                   'ALLOW_IF_AVAILABLE', 'ACTIVE', cycles._now_ms() - 1000,
                   cycles._now_ms() + 3600000 * 20 + g * 1000, 5000, 60000, 10
            FROM generate_series(1, %(n)s) AS g""", {"n": ACTIVE_RESERVATIONS})
        conn.execute("""
            UPDATE cycles.budgets AS b SET reserved = 100, remaining = b.remaining - 100
            FROM cycles.reservations AS r
            WHERE r.tenant_id = 'scale' AND r.status = 'ACTIVE' AND b.scope = r.scope_path""")
        for n in range(EXTRA_TENANTS):
            conn.execute("SELECT cycles.create_tenant(p_tenant_id => %s, p_name => %s)",
                         (f"other-{n:03d}", f"Other {n}"))
        conn.execute("SELECT cycles.create_budget('tenant:scale', 'USD_MICROCENTS', 1000000000000000)")
        for n in range(60):
            conn.execute("SELECT cycles.create_policy(p_tenant_id => 'scale', p_name => %s,"
                         " p_scope_pattern => %s, p_priority => %s)",
                         (f"policy {n}", f"tenant:scale/workspace:w{n}/*", n))
        subscription = ""
        for n in range(30):
            row = conn.execute(
                "SELECT cycles.create_webhook(p_request => %s::jsonb, p_tenant_id => 'scale')",
                (json.dumps({"url": f"https://hooks.example.com/{n}", "event_types": ["budget.exhausted"]}),),
            ).fetchone()
            assert row is not None
            subscription = row[0]["subscription"]["subscription_id"]
        # Events sharing correlation ids, and a delivery history for one
        # subscription (straight inserts: the fan-out trigger fires on events).
        conn.execute("""
            INSERT INTO cycles.events (event_id, tenant_id, event_type, category, scope, source, data,
                                       correlation_id, trace_id, created_at)
            SELECT 'evt_scale_' || g, 'scale', 'reservation.denied', 'reservation',
                   'tenant:scale/workspace:w' || (g % 100) || '/agent:a' || g, 'cycles-server',
                   jsonb_build_object('reason_code', 'BUDGET_EXCEEDED'), 'corr-' || (g % 5000),
                   lpad(to_hex(g), 32, '0'), clock_timestamp() - make_interval(secs => g)
            FROM generate_series(1, 100000) AS g""")
        conn.execute("""
            INSERT INTO cycles.webhook_deliveries (delivery_id, subscription_id, tenant_id, kind, event_seq,
                                                   event_id, event_type, status, attempts, completed_at,
                                                   response_status)
            SELECT 'del_scale_' || e.seq, %(sub)s, 'scale', 'live', e.seq, e.event_id, e.event_type,
                   'SUCCESS', 1, clock_timestamp(), 200
            FROM cycles.events AS e WHERE e.tenant_id = 'scale' LIMIT 20000""", {"sub": subscription})
        reader = conn.execute(
            "SELECT cycles.create_api_key(p_tenant_id => 'scale', p_name => 'dashboard', p_permissions => %s)"
            " ->> 'key_secret'",
            (["admin:read", "events:read", "policies:read", "webhooks:read", "reservations:list",
              "balances:read"],)).fetchone()
        assert reader is not None
        conn.execute("VACUUM ANALYZE")
    return {"subscription": subscription, "reader": str(reader[0])}


def login(client: httpx.Client, key: str) -> None:
    form = client.get("/dashboard/login")
    token = next(m["value"] for m in _HIDDEN.finditer(form.text) if m["name"] == "login_token")
    answer = client.post("/dashboard/login", data={"login_token": token, "api_key": key})
    if answer.status_code != 303:
        raise SystemExit(f"login failed: {answer.status_code} {answer.text[:300]}")


def pages(extras: dict[str, str]) -> dict[str, str]:
    agent = "tenant:scale/workspace:w42/agent:a4242"
    return {
        "overview": "/dashboard/",
        "budgets (all tenants, first page)": "/dashboard/budgets",
        "budgets (tenant, first page)": "/dashboard/budgets?tenant_id=scale",
        "budgets (tree, prefix)": "/dashboard/budgets?tenant_id=scale&view=tree&scope_prefix=tenant:scale/workspace:w42",
        "budgets (in debt)": "/dashboard/budgets?tenant_id=scale&attention=has_debt",
        "budget detail (chart, day)": f"/dashboard/budgets/detail?scope={agent}&unit=USD_MICROCENTS",
        "reservations (newest)": "/dashboard/reservations?tenant=scale",
        "reservations (ACTIVE)": "/dashboard/reservations?tenant=scale&status=ACTIVE",
        "reservations (expiring soon)": "/dashboard/reservations?tenant=scale&window=expiring_soon",
        "reservations (finalised today)": "/dashboard/reservations?tenant=scale&window=finalized_today",
        "reservations (finalised in the last hour)": "/dashboard/reservations?tenant=scale&window=finalized_hour",
        "reservation detail": "/dashboard/reservations/detail?id=rsv_scale_424242",
        "tenants": "/dashboard/tenants",
        "tenant detail": "/dashboard/tenants/detail?tenant_id=scale",
        "policies": "/dashboard/policies?tenant_id=scale",
        "webhooks": "/dashboard/webhooks?tenant_id=scale",
        "webhook detail (deliveries)": f"/dashboard/webhooks/detail?id={extras['subscription']}",
        "events (all)": "/dashboard/events",
        "events (type + tenant)": "/dashboard/events?tenant_id=scale&event_type=reservation.denied",
        "events (correlation)": "/dashboard/events?correlation_id=corr-42",
        "events (trace)": f"/dashboard/events?trace_id={'0' * 28}a4f2",
        "api keys": "/dashboard/api-keys",
        "audit log": "/dashboard/audit",
    }


TENANT_PAGES = ("overview", "budgets (tenant, first page)", "reservations (newest)", "policies", "webhooks",
                "events (all)")


def summarise(client: httpx.Client) -> dict[str, float]:
    """The first overviews summarise the month's ledger (a few hundred ms of
    it each) until the figures can be shown: how many loads and how long."""
    started = time.perf_counter()
    loads, slowest = 0, 0.0
    while loads < 1000:
        before = time.perf_counter()
        response = client.get("/dashboard/")
        slowest = max(slowest, (time.perf_counter() - before) * 1000)
        loads += 1
        if response.status_code != 200:
            raise SystemExit(f"overview: HTTP {response.status_code}")
        if "being summarised" not in response.text:
            break
    result = {"overview_loads": loads, "seconds": round(time.perf_counter() - started, 1),
              "slowest_load_ms": round(slowest, 1)}
    say(f"spend summaries caught up: {result}")
    return result


def measure(client: httpx.Client, paths: dict[str, str], samples: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for name, path in paths.items():
        client.get(path)  # warm the worker's plans and pool
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            response = client.get(path)
            timings.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"{path}: HTTP {response.status_code}")
            if 'role="alert"' in response.text:
                say(f"warning: {path} shows an error: "
                    f"{re.findall(r'role=.alert.[^>]*>([^<]*)', response.text)[:1]}")
        ordered = sorted(timings)
        results[name] = {"p50_ms": round(statistics.median(ordered), 1),
                         "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1)}
        say(f"{name}: p50 {results[name]['p50_ms']} ms, p99 {results[name]['p99_ms']} ms")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    with throwaway_server() as target:
        stack = Stack(target)
        say("populating 10,000 budgets and 1,000,000 reservations")
        populate_scale(stack)
        extras = populate_extras(stack)
        with stack.connect() as conn:
            counts = conn.execute("SELECT (SELECT count(*) FROM cycles.budgets),"
                                  " (SELECT count(*) FROM cycles.reservations),"
                                  " (SELECT count(*) FROM cycles.ledger_entries)").fetchone()
        say(f"loaded: {counts} budgets, reservations, ledger rows")
        all_pages = pages(extras)
        with httpx.Client(base_url=target.base_url, timeout=60) as admin:
            login(admin, target.admin_key)
            catch_up = summarise(admin)
            admin_results = measure(admin, all_pages, args.samples)
        with httpx.Client(base_url=target.base_url, timeout=60) as tenant:
            login(tenant, extras["reader"])
            tenant_results = measure(tenant, {name: all_pages[name] for name in TENANT_PAGES}, args.samples)
    output = {"budgets": counts[0] if counts else None, "reservations": counts[1] if counts else None,
              "ledger_rows": counts[2] if counts else None, "samples": args.samples,
              "summaries_catch_up": catch_up, "admin": admin_results, "tenant": tenant_results}
    RESULTS.write_text(json.dumps(output, indent=2) + "\n")
    print(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()

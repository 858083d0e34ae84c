"""Tenant isolation and authentication over every endpoint the app serves
(its route table, so a new route is covered without being listed), each
aimed at tenant A's resources (its reservation, key, policy, webhook,
event, budget, tenant id), with every wrong credential:

    no key, a malformed key, A's revoked key, A's expired key,
    tenant B's key (every permission), A's key without the permission.

Each is refused (401, 403 or 404; a list with B's key answers only B's own
rows, so never anything of A's) and changes nothing of A's or B's: budgets,
reservations, ledger, events, keys, policies, webhooks and tenant rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.admin.helpers import ALL_PERMISSIONS
from tests.api.provision import USD, Conn, Tenant, funded_tenant, new_api_key, unique
from tests.reliability.openapi_document import _routes
from tests.server import ApiServer

ALL = ALL_PERMISSIONS
# /metrics is open unless CYCLES_METRICS_TOKEN is set; without a token it
# carries no tenant data (the tenant label needs one: docs/operations.md).
PUBLIC = {("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics")}
# A public address literal: checking it needs no DNS lookup.
HOOK_URL = "https://93.184.216.34/hook"


class World:
    """Tenant A (the target, with one of everything) and tenant B."""

    def __init__(self, conn: Conn, http: httpx.Client) -> None:
        self.a = funded_tenant(conn)
        self.b = Tenant(funded_tenant(conn).tenant_id, "")
        self.b = Tenant(self.b.tenant_id, new_api_key(conn, self.b.tenant_id, ALL))
        created = http.post("/v1/reservations", headers=self.a.headers(), json={
            "idempotency_key": unique("iso-"), "subject": {"tenant": self.a.tenant_id, "workspace": "w1"},
            "action": {"kind": "k", "name": "n"}, "estimate": {"unit": USD, "amount": 10}})
        assert created.status_code == 200, created.text
        self.reservation_id: str = created.json()["reservation_id"]
        self.key_id = conn.execute(
            "SELECT key_id FROM cycles.api_keys WHERE tenant_id = %s LIMIT 1", (self.a.tenant_id,)).fetchone()[0]
        self.policy_id = conn.execute(
            "SELECT cycles.create_policy(p_tenant_id => %s, p_name => 'p', p_scope_pattern => %s) ->> 'policy_id'",
            (self.a.tenant_id, f"tenant:{self.a.tenant_id}/*")).fetchone()[0]
        self.subscription_id = conn.execute(
            "SELECT cycles.create_webhook(%s::jsonb, %s) -> 'subscription' ->> 'subscription_id'",
            (json.dumps({"url": "https://hooks.example.com/a", "event_types": ["budget.created"]}),
             self.a.tenant_id)).fetchone()[0]
        self.event_id = conn.execute(
            "SELECT event_id FROM cycles.events WHERE tenant_id = %s LIMIT 1", (self.a.tenant_id,)).fetchone()[0]
        self.revoked = new_api_key(conn, self.a.tenant_id, ALL)
        conn.execute("UPDATE cycles.api_keys SET status = 'REVOKED', revoked_at = clock_timestamp()"
                     " WHERE key_hash = cycles._hash_secret(%s)", (self.revoked,))
        self.expired = new_api_key(conn, self.a.tenant_id, ALL)
        conn.execute("UPDATE cycles.api_keys SET created_at = clock_timestamp() - interval '2 days',"
                     " expires_at = clock_timestamp() - interval '1 day' WHERE key_hash = cycles._hash_secret(%s)",
                     (self.expired,))
        # Keys of A with one permission each: "without the permission" is
        # the one that grants nothing the endpoint needs.
        self.narrow = {p: new_api_key(conn, self.a.tenant_id, [p]) for p in ("balances:read", "events:read")}

    def path(self, template: str) -> str:
        return (template.replace("{reservation_id}", self.reservation_id).replace("{key_id}", self.key_id)
                .replace("{policy_id}", self.policy_id).replace("{subscription_id}", self.subscription_id)
                .replace("{event_id}", self.event_id).replace("{tenant_id}", self.a.tenant_id))

    def params(self) -> dict[str, str]:
        return {"tenant_id": self.a.tenant_id, "tenant": self.a.tenant_id, "scope": self.a.scope, "unit": USD}

    def body(self, method: str, path: str) -> dict[str, Any] | None:
        """A well-formed body for the endpoint (so only the credential is wrong)."""
        if method not in ("POST", "PATCH"):
            return None
        key = unique("iso-")
        subject = {"tenant": self.a.tenant_id, "workspace": "w1"}
        action = {"kind": "k", "name": "n"}
        amount = {"unit": USD, "amount": 1}
        hook = {"url": HOOK_URL, "event_types": ["budget.created"]}
        bodies: dict[str, dict[str, Any]] = {
            "/v1/reservations": {"idempotency_key": key, "subject": subject, "action": action, "estimate": amount},
            "/v1/decide": {"idempotency_key": key, "subject": subject, "action": action, "estimate": amount},
            "/v1/events": {"idempotency_key": key, "subject": subject, "action": action, "actual": amount},
            "/v1/reservations/{reservation_id}/commit": {"idempotency_key": key, "actual": amount},
            "/v1/reservations/{reservation_id}/release": {"idempotency_key": key},
            "/v1/reservations/{reservation_id}/extend": {"idempotency_key": key, "extend_by_ms": 1000},
            "/v1/admin/tenants": {"tenant_id": unique("iso-"), "name": "x"},
            "/v1/admin/tenants/{tenant_id}": {"name": "renamed"},
            "/v1/admin/api-keys": {"tenant_id": self.a.tenant_id, "name": "x"},
            "/v1/admin/api-keys/{key_id}": {"name": "renamed"},
            "/v1/admin/budgets": ({"tenant_id": self.a.tenant_id, "scope": f"{self.a.scope}/workspace:w9",
                                   "unit": USD, "allocated": amount} if method == "POST"
                                  else {"metadata": {"x": "y"}}),
            "/v1/admin/budgets/fund": {"operation": "CREDIT", "amount": amount, "idempotency_key": key},
            "/v1/admin/budgets/freeze": {},
            "/v1/admin/budgets/unfreeze": {},
            "/v1/admin/tenants/bulk-action": {"filter": {"search": self.a.tenant_id}, "action": "SUSPEND",
                                              "idempotency_key": key},
            "/v1/admin/budgets/bulk-action": {"filter": {"tenant_id": self.a.tenant_id}, "action": "CREDIT",
                                              "amount": amount, "idempotency_key": key},
            "/v1/admin/policies": {"tenant_id": self.a.tenant_id, "name": "p2",
                                   "scope_pattern": f"tenant:{self.a.tenant_id}/*"},
            "/v1/admin/policies/{policy_id}": {"name": "renamed"},
            "/v1/admin/webhooks": {**hook, "tenant_id": self.a.tenant_id},
            "/v1/admin/webhooks/{subscription_id}": hook,
            "/v1/webhooks": hook,
            "/v1/webhooks/{subscription_id}": hook,
        }
        return bodies.get(path, {})

    def state(self, conn: Conn) -> Any:
        rows = []
        for tenant_id in (self.a.tenant_id, self.b.tenant_id):
            rows.append(conn.execute("""
                SELECT (SELECT to_jsonb(t) FROM cycles.tenants AS t WHERE t.tenant_id = %(t)s),
                       (SELECT jsonb_agg(to_jsonb(b) ORDER BY b.scope) FROM cycles.budgets AS b WHERE b.tenant_id = %(t)s),
                       (SELECT jsonb_agg(to_jsonb(r) ORDER BY r.reservation_id)
                        FROM cycles.reservations AS r WHERE r.tenant_id = %(t)s),
                       (SELECT count(*) FROM cycles.ledger_entries AS l WHERE l.tenant_id = %(t)s),
                       (SELECT count(*) FROM cycles.events AS e WHERE e.tenant_id = %(t)s),
                       (SELECT jsonb_agg(to_jsonb(k) - 'last_used_at' ORDER BY k.key_id)
                        FROM cycles.api_keys AS k WHERE k.tenant_id = %(t)s),
                       (SELECT jsonb_agg(to_jsonb(p) ORDER BY p.policy_id) FROM cycles.policies AS p
                        WHERE p.tenant_id = %(t)s),
                       (SELECT jsonb_agg(to_jsonb(w) ORDER BY w.subscription_id)
                        FROM cycles.webhook_subscriptions AS w WHERE w.tenant_id = %(t)s)""",
                {"t": tenant_id}).fetchone())
        return rows


CREDENTIALS: dict[str, Callable[[World, str], dict[str, str]]] = {
    "no key": lambda w, path: {},
    "malformed key": lambda w, path: {"X-Cycles-API-Key": "not-a-key", "X-Admin-API-Key": "not-the-admin-key"},
    "revoked key": lambda w, path: {"X-Cycles-API-Key": w.revoked},
    "expired key": lambda w, path: {"X-Cycles-API-Key": w.expired},
    "other tenant's key": lambda w, path: {"X-Cycles-API-Key": w.b.api_key},
    "key without the permission": lambda w, path: {
        "X-Cycles-API-Key": w.narrow["events:read" if path == "/v1/balances" else "balances:read"]},
}

# Calls that, with that credential, are not about A at all: B creating a
# webhook of its own; any valid key introspecting itself (no permission needed).
NOT_ABOUT_A = {
    "other tenant's key": {("POST", "/v1/webhooks")},
    "key without the permission": {("GET", "/v1/auth/introspect")},
}
IMPLIED_TENANT = {"/v1/admin/policies", "/v1/admin/budgets", "/v1/admin/webhooks"}
# B's key creating a policy whose scope_pattern names A: refused as an
# invalid request (the pattern names another tenant than the key's).
REFUSED_AS_INVALID = {("other tenant's key", "POST", "/v1/admin/policies")}
ROUTES = [route for route in _routes() if route not in PUBLIC]


@pytest.fixture(scope="module")
def world(reliability_server: ApiServer, reliability_conn: Conn) -> World:
    with httpx.Client(base_url=reliability_server.base_url, timeout=30) as http:
        return World(reliability_conn, http)


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_every_endpoint_refuses_every_wrong_credential(
        credential: str, world: World, reliability_server: ApiServer, reliability_conn: Conn) -> None:
    before = world.state(reliability_conn)
    failures = []
    with httpx.Client(base_url=reliability_server.base_url, timeout=30) as http:
        for method, template in ROUTES:
            if (method, template) in NOT_ABOUT_A.get(credential, ()):
                continue
            path = world.path(template)
            headers = CREDENTIALS[credential](world, template)
            body = world.body(method, template)
            if body is not None and "X-Admin-API-Key" not in headers and template in IMPLIED_TENANT:
                # A tenant key names no tenant there: its own is implied.
                body.pop("tenant_id", None)
            response = http.request(method, path, params=world.params(), json=body, headers=headers)
            refused = response.status_code in (401, 403, 404) or (
                response.status_code == 400 and (credential, method, template) in REFUSED_AS_INVALID)
            # A list read with B's own key may answer B's own rows: never A's.
            own_rows = (credential == "other tenant's key" and response.status_code == 200 and method == "GET"
                        and "{" not in template and world.a.tenant_id not in response.text
                        and world.reservation_id not in response.text)
            if not (refused or own_rows):
                failures.append(f"{method} {template}: {response.status_code} {response.text[:300]}")
            elif refused:
                document = response.json()
                if set(document) - {"error", "message", "request_id", "trace_id", "details"}:
                    failures.append(f"{method} {template}: not the error shape {document}")
    assert failures == [], "\n".join(failures)
    assert world.state(reliability_conn) == before


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/webhooks"), ("POST", "/v1/admin/webhooks"),
                                              ("PATCH", "/v1/webhooks/{subscription_id}")])
def test_webhook_url_is_not_looked_up_for_an_unauthenticated_caller(
        method: str, path: str, world: World, reliability_server: ApiServer) -> None:
    """Checking a webhook URL resolves its host: an unauthenticated caller
    must get its 401 first, and never make the server look a name up."""
    body = {"url": "https://unresolvable.invalid/hook", "event_types": ["budget.created"]}
    response = httpx.request(method, f"{reliability_server.base_url}{world.path(path)}", json=body, timeout=30,
                             headers={"X-Cycles-API-Key": "not-a-key"})
    assert response.status_code == 401, response.text


def test_near_miss_keys_get_the_same_answer_as_any_wrong_key(
        world: World, reliability_server: ApiServer) -> None:
    """Nothing in the answer tells how much of a key was right: a key wrong
    in its last character, in its first, a random one, a revoked and an
    expired one all get the same status, error and message. (The lookup is
    by a hash of the whole key, and the admin key is compared with
    hmac.compare_digest; response times are not measured here.)"""
    secret = world.a.api_key
    candidates = [secret[:-1] + ("x" if secret[-1] != "x" else "y"), ("x" if secret[0] != "x" else "y") + secret[1:],
                  secret[: len(secret) // 2], unique("cyc_live_"), world.revoked, world.expired]
    answers = set()
    with httpx.Client(base_url=reliability_server.base_url, timeout=30) as http:
        for key in candidates:
            response = http.get("/v1/balances", params={"tenant": world.a.tenant_id},
                                headers={"X-Cycles-API-Key": key})
            document = response.json()
            answers.add((response.status_code, document["error"], document["message"],
                         tuple(sorted(document.get("details", {}).items()))))
        admin = {http.get("/v1/admin/tenants", headers={"X-Admin-API-Key": key}).json()["message"]
                 for key in (reliability_server.admin_key[:-1] + "x", "x" + reliability_server.admin_key[1:], "x")}
    assert len(answers) == 1, answers
    assert next(iter(answers))[:2] == (401, "UNAUTHORIZED")
    assert len(admin) == 1, admin

"""Bad input: every class of malformed request is a 400 INVALID_REQUEST in
the spec's shape, naming the offending field, and changes nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.checks import CREATE_KEYS, assert_error, assert_ok
from tests.api.provision import Tenant, event_body, funded_tenant, reserve_body, tenant_state, unique

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        target[leaf] = value
    return mutate


def _drop(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target = body
        for name in parents:
            target = target[name]
        del target[leaf]
    return mutate


BAD_RESERVATIONS: list[tuple[str, Mutation, str]] = [
    ("unknown field", _set("foo", 1), "foo"),
    ("unknown subject field", _set("subject.team", "x"), "team"),
    ("unknown action field", _set("action.cost", 1), "cost"),
    ("unknown estimate field", _set("estimate.currency", "USD"), "currency"),
    ("amount as string", _set("estimate.amount", "100"), "$.estimate.amount"),
    ("negative amount", _set("estimate.amount", -1), "$.estimate.amount"),
    ("amount 2^63", _set("estimate.amount", 2**63), "$.estimate.amount"),
    ("huge amount", _set("estimate.amount", 10**30), "$.estimate.amount"),
    ("fractional amount", _set("estimate.amount", 1.5), "$.estimate.amount"),
    ("float amount", _set("estimate.amount", 1.0), "$.estimate.amount"),
    ("boolean amount", _set("estimate.amount", True), "$.estimate.amount"),
    ("null amount", _set("estimate.amount", None), "$.estimate.amount"),
    ("unknown unit", _set("estimate.unit", "EUR"), "$.estimate.unit"),
    ("missing estimate", _drop("estimate"), "estimate"),
    ("missing idempotency key", _drop("idempotency_key"), "idempotency_key"),
    ("empty idempotency key", _set("idempotency_key", ""), "$.idempotency_key"),
    ("idempotency key of 257", _set("idempotency_key", "k" * 257), "$.idempotency_key"),
    ("idempotency key as number", _set("idempotency_key", 7), "$.idempotency_key"),
    ("empty subject", _set("subject", {}), "$.subject"),
    ("dimensions-only subject", _set("subject", {"dimensions": {"team": "a"}}), "$.subject"),
    ("subject as string", _set("subject", "tenant:x"), "$.subject"),
    ("subject field of 129", _set("subject.workspace", "w" * 129), "$.subject.workspace"),
    ("subject field with a delimiter", _set("subject.workspace", "a/b"), "$.subject.workspace"),
    ("empty subject field", _set("subject.agent", ""), "$.subject.agent"),
    ("17 dimensions", _set("subject.dimensions", {f"d{i}": "v" for i in range(17)}), "$.subject.dimensions"),
    ("dimension value of 257", _set("subject.dimensions", {"d": "v" * 257}), "$.subject.dimensions"),
    ("dimension value not a string", _set("subject.dimensions", {"d": 1}), "$.subject.dimensions"),
    ("kind of 65", _set("action.kind", "k" * 65), "$.action.kind"),
    ("missing action name", _drop("action.name"), "name"),
    ("name of 257", _set("action.name", "n" * 257), "$.action.name"),
    ("11 tags", _set("action.tags", [f"t{i}" for i in range(11)]), "$.action.tags"),
    ("tag of 65", _set("action.tags", ["t" * 65]), "$.action.tags"),
    ("ttl 999", _set("ttl_ms", 999), "$.ttl_ms"),
    ("ttl 86400001", _set("ttl_ms", 86_400_001), "$.ttl_ms"),
    ("grace 60001", _set("grace_period_ms", 60_001), "$.grace_period_ms"),
    ("negative grace", _set("grace_period_ms", -1), "$.grace_period_ms"),
    ("unknown overage policy", _set("overage_policy", "NOPE"), "$.overage_policy"),
    ("dry_run as string", _set("dry_run", "yes"), "$.dry_run"),
    ("metadata not an object", _set("metadata", [1, 2]), "$.metadata"),
]


@pytest.fixture
def tenant(admin_conn: Any) -> Tenant:
    return funded_tenant(admin_conn)


@pytest.mark.parametrize(("mutate", "mentions"), [(m, f) for _, m, f in BAD_RESERVATIONS],
                         ids=[name for name, _, _ in BAD_RESERVATIONS])
def test_bad_reservation_is_400_naming_the_field_and_changes_nothing(
    http: httpx.Client, admin_conn: Any, tenant: Tenant, mutate: Mutation, mentions: str,
) -> None:
    body = reserve_body(tenant)
    mutate(body)
    before = tenant_state(admin_conn, tenant.tenant_id)
    response = http.post("/v1/reservations", json=body, headers=tenant.headers())
    assert_error(response, 400, "INVALID_REQUEST", mentions=mentions)
    assert tenant_state(admin_conn, tenant.tenant_id) == before


@pytest.mark.parametrize(("content", "mentions"), [
    (b"", "body is required"),
    (b"   ", "body is required"),
    (b"{", "invalid request body"),
    (b'{"idempotency_key": "k",}', "malformed"),
    (b"[]", "object"),
    (b"null", "object"),
    (b"42", "object"),
    (b'{"a": 1} {"b": 2}', "invalid request body"),
    (b"idempotency_key=k&subject=x", "malformed"),
    (b'{"idempotency_key": "\xff\xfe"}', "UTF-8"),
    (b'{"metadata": {"deep": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "nested"),
])
def test_malformed_bodies(http: httpx.Client, admin_conn: Any, tenant: Tenant, content: bytes, mentions: str) -> None:
    before = tenant_state(admin_conn, tenant.tenant_id)
    response = http.post("/v1/reservations", content=content, headers=tenant.headers(
        **{"Content-Type": "application/json"}))
    assert_error(response, 400, "INVALID_REQUEST", mentions=mentions)
    assert tenant_state(admin_conn, tenant.tenant_id) == before


def test_nul_character_in_a_string_is_400_not_500(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # PostgreSQL text cannot hold NUL: it must be refused before SQL sees it.
    body = reserve_body(tenant, metadata={"note": "a\x00b"})
    response = http.post("/v1/reservations", json=body, headers=tenant.headers())
    assert_error(response, 400, "INVALID_REQUEST", mentions="NUL")
    # An escaped backslash followed by "u0000" is ordinary text.
    ok = http.post("/v1/reservations", json=reserve_body(tenant, metadata={"note": "\\u0000"}),
                   headers=tenant.headers())
    assert ok.status_code == 200, ok.text


def test_body_over_64_kib_is_refused(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    before = tenant_state(admin_conn, tenant.tenant_id)
    body = reserve_body(tenant, metadata={"blob": "x" * 70_000})
    response = http.post("/v1/reservations", json=body, headers=tenant.headers())
    assert_error(response, 413, "INVALID_REQUEST")
    assert tenant_state(admin_conn, tenant.tenant_id) == before


def test_v0_1_26_fields_are_accepted_and_ignored(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    # protocol checks, item 49
    body = reserve_body(tenant)
    extended = copy.deepcopy(body)
    extended["observe_mode"] = "OBSERVE"
    extended["action"]["policy_keys"] = {"host": "api.openai.com"}
    first = assert_ok(http.post("/v1/reservations", json=extended, headers=tenant.headers()), 200,
                      CREATE_KEYS, {"decision", "reservation_id"})
    # Ignored means not part of the request either: the same body without
    # them is a replay of the same reservation, not an idempotency mismatch.
    replay = http.post("/v1/reservations", json=body, headers=tenant.headers())
    assert replay.status_code == 200, replay.text
    assert replay.json()["reservation_id"] == first["reservation_id"]


def test_idempotency_header_must_match_the_body(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    body = reserve_body(tenant)
    before = tenant_state(admin_conn, tenant.tenant_id)
    response = http.post("/v1/reservations", json=body,
                         headers=tenant.headers(**{"X-Idempotency-Key": "something-else"}))
    assert_error(response, 400, "INVALID_REQUEST", mentions="X-Idempotency-Key")
    assert tenant_state(admin_conn, tenant.tenant_id) == before
    same = http.post("/v1/reservations", json=body,
                     headers=tenant.headers(**{"X-Idempotency-Key": body["idempotency_key"]}))
    assert same.status_code == 200, same.text


def _reserve(http: httpx.Client, tenant: Tenant) -> str:
    response = http.post("/v1/reservations", json=reserve_body(tenant), headers=tenant.headers())
    assert response.status_code == 200, response.text
    reservation_id: str = response.json()["reservation_id"]
    return reservation_id


BAD_FOLLOW_UPS: list[tuple[str, dict[str, Any], str]] = [
    ("commit", {"idempotency_key": "k"}, "actual"),
    ("commit", {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": 1.5}}, "$.actual.amount"),
    ("commit", {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": -5}}, "$.actual.amount"),
    ("commit", {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": 5}, "foo": 1}, "foo"),
    ("commit", {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": 5},
                "metrics": {"tokens_input": -1}}, "$.metrics.tokens_input"),
    ("commit", {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": 5},
                "metrics": {"gpu_seconds": 3}}, "gpu_seconds"),
    ("commit", {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": 5},
                "metrics": {"model_version": "m" * 129}}, "$.metrics.model_version"),
    ("release", {"idempotency_key": "k", "reason": "r" * 257}, "$.reason"),
    ("release", {}, "idempotency_key"),
    ("release", {"idempotency_key": "k", "amount": 3}, "amount"),
    ("extend", {"idempotency_key": "k", "extend_by_ms": 0}, "$.extend_by_ms"),
    ("extend", {"idempotency_key": "k", "extend_by_ms": 86_400_001}, "$.extend_by_ms"),
    ("extend", {"idempotency_key": "k"}, "extend_by_ms"),
    ("extend", {"idempotency_key": "k", "extend_by_ms": 1000.5}, "$.extend_by_ms"),
]


@pytest.mark.parametrize(("operation", "body", "mentions"), BAD_FOLLOW_UPS)
def test_bad_commit_release_extend(
    http: httpx.Client, admin_conn: Any, tenant: Tenant, operation: str, body: dict[str, Any], mentions: str,
) -> None:
    reservation_id = _reserve(http, tenant)
    before = tenant_state(admin_conn, tenant.tenant_id)
    response = http.post(f"/v1/reservations/{reservation_id}/{operation}", json=body, headers=tenant.headers())
    assert_error(response, 400, "INVALID_REQUEST", mentions=mentions)
    assert tenant_state(admin_conn, tenant.tenant_id) == before


@pytest.mark.parametrize("operation", ["commit", "release", "extend"])
def test_follow_up_header_key_mismatch(http: httpx.Client, admin_conn: Any, tenant: Tenant, operation: str) -> None:
    reservation_id = _reserve(http, tenant)
    body = {
        "commit": {"idempotency_key": "a", "actual": {"unit": "USD_MICROCENTS", "amount": 5}},
        "release": {"idempotency_key": "a"},
        "extend": {"idempotency_key": "a", "extend_by_ms": 1000},
    }[operation]
    before = tenant_state(admin_conn, tenant.tenant_id)
    response = http.post(f"/v1/reservations/{reservation_id}/{operation}", json=body,
                         headers=tenant.headers(**{"X-Idempotency-Key": "b"}))
    assert_error(response, 400, "INVALID_REQUEST", mentions="X-Idempotency-Key")
    assert tenant_state(admin_conn, tenant.tenant_id) == before


@pytest.mark.parametrize(("method", "suffix"), [
    ("POST", "/commit"), ("POST", "/release"), ("POST", "/extend"), ("GET", ""),
])
def test_reservation_id_longer_than_128_is_400(http: httpx.Client, tenant: Tenant, method: str, suffix: str) -> None:
    body = {"idempotency_key": "k", "actual": {"unit": "USD_MICROCENTS", "amount": 1}, "extend_by_ms": 1000}
    response = http.request(method, f"/v1/reservations/{'r' * 129}{suffix}", headers=tenant.headers(),
                            json=body if method == "POST" else None)
    assert_error(response, 400, "INVALID_REQUEST", mentions="reservation_id")


def test_reservation_id_of_128_is_looked_up(http: httpx.Client, tenant: Tenant) -> None:
    response = http.get(f"/v1/reservations/{'r' * 128}", headers=tenant.headers())
    assert_error(response, 404, "NOT_FOUND")


def test_nul_in_path_or_query_is_400(http: httpx.Client, tenant: Tenant) -> None:
    assert_error(http.get("/v1/reservations/ab%00cd", headers=tenant.headers()), 400, "INVALID_REQUEST")
    assert_error(http.get("/v1/reservations?workspace=a%00b", headers=tenant.headers()), 400, "INVALID_REQUEST")


BAD_EVENTS: list[tuple[str, Mutation, str]] = [
    ("missing actual", _drop("actual"), "actual"),
    ("negative actual", _set("actual.amount", -1), "$.actual.amount"),
    ("bad overage policy", _set("overage_policy", "SOMETIMES"), "$.overage_policy"),
    ("negative client time", _set("client_time_ms", -1), "$.client_time_ms"),
    ("dry_run is not an event field", _set("dry_run", True), "dry_run"),
    ("dimensions-only subject", _set("subject", {"dimensions": {}}), "$.subject"),
]


@pytest.mark.parametrize(("mutate", "mentions"), [(m, f) for _, m, f in BAD_EVENTS],
                         ids=[name for name, _, _ in BAD_EVENTS])
def test_bad_event(http: httpx.Client, admin_conn: Any, tenant: Tenant, mutate: Mutation, mentions: str) -> None:
    body = event_body(tenant)
    mutate(body)
    before = tenant_state(admin_conn, tenant.tenant_id)
    assert_error(http.post("/v1/events", json=body, headers=tenant.headers()), 400, "INVALID_REQUEST", mentions)
    assert tenant_state(admin_conn, tenant.tenant_id) == before


@pytest.mark.parametrize(("field", "value", "mentions"), [
    ("dry_run", True, "dry_run"),
    ("ttl_ms", 5000, "ttl_ms"),
    ("estimate", {"unit": "TOKENS", "amount": -2}, "$.estimate.amount"),
])
def test_bad_decide(
    http: httpx.Client, admin_conn: Any, tenant: Tenant, field: str, value: Any, mentions: str,
) -> None:
    body = reserve_body(tenant)
    body[field] = value
    before = tenant_state(admin_conn, tenant.tenant_id)
    assert_error(http.post("/v1/decide", json=body, headers=tenant.headers()), 400, "INVALID_REQUEST", mentions)
    assert tenant_state(admin_conn, tenant.tenant_id) == before


def test_decide_header_key_mismatch(http: httpx.Client, tenant: Tenant) -> None:
    body = reserve_body(tenant)
    response = http.post("/v1/decide", json=body, headers=tenant.headers(**{"X-Idempotency-Key": unique("x")}))
    assert_error(response, 400, "INVALID_REQUEST", mentions="X-Idempotency-Key")


def test_event_header_key_mismatch(http: httpx.Client, admin_conn: Any, tenant: Tenant) -> None:
    before = tenant_state(admin_conn, tenant.tenant_id)
    response = http.post("/v1/events", json=event_body(tenant),
                         headers=tenant.headers(**{"X-Idempotency-Key": unique("x")}))
    assert_error(response, 400, "INVALID_REQUEST", mentions="X-Idempotency-Key")
    assert tenant_state(admin_conn, tenant.tenant_id) == before


@pytest.mark.parametrize("query", [
    "limit=0", "limit=201", "limit=abc", "limit=1.5", "limit=-1", "limit=%201", "limit=1_0",
    "sort_by=bogus", "sort_dir=up", "status=DONE", "status=active",
])
def test_bad_list_query(http: httpx.Client, tenant: Tenant, query: str) -> None:
    name = query.split("=")[0]
    assert_error(http.get(f"/v1/reservations?{query}", headers=tenant.headers()), 400, "INVALID_REQUEST", name)


@pytest.mark.parametrize("query", [
    "limit=", "sort_by=&sort_dir=", "status=", "from=&to=", "unknown_param=1", "include=metadata,,x",
    "limit=200&sort_by=reserved&sort_dir=asc",
])
def test_blank_and_unknown_list_parameters_are_unset(http: httpx.Client, tenant: Tenant, query: str) -> None:
    response = http.get(f"/v1/reservations?{query}", headers=tenant.headers())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("query", ["", "tenant=", "include_children=true", "limit=10"])
def test_balances_need_a_subject_filter(http: httpx.Client, tenant: Tenant, query: str) -> None:
    # protocol checks, item 5
    assert_error(http.get(f"/v1/balances?{query}", headers=tenant.headers()), 400, "INVALID_REQUEST",
                 "subject filter")


@pytest.mark.parametrize("query", ["limit=0", "limit=500", "include_children=maybe", "unit=EUR"])
def test_bad_balances_query(http: httpx.Client, tenant: Tenant, query: str) -> None:
    name = query.split("=")[0]
    response = http.get(f"/v1/balances?tenant={tenant.tenant_id}&{query}", headers=tenant.headers())
    assert_error(response, 400, "INVALID_REQUEST", name)


def test_non_ascii_idempotency_header_matches_its_utf8_body_key(http: httpx.Client, tenant: Tenant) -> None:
    body = reserve_body(tenant, idempotency_key=unique("ключ-"))
    response = http.post("/v1/reservations", json=body, headers={
        "X-Cycles-API-Key": tenant.api_key, "X-Idempotency-Key": body["idempotency_key"].encode()})
    assert response.status_code == 200, response.text

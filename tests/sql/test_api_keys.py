"""cycles.create_api_key / list_api_keys / revoke_api_key."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import psycopg
import pytest

from tests.sql.admin_calls import ISO, call, fails

DEFAULT_PERMISSIONS = [
    "reservations:create", "reservations:commit", "reservations:release", "reservations:extend",
    "reservations:list", "balances:read", "budgets:read", "budgets:write", "policies:read", "policies:write"]


def counts(db: psycopg.Connection) -> tuple[int, ...]:
    row = db.execute("SELECT (SELECT count(*) FROM cycles.api_keys), (SELECT count(*) FROM cycles.events)").fetchone()
    assert row is not None
    return tuple(row)


@pytest.fixture
def acme(db: psycopg.Connection) -> psycopg.Connection:
    call(db, "SELECT cycles.create_tenant('acme', 'Acme')")
    return db


def test_create_returns_secret_once_and_stores_only_its_hash(acme: psycopg.Connection) -> None:
    key = call(acme, "SELECT cycles.create_api_key(p_tenant_id => 'acme', p_name => 'agent')")
    assert set(key) == {"key_id", "key_secret", "key_prefix", "tenant_id", "permissions", "created_at", "expires_at"}
    assert re.fullmatch(r"key_[0-9a-f]{16}", key["key_id"])
    assert key["key_secret"].startswith("cyc_live_") and len(key["key_secret"]) >= 40
    assert key["key_prefix"] == key["key_secret"][:14]
    assert key["tenant_id"] == "acme" and key["permissions"] == DEFAULT_PERMISSIONS
    assert ISO.match(key["created_at"]) and ISO.match(key["expires_at"])
    days = call(acme, "SELECT round(extract(epoch FROM expires_at - created_at) / 86400) FROM cycles.api_keys")
    assert days == 90

    stored = acme.execute("SELECT key_hash, key_prefix FROM cycles.api_keys").fetchone()
    assert stored == (hashlib.sha256(key["key_secret"].encode()).digest(), key["key_prefix"])
    row_text = call(acme, "SELECT row_to_json(k)::text FROM cycles.api_keys AS k")
    assert key["key_secret"] not in row_text
    event = acme.execute("SELECT data::text FROM cycles.events WHERE event_type = 'api_key.created'").fetchone()
    assert event is not None and key["key_secret"] not in event[0]
    assert json.loads(event[0]) == {"key_id": key["key_id"], "key_name": "agent", "new_status": "ACTIVE",
                                    "permissions": DEFAULT_PERMISSIONS}

    # The secret authenticates.
    authenticated = call(acme, "SELECT (cycles._authenticate(%(s)s)).o_key.key_id", s=key["key_secret"])
    assert authenticated == key["key_id"]


def test_create_with_explicit_permissions_expiry_and_options(acme: psycopg.Connection) -> None:
    key = call(acme, """
        SELECT cycles.create_api_key('acme', 'ops', ARRAY['admin:read', 'events:read', 'admin:read'],
                                     '2099-01-02T03:04:05Z', %(o)s::jsonb)""",
               o=json.dumps({"description": "for ops", "scope_filter": ["workspace:eng"], "metadata": {"a": 1}}))
    assert key["permissions"] == ["admin:read", "events:read"]
    assert key["expires_at"] == "2099-01-02T03:04:05.000Z"
    listed = call(acme, "SELECT cycles.list_api_keys('acme')")["keys"][0]
    assert listed["description"] == "for ops" and listed["scope_filter"] == ["workspace:eng"]
    assert listed["metadata"] == {"a": 1}


def test_every_spec_permission_is_accepted(acme: psycopg.Connection) -> None:
    permissions = call(acme, "SELECT to_jsonb(cycles._permissions())")
    assert len(permissions) == 27
    key = call(acme, "SELECT cycles.create_api_key('acme', 'all', %(p)s)", p=permissions)
    assert key["permissions"] == permissions


@pytest.mark.parametrize(("tenant_id", "name", "permissions", "expires_at", "options", "code"), [
    ("acme", "k", ["reservations:create", "reservations:delete"], None, {}, "INVALID_REQUEST"),
    ("acme", "k", ["ADMIN:READ"], None, {}, "INVALID_REQUEST"),
    ("acme", "k", [], None, {}, "INVALID_REQUEST"),
    ("acme", "k", None, "2001-01-01T00:00:00Z", {}, "INVALID_REQUEST"),
    ("acme", "", None, None, {}, "INVALID_REQUEST"),
    ("acme", "k", None, None, {"colour": "red"}, "INVALID_REQUEST"),
    ("acme", "k", None, None, {"scope_filter": "workspace:eng"}, "INVALID_REQUEST"),
    ("acme", "k", None, None, {"description": "d" * 1025}, "INVALID_REQUEST"),
    ("acme", "k", None, None, {"metadata": [1]}, "INVALID_REQUEST"),
    ("nobody", "k", None, None, {}, "TENANT_NOT_FOUND"),
])
def test_create_rejects_bad_input_and_changes_nothing(
        acme: psycopg.Connection, tenant_id: str, name: str, permissions: list[str] | None,
        expires_at: str | None, options: dict[str, Any], code: str) -> None:
    before = counts(acme)
    fails(acme, code, "SELECT cycles.create_api_key(%(t)s, %(n)s, %(p)s, %(e)s, %(o)s::jsonb)",
          t=tenant_id, n=name, p=permissions, e=expires_at, o=json.dumps(options))
    assert counts(acme) == before


def test_create_for_closed_tenant_is_refused(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.close_tenant('acme')")
    before = counts(acme)
    fails(acme, "TENANT_CLOSED", "SELECT cycles.create_api_key('acme', 'late')")
    assert counts(acme) == before


def test_suspended_tenant_may_still_get_keys(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.suspend_tenant('acme')")
    assert call(acme, "SELECT cycles.create_api_key('acme', 'k')")["tenant_id"] == "acme"


def test_list_never_shows_secrets_and_pages(acme: psycopg.Connection) -> None:
    call(acme, "SELECT cycles.create_tenant('other', 'Other')")
    created = [call(acme, "SELECT cycles.create_api_key('acme', %(n)s)", n=f"k{i}") for i in range(3)]
    call(acme, "SELECT cycles.create_api_key('other', 'theirs')")
    page = call(acme, "SELECT cycles.list_api_keys('acme', p_limit => 2)")
    assert [k["key_id"] for k in page["keys"]] == [c["key_id"] for c in created[:2]]
    assert page["has_more"] is True
    rest = call(acme, "SELECT cycles.list_api_keys('acme', p_limit => 2, p_cursor => %(c)s)", c=page["next_cursor"])
    assert [k["key_id"] for k in rest["keys"]] == [created[2]["key_id"]] and rest["has_more"] is False
    for listed in page["keys"] + rest["keys"]:
        assert "key_secret" not in listed and "key_hash" not in listed
        assert listed["status"] == "ACTIVE" and listed["tenant_id"] == "acme"
        assert set(listed) <= {"key_id", "tenant_id", "key_prefix", "name", "description", "permissions",
                               "scope_filter", "status", "created_at", "last_used_at", "expires_at",
                               "revoked_at", "revoked_reason", "metadata"}
    text = json.dumps(page) + json.dumps(rest)
    assert all(c["key_secret"] not in text for c in created)
    fails(acme, "TENANT_NOT_FOUND", "SELECT cycles.list_api_keys('nobody')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.list_api_keys('acme', p_status => 'LOST')")
    fails(acme, "INVALID_REQUEST", "SELECT cycles.list_api_keys('acme', p_cursor => 'key_nope')")


def test_expired_key_is_listed_as_expired(acme: psycopg.Connection) -> None:
    key = call(acme, "SELECT cycles.create_api_key('acme', 'k')")
    acme.execute("UPDATE cycles.api_keys SET created_at = now() - interval '2 days', "
                 "expires_at = now() - interval '1 day'")
    listed = call(acme, "SELECT cycles.list_api_keys('acme', p_status => 'EXPIRED')")["keys"]
    assert [(k["key_id"], k["status"]) for k in listed] == [(key["key_id"], "EXPIRED")]
    assert call(acme, "SELECT cycles.list_api_keys('acme', p_status => 'ACTIVE')")["keys"] == []


def test_revoke(acme: psycopg.Connection) -> None:
    key = call(acme, "SELECT cycles.create_api_key('acme', 'k')")
    revoked = call(acme, "SELECT cycles.revoke_api_key(%(k)s, 'rotated', '{\"request_id\": \"r1\"}')",
                   k=key["key_id"])
    assert revoked["status"] == "REVOKED" and revoked["revoked_reason"] == "rotated"
    assert ISO.match(revoked["revoked_at"])
    event = acme.execute("SELECT data, request_id FROM cycles.events WHERE event_type = 'api_key.revoked'").fetchone()
    assert event == ({"key_id": key["key_id"], "key_name": "k", "previous_status": "ACTIVE",
                      "new_status": "REVOKED", "permissions": DEFAULT_PERMISSIONS}, "r1")
    # A revoked key no longer authenticates.
    fails(acme, "UNAUTHORIZED", "SELECT cycles._authenticate(%(s)s)", s=key["key_secret"])

    before = counts(acme)
    fails(acme, "INVALID_TRANSITION", "SELECT cycles.revoke_api_key(%(k)s)", k=key["key_id"])
    fails(acme, "NOT_FOUND", "SELECT cycles.revoke_api_key('key_0000000000000000')")
    other = call(acme, "SELECT cycles.create_api_key('acme', 'k2')")
    before = counts(acme)
    fails(acme, "INVALID_REQUEST", "SELECT cycles.revoke_api_key(%(k)s, %(r)s)", k=other["key_id"], r="r" * 513)
    assert counts(acme) == before
    assert call(acme, "SELECT status FROM cycles.api_keys WHERE key_id = %(k)s", k=other["key_id"]) == "ACTIVE"

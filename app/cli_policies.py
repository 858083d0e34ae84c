"""``cycles policy`` and ``cycles event``: policies with caps, and the event
stream, from the command line. Each command is one cycles.* call, the same
one the admin REST API makes."""

from __future__ import annotations

import json
from typing import Any

import click

from app.cli_admin import POLICIES, _call, _emit, _show_object, _show_rows, json_option

POLICY_COLUMNS = ["policy_id", "tenant_id", "name", "scope_pattern", "priority", "status", "commit_overage_policy"]
EVENT_COLUMNS = ["timestamp", "event_id", "event_type", "tenant_id", "scope", "correlation_id"]
CAP_FIELDS = ("max_tokens", "max_steps_remaining", "cooldown_ms")


def _caps(max_tokens: int | None, max_steps_remaining: int | None, cooldown_ms: int | None,
          allow_tools: tuple[str, ...], deny_tools: tuple[str, ...]) -> dict[str, Any] | None:
    caps: dict[str, Any] = {name: value for name, value in zip(
        CAP_FIELDS, (max_tokens, max_steps_remaining, cooldown_ms), strict=True) if value is not None}
    if allow_tools:
        caps["tool_allowlist"] = list(allow_tools)
    if deny_tools:
        caps["tool_denylist"] = list(deny_tools)
    return caps or None


def _ttl_override(default_ttl_ms: int | None, max_ttl_ms: int | None,
                  max_extensions: int | None) -> dict[str, int] | None:
    override = {name: value for name, value in (
        ("default_ttl_ms", default_ttl_ms), ("max_ttl_ms", max_ttl_ms), ("max_extensions", max_extensions))
        if value is not None}
    return override or None


def caps_options(function: Any) -> Any:
    for option in reversed([
        click.option("--max-tokens", type=click.IntRange(0), help="Cap: max_tokens."),
        click.option("--max-steps", "max_steps_remaining", type=click.IntRange(0), help="Cap: max_steps_remaining."),
        click.option("--cooldown-ms", type=click.IntRange(0), help="Cap: cooldown_ms."),
        click.option("--allow-tool", "allow_tools", multiple=True, help="Cap: tool_allowlist entry (repeatable)."),
        click.option("--deny-tool", "deny_tools", multiple=True, help="Cap: tool_denylist entry (repeatable)."),
        click.option("--overage-policy", type=click.Choice(POLICIES), help="Commit overage policy it imposes."),
        click.option("--default-ttl-ms", type=click.IntRange(1000, 86400000), help="TTL override: default."),
        click.option("--max-ttl-ms", type=click.IntRange(1000, 86400000), help="TTL override: maximum."),
        click.option("--max-extensions", type=click.IntRange(0), help="TTL override: maximum extensions."),
    ]):
        function = option(function)
    return function


@click.group()
def policy() -> None:
    """Policies: caps, overage policy and TTL overrides for the scopes a pattern matches."""


@policy.command(name="create")
@click.argument("tenant_id")
@click.argument("name")
@click.argument("scope_pattern")
@click.option("--priority", type=click.IntRange(0), default=0, show_default=True, help="Highest wins.")
@caps_options
@click.option("--effective-from", help="ISO-8601 start of the policy's effect [default: now].")
@click.option("--effective-until", help="ISO-8601 end of the policy's effect [default: none].")
@click.option("--description")
@json_option
def policy_create(tenant_id: str, name: str, scope_pattern: str, priority: int, max_tokens: int | None,
                  max_steps_remaining: int | None, cooldown_ms: int | None, allow_tools: tuple[str, ...],
                  deny_tools: tuple[str, ...], overage_policy: str | None, default_ttl_ms: int | None,
                  max_ttl_ms: int | None, max_extensions: int | None, effective_from: str | None,
                  effective_until: str | None, description: str | None, as_json: bool) -> None:
    """Create a policy for SCOPE_PATTERN (e.g. tenant:acme/*, agent:*, */agent:bot)."""
    caps = _caps(max_tokens, max_steps_remaining, cooldown_ms, allow_tools, deny_tools)
    override = _ttl_override(default_ttl_ms, max_ttl_ms, max_extensions)
    result = _call(
        "SELECT cycles.create_policy(p_tenant_id => %(tenant)s, p_name => %(name)s, p_scope_pattern => %(pattern)s,"
        " p_priority => %(priority)s, p_caps => %(caps)s::jsonb, p_commit_overage_policy => %(overage)s,"
        " p_reservation_ttl_override => %(ttl)s::jsonb, p_effective_from => %(from)s::timestamptz,"
        " p_effective_until => %(until)s::timestamptz, p_description => %(description)s, p_ctx => %(ctx)s::jsonb)",
        {"tenant": tenant_id, "name": name, "pattern": scope_pattern, "priority": priority,
         "caps": json.dumps(caps) if caps else None, "overage": overage_policy,
         "ttl": json.dumps(override) if override else None, "from": effective_from, "until": effective_until,
         "description": description})
    _emit(result, as_json, lambda p: _show_object(f"policy {p['policy_id']}", p))


@policy.command(name="list")
@click.option("--tenant", "tenant_id")
@click.option("--scope-pattern")
@click.option("--status", type=click.Choice(["ACTIVE", "DISABLED"]))
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def policy_list(tenant_id: str | None, scope_pattern: str | None, status: str | None, limit: int,
                cursor: str | None, as_json: bool) -> None:
    """List policies."""
    result = _call(
        "SELECT cycles.list_policies(p_tenant_id => %(tenant)s, p_scope_pattern => %(pattern)s,"
        " p_status => %(status)s, p_limit => %(limit)s, p_cursor => %(cursor)s, p_ctx => %(ctx)s::jsonb)",
        {"tenant": tenant_id, "pattern": scope_pattern, "status": status, "limit": limit, "cursor": cursor})
    _emit(result, as_json, lambda page: _show_rows("policies", page["policies"], POLICY_COLUMNS, page))


@policy.command(name="show")
@click.argument("policy_id")
@json_option
def policy_show(policy_id: str, as_json: bool) -> None:
    """Show one policy."""
    result = _call("SELECT cycles.get_policy(p_policy_id => %(id)s, p_ctx => %(ctx)s::jsonb)", {"id": policy_id})
    _emit(result, as_json, lambda p: _show_object(f"policy {p['policy_id']}", p))


@policy.command(name="update")
@click.argument("policy_id")
@click.option("--name")
@click.option("--priority", type=click.IntRange(0))
@caps_options
@click.option("--status", type=click.Choice(["ACTIVE", "DISABLED"]))
@click.option("--description")
@json_option
def policy_update(policy_id: str, name: str | None, priority: int | None, max_tokens: int | None,
                  max_steps_remaining: int | None, cooldown_ms: int | None, allow_tools: tuple[str, ...],
                  deny_tools: tuple[str, ...], overage_policy: str | None, default_ttl_ms: int | None,
                  max_ttl_ms: int | None, max_extensions: int | None, status: str | None,
                  description: str | None, as_json: bool) -> None:
    """Change a policy: only the fields given change (caps and TTL override are replaced whole)."""
    patch: dict[str, Any] = {name_: value for name_, value in (
        ("name", name), ("priority", priority), ("commit_overage_policy", overage_policy), ("status", status),
        ("description", description)) if value is not None}
    caps = _caps(max_tokens, max_steps_remaining, cooldown_ms, allow_tools, deny_tools)
    if caps:
        patch["caps"] = caps
    override = _ttl_override(default_ttl_ms, max_ttl_ms, max_extensions)
    if override:
        patch["reservation_ttl_override"] = override
    if not patch:
        raise click.UsageError("nothing to change: give at least one option")
    result = _call("SELECT cycles.update_policy(p_policy_id => %(id)s, p_patch => %(patch)s::jsonb,"
                   " p_ctx => %(ctx)s::jsonb)", {"id": policy_id, "patch": json.dumps(patch)})
    _emit(result, as_json, lambda p: _show_object(f"policy {p['policy_id']}", p))


@policy.command(name="disable")
@click.argument("policy_id")
@json_option
def policy_disable(policy_id: str, as_json: bool) -> None:
    """Disable a policy: it stops applying to new reservations."""
    result = _call("SELECT cycles.disable_policy(p_policy_id => %(id)s, p_ctx => %(ctx)s::jsonb)", {"id": policy_id})
    _emit(result, as_json, lambda p: _show_object(f"policy {p['policy_id']}", p))


@click.group()
def event() -> None:
    """Read the event stream (the outbox every change writes to)."""


@event.command(name="list")
@click.option("--tenant", "tenant_id")
@click.option("--type", "event_type", help="Event type, e.g. budget.threshold_crossed.")
@click.option("--category", type=click.Choice(
    ["budget", "tenant", "api_key", "policy", "reservation", "system", "webhook"]))
@click.option("--scope")
@click.option("--correlation-id")
@click.option("--trace-id")
@click.option("--request-id")
@click.option("--since", "from_", help="ISO-8601 lower bound.")
@click.option("--until", "to", help="ISO-8601 upper bound.")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
def event_list(tenant_id: str | None, event_type: str | None, category: str | None, scope: str | None,
               correlation_id: str | None, trace_id: str | None, request_id: str | None, from_: str | None,
               to: str | None, limit: int, cursor: str | None, as_json: bool) -> None:
    """List events, newest first."""
    result = _call(
        "SELECT cycles.list_events(p_tenant_id => %(tenant)s, p_event_type => %(type)s, p_category => %(category)s,"
        " p_scope => %(scope)s, p_correlation_id => %(correlation)s, p_trace_id => %(trace)s,"
        " p_request_id => %(request)s, p_from => %(from)s::timestamptz, p_to => %(to)s::timestamptz,"
        " p_cursor => %(cursor)s, p_limit => %(limit)s, p_ctx => %(ctx)s::jsonb)",
        {"tenant": tenant_id, "type": event_type, "category": category, "scope": scope,
         "correlation": correlation_id, "trace": trace_id, "request": request_id, "from": from_, "to": to,
         "cursor": cursor, "limit": limit})
    _emit(result, as_json, lambda page: _show_rows("events", page["events"], EVENT_COLUMNS, page))


@event.command(name="show")
@click.argument("event_id")
@json_option
def event_show(event_id: str, as_json: bool) -> None:
    """Show one event with its data."""
    result = _call("SELECT cycles.get_event(p_event_id => %(id)s, p_ctx => %(ctx)s::jsonb)", {"id": event_id})
    _emit(result, as_json, lambda e: _show_object(f"event {e['event_id']}", e))


def register(cli: click.Group) -> None:
    """Adds the policy and event groups to the ``cycles`` command."""
    for group in (policy, event):
        cli.add_command(group)

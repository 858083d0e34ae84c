"""The server's Prometheus metrics: what is counted, and GET /metrics' text.

One ``Metrics`` per process (``current()``). With PROMETHEUS_MULTIPROC_DIR
set (``cycles serve`` sets it) every worker writes its values to files there
and a scrape of any worker sums them all; without it the values live in this
process only. Labels are bounded: route templates (never raw paths), a fixed
method set, status codes, error and decision codes; a tenant label only when
CYCLES_METRICS_TENANT_LABEL is on. No reservation id or key is ever a label.

Recording is on the request path, so it is kept to dictionary lookups and a
few increments: label children are cached, bodies are scanned with
``bytes.find`` and only on the routes that decide.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from app.observability.metrics_dir import ENV as MULTIPROC_ENV

# Litestar appends "; charset=utf-8" to text/* media types itself.
CONTENT_TYPE: Final = "text/plain; version=0.0.4"

# Seconds. A request is one short database call: most take about a
# millisecond, so the low buckets are fine-grained.
LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE: Final = "unmatched"

# The routes that decide on budgets, by (method, route template).
DECIDING_ROUTES: Final = {
    ("POST", "/v1/reservations"): "reserve",
    ("POST", "/v1/decide"): "decide",
    ("POST", "/v1/events"): "event",
}
# Error codes that are a budget authority's "no" (rather than a bad request).
DENIAL_CODES: Final = frozenset({
    "BUDGET_EXCEEDED", "BUDGET_FROZEN", "BUDGET_CLOSED", "BUDGET_NOT_FOUND", "OVERDRAFT_LIMIT_EXCEEDED",
    "DEBT_OUTSTANDING", "TENANT_CLOSED", "TENANT_SUSPENDED"})

_CODE: Final = re.compile(r"[A-Z][A-Z_]{0,63}")
_SQL_CALL: Final = re.compile(r"cycles\.([a-z_]+)\s*\(")
_TYPED_PARAM: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):[^}]+\}")

# Response bodies: functions' jsonb::text writes '"key": "value"'; the error
# handlers' msgspec writes '"key":"value"'.
_DECISION_KEYS: Final = (b'"decision": "', b'"decision":"')
_REASON_KEYS: Final = (b'"reason_code": "', b'"reason_code":"')
_ERROR_KEYS: Final = (b'"error":"', b'"error": "')


_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def _process_id() -> int:
    return _pid


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()))


def string_value(body: bytes, keys: tuple[bytes, ...]) -> str | None:
    """The string value of the first of ``keys`` found in a JSON body, if it
    looks like a code (upper-case letters and _), else None."""
    for key in keys:
        start = body.find(key)
        if start >= 0:
            start += len(key)
            end = body.find(b'"', start, start + 66)
            if end < 0:
                return None
            value = body[start:end].decode("ascii", "replace")
            return value if _CODE.fullmatch(value) else None
    return None


def call_name(sql: str) -> str:
    """The cycles.* function a statement calls ("reserve"), or "other"."""
    match = _SQL_CALL.search(sql)
    return match[1] if match else "other"


def error_code(body: bytes) -> str:
    return string_value(body[:80], _ERROR_KEYS) or "OTHER"


_routes: dict[str, str] = {}


def route_label(template: str | None) -> str:
    """A route template as a label: {reservation_id:str} -> {reservation_id};
    ``unmatched`` when the router found no route."""
    if template is None:
        return UNMATCHED_ROUTE
    route = _routes.get(template)
    if route is None:
        route = _routes[template] = _TYPED_PARAM.sub(r"{\1}", template)
    return route


class _Families(Collector):
    """Already collected metric families, for one scrape's registry."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class Metrics:
    """Every metric of this process, with cached label children."""

    def __init__(self, tenant_label: bool = False) -> None:
        self.multiprocess = multiprocess_mode()
        if self.multiprocess:
            # Files, with this process's id read from a cache: the library's
            # default asks the kernel (getpid) on every increment.
            values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)  # type: ignore[no-untyped-call]
        self.tenant_label = tenant_label
        # Multi-process values go to files whatever the registry; a local
        # registry is only needed to collect this process alone.
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        registry = self.registry
        tenant = ("tenant",) if tenant_label else ()
        self.requests = Counter(
            "cycles_http_requests", "HTTP requests answered, by route template and status.",
            ("method", "route", "status", *tenant), registry=registry)
        self.duration = Histogram(
            "cycles_http_request_duration_seconds", "Time from request to the last byte of the response.",
            ("method", "route", "status"), buckets=LATENCY_BUCKETS, registry=registry)
        self.errors = Counter(
            "cycles_http_errors", "Error responses, by route template and error code.",
            ("route", "error"), registry=registry)
        self.decisions = Counter(
            "cycles_decisions", "Budget decisions of reserve, decide and events (ALLOW, ALLOW_WITH_CAPS, DENY).",
            ("operation", "decision", *tenant), registry=registry)
        self.denials = Counter(
            "cycles_denials", "Denied reserve, decide and events requests, by reason code.",
            ("operation", "reason", *tenant), registry=registry)
        self.db_calls = Histogram(
            "cycles_db_call_duration_seconds",
            "Time of one cycles.* call, from asking the pool for a connection to having the result.",
            ("call",), buckets=LATENCY_BUCKETS, registry=registry)
        self.pool_connections = Gauge(
            "cycles_db_pool_connections", "Connections of the pools (state: open, idle, max), all workers.",
            ("state",), multiprocess_mode="livesum", registry=registry)
        self.pool_waiting = Gauge(
            "cycles_db_pool_waiting_requests", "Requests waiting for a pooled connection now.",
            multiprocess_mode="livesum", registry=registry)
        self.pool_requests = Counter(
            "cycles_db_pool_requests", "Connections handed out by the pools.", registry=registry)
        self.pool_wait = Counter(
            "cycles_db_pool_wait_seconds", "Total time requests waited for a pooled connection.",
            registry=registry)
        self.pool_timeouts = Counter(
            "cycles_db_pool_timeouts", "Requests that got no pooled connection in time (503).", registry=registry)
        self.pool_lost = Counter(
            "cycles_db_pool_connections_lost", "Pooled connections found broken.", registry=registry)
        self.webhook_deliveries = Counter(
            "cycles_webhook_deliveries", "Webhook delivery attempts by outcome (success, retry: failed and rescheduled, failure: failed for good).",
            ("outcome",), registry=registry)
        self.expired = Counter(
            "cycles_reservations_expired", "Reservations expired by the sweeper.", registry=registry)
        self.processes = Gauge(
            "cycles_server_processes", "Server worker processes reporting.", multiprocess_mode="livesum",
            registry=registry)
        self.processes.set(1)
        self._request_children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._decision_children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self._db_children: dict[str, Any] = {}
        self._pool_seen: dict[str, int] = {}

    # Requests -------------------------------------------------------------

    def record_request(self, method: str, route: str, status: int, seconds: float, tenant: str | None,
                       body: bytes) -> None:
        if method not in METHODS:
            method = "OTHER"
        key = (method, route, str(status), tenant or "") if self.tenant_label else (method, route, str(status))
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.requests.labels(*key), self.duration.labels(*key[:3]))
        children[0].inc()
        children[1].observe(seconds)
        operation = DECIDING_ROUTES.get((method, route))
        if status >= 400:
            code = error_code(body)
            self.errors.labels(route, code).inc()
            if operation is not None and code in DENIAL_CODES:
                self._decision(operation, "DENY", code, tenant)
        elif operation is not None:
            decision = string_value(body, _DECISION_KEYS) or ("ALLOW" if operation == "event" else None)
            if decision is not None:
                reason = string_value(body, _REASON_KEYS) if decision == "DENY" else None
                self._decision(operation, decision, reason, tenant)

    def _decision(self, operation: str, decision: str, reason: str | None, tenant: str | None) -> None:
        key = (operation, decision, reason or "OTHER", tenant or "")
        children = self._decision_children.get(key)
        if children is None:
            extra = key[3:] if self.tenant_label else ()
            children = self._decision_children[key] = (
                self.decisions.labels(operation, decision, *extra),
                self.denials.labels(operation, key[2], *extra) if decision == "DENY" else None)
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    # Database -------------------------------------------------------------

    def db_call(self, sql: str) -> Any:
        """The histogram child of a statement: the cycles.* function it calls."""
        child = self._db_children.get(sql)
        if child is None:
            child = self.db_calls.labels(call_name(sql))
            if len(self._db_children) < 1000:  # constant SQL texts: a bound only against misuse
                self._db_children[sql] = child
        return child

    def sample_pool(self, stats: dict[str, int]) -> None:
        """Copy a psycopg_pool get_stats() into the pool metrics (counters by delta)."""
        size, available = stats.get("pool_size", 0), stats.get("pool_available", 0)
        self.pool_connections.labels("open").set(size)
        self.pool_connections.labels("idle").set(available)
        self.pool_connections.labels("max").set(stats.get("pool_max", 0))
        self.pool_waiting.set(stats.get("requests_waiting", 0))
        for name, counter, scale in (
                ("requests_num", self.pool_requests, 1), ("requests_wait_ms", self.pool_wait, 1000),
                ("requests_errors", self.pool_timeouts, 1), ("connections_lost", self.pool_lost, 1)):
            value = stats.get(name, 0)
            delta = value - self._pool_seen.get(name, 0)
            if delta > 0:
                counter.inc(delta / scale)
            self._pool_seen[name] = value

    # Scrape ---------------------------------------------------------------

    def render(self, extra: Iterable[Metric] = ()) -> bytes:
        """The exposition text: every process's values plus ``extra``."""
        registry = CollectorRegistry(auto_describe=False)
        if self.multiprocess:
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        elif self.registry is not None:
            registry.register(_Families(self.registry.collect()))
        registry.register(_Families(extra))
        return generate_latest(registry)

    def close(self) -> None:
        """This process stops: its live gauges no longer count."""
        if self.multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


_current: Metrics | None = None


def start(tenant_label: bool) -> Metrics:
    """This process's metrics (created on first use)."""
    global _current
    if _current is None or _current.tenant_label != tenant_label:
        _current = Metrics(tenant_label)
    return _current


def current() -> Metrics | None:
    return _current


_DELIVERY_OUTCOMES: Final = {"SUCCESS": "success", "RETRYING": "retry", "FAILED": "failure"}


def record_webhook_delivery(status: str | None) -> None:
    """One attempt, by the status it left the delivery in: SUCCESS, RETRYING
    (failed, will retry) or FAILED (failed for good)."""
    if _current is not None:
        _current.webhook_deliveries.labels(_DELIVERY_OUTCOMES.get(status or "", "other")).inc()


def record_expired(count: int) -> None:
    if _current is not None and count > 0:
        _current.expired.inc(count)

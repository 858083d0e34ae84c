"""Schemathesis against the server's routes (tests.reliability.openapi_document):
generated requests to every endpoint, valid and invalid, with generated
trace headers, authenticated as a funded tenant (runtime and tenant
endpoints) or as the admin (admin endpoints). Every answer must be a
non-5xx, JSON, with the correlation headers, the spec's error shape on every
refusal, and no JSON null anywhere.

Examples per endpoint: CYCLES_FUZZ_EXAMPLES (default 20; thousands in all
with a few hundred). The server gets a database of its own, since generated
admin calls (bulk actions, tenant updates) reach any tenant.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from app.pgcluster import Cluster
from tests.api.provision import Tenant, create_budget, find_nulls, new_tenant
from tests.reliability.openapi_document import document
from tests.reliability.processes import report
from tests.server import ApiServer, fresh_database, running_server

EXAMPLES = int(os.environ.get("CYCLES_FUZZ_EXAMPLES", "20"))
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def fuzz_server(pg_cluster: Cluster) -> Iterator[tuple[ApiServer, Tenant]]:
    with running_server(fresh_database(pg_cluster, "cycles_fuzz"), CYCLES_WEBHOOKS_DISABLED="true") as server:
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            tenant = new_tenant(conn)
            create_budget(conn, tenant.scope, 10**12)
            create_budget(conn, f"{tenant.scope}/workspace:w1", 10**9)
        yield server, tenant
    report("fuzz_openapi", {"paths": len(schema.raw_schema["paths"]),
                            "operations": sum(len(ops) for ops in schema.raw_schema["paths"].values()), "requests": sum(STATUSES.values()),
                            "statuses": dict(sorted(STATUSES.items())),
                            "server_errors": sum(n for status, n in STATUSES.items() if status >= 500)})


schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_generated_requests_never_fail_the_server(case: Any, fuzz_server: tuple[ApiServer, Tenant]) -> None:
    server, tenant = fuzz_server
    auth = ({"X-Admin-API-Key": server.admin_key} if case.path.startswith("/v1/admin")
            else {"X-Cycles-API-Key": tenant.api_key})
    response = case.call(base_url=server.base_url, headers=auth, timeout=30)
    STATUSES[response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error, content_type_conformance,
                                             response_schema_conformance])
    replay = case.as_curl_command(headers=auth)
    assert response.headers.get("x-request-id"), f"no X-Request-Id: {response.status_code} {replay}"
    if response.status_code == 204:
        return  # OPTIONS probes: no body by definition
    assert response.text, f"empty body: {response.status_code} {dict(response.headers)} {replay}"
    if case.path == "/metrics" and response.status_code == 200:
        return  # the Prometheus text format (its content type is checked above)
    assert find_nulls(response.json()) == [], f"null in {response.text}: {replay}"

"""The API's route templates: every path it serves, and so every ``path`` label its requests can have.

Free of the API's other modules, so that the aggregator takes its default route table
(``BOILERHOUSE_HTTP_ROUTES=api``) from here without loading the API. ``routes.py`` mounts its
endpoints on exactly these templates and ``app.py`` its health check; tests/aggregator/test_route_labels.py
checks that the app serves all of them and nothing else.
"""

from __future__ import annotations

PREFIX = "/api/v1"
HEALTH = "/healthz"
POOLS = f"{PREFIX}/pools"
POOL = f"{PREFIX}/pools/{{pool_id}}"
CLAIM = f"{PREFIX}/tenants/{{tenant_id}}/claim"
RELEASE = f"{PREFIX}/tenants/{{tenant_id}}/release"
SYNC = f"{PREFIX}/tenants/{{tenant_id}}/sync"
TENANT = f"{PREFIX}/tenants/{{tenant_id}}"
CONTAINERS = f"{PREFIX}/containers"
WORKLOADS = f"{PREFIX}/workloads"

#: The route table: the templates above.
TEMPLATES: frozenset[str] = frozenset(
    {HEALTH, POOLS, POOL, CLAIM, RELEASE, SYNC, TENANT, CONTAINERS, WORKLOADS}
)

"""docs/API.md and the generated OpenAPI documents cannot drift apart.

Every operation of each service's /openapi.json has a `### METHOD /path` heading in that service's section of
docs/API.md, every such heading is an operation of that service, and the scope the heading's text names is
the scope the endpoint checks (require_scope writes it into the operation's description).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
ENDPOINT_HEADING = re.compile(r"^### (GET|POST|PUT|PATCH|DELETE) (/\S+)$")
DOCUMENTED_SCOPE = re.compile(r"^Scope `([a-z:]+)`")
OPENAPI_SCOPE = re.compile(r"Requires scope `([a-z:]+)`")
PROBE_ROW = re.compile(r"^\| `GET (/[a-z.]+)` \|")


def documented_endpoints(service: str) -> dict[tuple[str, str], str | None]:
    """(METHOD, path) -> the scope named by the first line under its heading, for one `## service` section."""
    endpoints: dict[tuple[str, str], str | None] = {}
    section = None
    current = None
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            current = None
            continue
        if section != service:
            continue
        heading = ENDPOINT_HEADING.match(line)
        if heading:
            current = (heading.group(1), heading.group(2))
            assert current not in endpoints, f"{current} is documented twice"
            endpoints[current] = None
            continue
        scope = DOCUMENTED_SCOPE.match(line)
        if scope and current is not None and endpoints[current] is None:
            endpoints[current] = scope.group(1)
    return endpoints


def openapi_operations(app) -> dict[tuple[str, str], str | None]:
    """(METHOD, path) -> the scope the operation requires, from the app's generated /openapi.json."""
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    operations = {}
    for path, methods in response.get_json()["paths"].items():
        for method, operation in methods.items():
            if method in HTTP_METHODS:
                scope = OPENAPI_SCOPE.search(operation.get("description", ""))
                operations[(method.upper(), path)] = scope.group(1) if scope else None
    return operations


@pytest.fixture
def apps(tmp_path) -> dict:
    """Both services built by their app factories (the OpenAPI document needs no database or Redis call)."""
    from services.recommend.app import create_app as create_recommend_app
    from services.segmentation.app import create_app as create_segmentation_app

    config = {"TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'docs.db'}", "VAR_DIR": str(tmp_path),
              "REDIS_URL": "redis://127.0.0.1:6379/0"}
    return {"segmentation": create_segmentation_app(dict(config)), "recommend": create_recommend_app(dict(config))}


@pytest.mark.parametrize("service", ["segmentation", "recommend"])
def test_every_operation_is_documented_and_every_documented_path_exists(apps, service):
    served = openapi_operations(apps[service])
    documented = documented_endpoints(service)
    assert len(served) >= 7
    assert sorted(set(served) - set(documented)) == [], "served but missing from docs/API.md"
    assert sorted(set(documented) - set(served)) == [], "in docs/API.md but not served"


@pytest.mark.parametrize("service", ["segmentation", "recommend"])
def test_documented_scopes_are_the_checked_scopes(apps, service):
    served = openapi_operations(apps[service])
    documented = documented_endpoints(service)
    for endpoint, scope in served.items():
        assert scope is not None, f"{endpoint} checks no scope"
        assert documented[endpoint] == scope, f"{endpoint}: docs/API.md says {documented[endpoint]}, served {scope}"


def test_documented_probes_exist_on_both_services(apps):
    probes = []
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        row = PROBE_ROW.match(line)
        if row:
            probes.append(row.group(1))
    assert probes == ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]
    for app in apps.values():
        rules = {rule.rule for rule in app.url_map.iter_rules()}
        assert set(probes) <= rules, sorted(set(probes) - rules)

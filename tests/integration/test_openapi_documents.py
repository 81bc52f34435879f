"""The committed OpenAPI documents (docs/openapi/) are what the apps serve; every operation has an
operationId; /docs works offline (Swagger UI's files come from the app, not a CDN)."""

from __future__ import annotations

import json
import re

import pytest

from tests.openapi_documents import SERVICES, committed_path, live_document, render

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@pytest.mark.parametrize("service", SERVICES)
def test_committed_document_matches_the_live_one(service):
    committed = committed_path(service).read_text(encoding="utf-8")
    assert committed == render(live_document(service)), (
        f"docs/openapi/{service}.json is out of date: run `make openapi` and commit it"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_has_a_unique_operation_id(service):
    document = json.loads(committed_path(service).read_text(encoding="utf-8"))
    operation_ids = [operation.get("operationId") for methods in document["paths"].values()
                     for method, operation in methods.items() if method in HTTP_METHODS]
    assert operation_ids and None not in operation_ids
    assert len(set(operation_ids)) == len(operation_ids)
    assert all(re.fullmatch(r"(get|post|put|patch|delete)_[a-z0-9_]+", name) for name in operation_ids)


def test_recommend_operation_ids_are_the_documented_names():
    document = json.loads(committed_path("recommend").read_text(encoding="utf-8"))
    assert document["paths"]["/v1/items/{sku}/bought-together"]["get"]["operationId"] == "get_bought_together"
    assert document["paths"]["/v1/cart/recommendations"]["post"]["operationId"] == "post_cart_recommendations"


@pytest.mark.parametrize("service", SERVICES)
def test_docs_page_loads_swagger_ui_from_the_app_itself(service):
    from tests.openapi_documents import BINDING

    if service == "segmentation":
        from services.segmentation.app import create_app
    else:
        from services.recommend.app import create_app
    client = create_app(dict(BINDING)).test_client()
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert not re.search(r"cdn|jsdelivr|unpkg|https?://", html, re.IGNORECASE)
    scripts = re.findall(r'(?:src|href)="(/docs/files/[^"]+)"', html)
    assert sorted(scripts) == ["/docs/files/swagger-ui-bundle.js", "/docs/files/swagger-ui-standalone-preset.js",
                               "/docs/files/swagger-ui.css"]
    for url in scripts:
        response = client.get(url)
        assert response.status_code == 200 and len(response.data) > 10_000, url
        response.close()
    assert client.get("/docs/files/../../etc/passwd").status_code == 404

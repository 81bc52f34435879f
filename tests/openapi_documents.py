"""The OpenAPI documents committed under docs/openapi/, generated from the apps.

`make openapi` (python -m tests.openapi_documents --write) rewrites them; tests/integration/
test_openapi_documents.py fails when a committed document differs from what the app serves.
Generated with the default settings (an app factory does no work or network at creation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "openapi"
SERVICES = ("segmentation", "recommend")
# Settings that only bind the apps; the documents do not depend on them.
BINDING = {"DATABASE_URL": "sqlite://", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def live_document(service: str) -> dict:
    """The /openapi.json a freshly built app of `service` serves."""
    if service == "segmentation":
        from services.segmentation.app import create_app
    else:
        from services.recommend.app import create_app
    response = create_app(dict(BINDING)).test_client().get("/openapi.json")
    assert response.status_code == 200, response.status_code
    return response.get_json()


def render(document: dict) -> str:
    """The committed text of a document: sorted keys, two-space indent, final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def committed_path(service: str) -> Path:
    return DOCS / f"{service}.json"


def write_documents() -> None:
    """Rewrite docs/openapi/<service>.json from the apps."""
    DOCS.mkdir(parents=True, exist_ok=True)
    for service in SERVICES:
        committed_path(service).write_text(render(live_document(service)), encoding="utf-8")
        print(f"wrote {committed_path(service)}")


if __name__ == "__main__":
    if "--write" not in sys.argv[1:]:
        sys.exit("usage: python -m tests.openapi_documents --write")
    write_documents()

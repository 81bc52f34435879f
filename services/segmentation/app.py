"""The segmentation service: ingest, customer profiles, segment lists, campaigns and training runs."""

from __future__ import annotations

from flask import Flask

from services.pipeline.celery_app import celery_init_app
from services.segmentation.console import register_console
from shared.metrics import register_run_metrics
from shared.ratelimit import register_rate_limits
from shared.web import (
    SegrecFlask,
    create_api,
    register_auth,
    register_config,
    register_errors,
    register_extensions,
    register_probes,
    register_request_id,
    register_request_metrics,
)

SERVICE = "segmentation"


def register_blueprints(api) -> None:
    """Every endpoint group of the service."""
    from services.segmentation.views import campaigns, ingest, runs, segments

    api.register_blueprint(ingest.blp)
    api.register_blueprint(segments.blp)
    api.register_blueprint(runs.blp)
    api.register_blueprint(campaigns.blp)


def published_run_exists() -> bool:
    """Readiness: a scoring run has been published."""
    from shared.runs import current_run_id

    return current_run_id() is not None


def create_app(config: dict | None = None) -> Flask:
    """Build the segmentation app; `config` overrides environment and defaults (tests pass a dict)."""
    app = SegrecFlask(__name__)
    register_config(app, config)
    register_request_id(app)
    register_extensions(app)
    celery_init_app(app)
    register_auth(app)
    register_rate_limits(app)
    api = create_api(app, "segmentation")
    register_blueprints(api)
    register_probes(app, SERVICE, published_run_exists)
    register_console(app)
    register_run_metrics(app)
    register_request_metrics(app, SERVICE)
    register_errors(app)
    return app

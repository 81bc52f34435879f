"""The recommend service: catalogue ingest and recommendations served from precomputed lists."""

from __future__ import annotations

from flask import Flask

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

SERVICE = "recommend"


def register_blueprints(api) -> None:
    """Every endpoint group of the service."""
    from services.recommend.views import experiments, feedback, ingest, recommendations

    api.register_blueprint(ingest.blp)
    api.register_blueprint(recommendations.blp)
    api.register_blueprint(feedback.blp)
    api.register_blueprint(experiments.blp)


def published_model_exists() -> bool:
    """Readiness: a recommendation model has been published."""
    from services.recommend.store import current_model_version

    return current_model_version() is not None


def create_app(config: dict | None = None) -> Flask:
    """Build the recommend app; `config` overrides environment and defaults (tests pass a dict)."""
    app = SegrecFlask(__name__)
    register_config(app, config)
    register_request_id(app)
    register_extensions(app)
    register_auth(app)
    register_rate_limits(app)
    api = create_api(app, "recommend")
    register_blueprints(api)
    register_probes(app, SERVICE, published_model_exists)
    register_request_metrics(app, SERVICE)
    register_errors(app)
    return app

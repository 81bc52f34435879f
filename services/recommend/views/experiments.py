"""A/B tests between recommenders: create one (admin) and read its report."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from services.recommend.experiments import create_experiment, experiment_report
from services.recommend.schemas import ExperimentCreateSchema, ExperimentReportSchema, ExperimentSchema
from shared.web import json_response, require_scope

blp = Blueprint("experiments", __name__, url_prefix="/v1", description="A/B tests between recommenders")


@blp.route("/experiments")
class Experiments(MethodView):
    @require_scope("admin")
    @blp.arguments(ExperimentCreateSchema())
    @blp.response(201, ExperimentSchema)
    def post(self, data):
        """Start an experiment on a surface (one at a time per surface: 409 otherwise)"""
        return create_experiment(data, current_app.config), 201


@blp.route("/experiments/<experiment_id>/report")
class ExperimentReport(MethodView):
    @require_scope("analytics:read")
    @blp.response(200, ExperimentReportSchema)
    def get(self, experiment_id):
        """Per variant CTR and revenue per impression, uplift over the control with its 95 % interval, a verdict"""
        report = experiment_report(experiment_id, current_app.config)
        report["experiment"] = ExperimentSchema().dump(report["experiment"])
        return json_response(report)

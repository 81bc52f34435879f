"""Training runs: history, one run, and starting one now."""

from __future__ import annotations

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from services.pipeline import retrain
from services.pipeline.tasks import launch_workflow
from services.segmentation.schemas import RunListArgsSchema, RunListSchema, RunSchema
from shared import runs
from shared.web import require_scope

blp = Blueprint("runs", __name__, url_prefix="/v1", description="Training runs")


def run_to_dict(run, current_id: str | None) -> dict:
    """A run as the API shows it."""
    data = {name: getattr(run, name) for name in RunSchema().fields if hasattr(run, name)}
    data["current"] = run.run_id == current_id
    return data


@blp.route("/runs")
class Runs(MethodView):
    @require_scope("segments:read")
    @blp.arguments(RunListArgsSchema(), location="query")
    @blp.response(200, RunListSchema)
    def get(self, args):
        """Training runs, newest first"""
        current_id = runs.current_run_id()
        return {"items": [run_to_dict(run, current_id) for run in runs.list_runs(args["limit"])]}

    @require_scope("admin")
    @blp.response(202, RunSchema)
    @blp.alt_response(200, schema=RunSchema, description="A run was already under way: that run")
    def post(self):
        """Start a training run now (or answer with the run already under way)"""
        try:
            run = retrain.begin_run(current_app.config, trigger="api")
        except retrain.RetrainInProgress as busy:
            return run_to_dict(runs.get_run(busy.run_id), runs.current_run_id()), 200
        launch_workflow(run.run_id)
        return run_to_dict(runs.get_run(run.run_id), runs.current_run_id())


@blp.route("/runs/<run_id>")
class RunDetail(MethodView):
    @require_scope("segments:read")
    @blp.response(200, RunSchema)
    def get(self, run_id):
        """One training run"""
        return run_to_dict(runs.get_run(run_id), runs.current_run_id())

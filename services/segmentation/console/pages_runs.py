"""The runs page: history with per-step seconds, model quality against popularity, and admin actions."""

from __future__ import annotations

from flask import current_app, redirect, render_template, request, url_for
from flask_babel import gettext

from services.segmentation.console import charts
from services.segmentation.console.access import console_page
from services.segmentation.console.blueprint import bp
from services.pipeline import retrain
from services.pipeline.tasks import launch_workflow
from services.recommend.training import publish_version
from shared import runs

RUN_HISTORY = 20
QUALITY_LINES = (
    ("hr_at_10", "HR@10"),
    ("ndcg_at_10", "NDCG@10"),
    ("popularity_hr_at_10", "HR@10 popularity*"),
    ("popularity_ndcg_at_10", "NDCG@10 popularity*"),
)


def evaluation_of(run) -> dict:
    """The cart evaluation a run recorded (empty when it has none)."""
    return ((run.metrics or {}).get("recommendations") or {}).get("evaluation") or {}


def model_selection_of(run):
    """The model-selection record of a run, wherever the pipeline stored it (None when there is none)."""
    metrics = run.metrics or {}
    return metrics.get("model_selection") or (metrics.get("recommendations") or {}).get("model_selection")


def selection_table(selection) -> tuple[list[str], list[list]]:
    """A model-selection record as table columns and rows (a list of candidates, or name -> values)."""
    if isinstance(selection, dict):
        candidates = selection.get("candidates")
        if isinstance(candidates, list):
            selection = candidates
        else:
            return ["name", "value"], [[name, value] for name, value in selection.items()]
    rows = [item for item in selection if isinstance(item, dict)]
    columns: list[str] = []
    for row in rows:
        columns += [name for name in row if name not in columns]
    return columns, [[row.get(name) for name in columns] for row in rows]


def run_charts(history: list) -> dict:
    """Stacked step seconds and quality lines, oldest run first."""
    ordered = list(reversed(history))
    labels = [f"{run.run_id[1:9]}-{run.run_id[-4:]}" for run in ordered]
    step_names: list[str] = []
    for run in ordered:
        step_names += [step["name"] for step in run.steps or [] if step["name"] not in step_names]
    steps = {
        name: [next((round(step["seconds"] or 0, 3) for step in run.steps or [] if step["name"] == name), 0)
               for run in ordered]
        for name in step_names
    }
    lines = {label: [evaluation_of(run).get(key) for run in ordered] for key, label in QUALITY_LINES}
    return {"steps": charts.stacked_steps(labels, steps, gettext("seconds")),
            "quality": charts.metric_lines(labels, lines)}


@bp.get("/runs", endpoint="runs")
@console_page("segments:read")
def runs_page():
    """Run history, per-step seconds, HR@10 and NDCG against popularity, model selection, admin actions."""
    history = runs.list_runs(RUN_HISTORY)
    current_id = runs.current_run_id()
    selected_id = request.args.get("run_id") or current_id
    selected = next((run for run in history if run.run_id == selected_id), None)
    selection = model_selection_of(selected) if selected else None
    return render_template(
        "console/runs.html", history=history, current_id=current_id, selected=selected,
        previous_id=runs.get_pointer(runs.PREVIOUS_RUN), charts=run_charts(history),
        selection=selection_table(selection) if selection else None, evaluation_of=evaluation_of,
    )


def start_run_now(config: dict) -> str:
    """Start a run as POST /v1/runs does; returns the run id (the one already under way, if any)."""
    try:
        run = retrain.begin_run(config, trigger="console")
    except retrain.RetrainInProgress as busy:
        return busy.run_id
    launch_workflow(run.run_id)
    return run.run_id


@bp.post("/runs/start")
@console_page("admin")
def start_run():
    """Admin: start a training run now (the page asks for confirmation first)."""
    run_id = start_run_now(current_app.config)
    return redirect(url_for("console.runs", run_id=run_id), code=303)


@bp.post("/runs/rollback")
@console_page("admin")
def rollback_run():
    """Admin: make the previous published run current again, for segments and recommendations."""
    _from_run, to_run = runs.rollback()
    publish_version(to_run)
    return redirect(url_for("console.runs", run_id=to_run), code=303)

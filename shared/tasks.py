"""Celery tasks of the retrain workflow: thin wrappers that pass run ids and call shared/retrain.py.

prepare (snapshot + fit) -> chord(score_shard per customer-id range) -> finish_scoring
-> train_recommendations -> publish. Every task is idempotent (it rewrites what it owns under the run
id), acks late, has a time limit and retries with backoff when the database or Redis drops out.
"""

from __future__ import annotations

import time

import redis
from celery import chain, chord
from sqlalchemy.exc import OperationalError

from shared import retrain, runs
from shared.celery_app import celery_app

TRANSIENT_ERRORS = (OperationalError, redis.ConnectionError, redis.TimeoutError)
RETRY_OPTIONS = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 6,
    "acks_late": True,
}


def _config() -> dict:
    return celery_app.segrec_config


@celery_app.task(name="segrec.retrain.start", **RETRY_OPTIONS)
def start_retrain(trigger: str = "schedule") -> str:
    """Beat's entry point: begin a run (or find the one under way) and launch its workflow."""
    try:
        run = retrain.begin_run(_config(), trigger=trigger)
    except retrain.RetrainInProgress as busy:
        return busy.run_id
    launch_workflow(run.run_id)
    return run.run_id


def launch_workflow(run_id: str) -> None:
    """Queue the steps of a begun run."""
    prepare.apply_async((run_id,), link_error=mark_failed.si(run_id))


@celery_app.task(name="segrec.retrain.prepare", bind=True, **RETRY_OPTIONS)
def prepare(self, run_id: str):
    """Snapshot and fit on everyone, then fan out one scoring task per customer-id shard."""
    shards = retrain.step_snapshot(run_id, _config())
    retrain.step_fit(run_id, _config())
    runs.update_run(run_id, metrics={**runs.get_run(run_id).metrics, "scoring_started": time.time()})
    rest = chain(
        finish_scoring.si(run_id, len(shards)),
        train_recommendations.si(run_id),
        publish.si(run_id),
    )
    if not shards:
        return self.replace(rest)
    return self.replace(chord([score_shard.si(run_id, low, high) for low, high in shards], rest))


@celery_app.task(name="segrec.retrain.score_shard", **RETRY_OPTIONS)
def score_shard(run_id: str, low: str | None, high: str | None) -> int:
    """Score one customer-id range (rewrites the range's rows, so a retry never duplicates)."""
    return retrain.step_score_shard(run_id, low, high)


@celery_app.task(name="segrec.retrain.finish_scoring", **RETRY_OPTIONS)
def finish_scoring(run_id: str, shard_count: int) -> None:
    """Record the fan-out's wall time and row count as one step."""
    started = runs.get_run(run_id).metrics.get("scoring_started", time.time())
    rows = retrain.segment_metrics(run_id)["customers_scored"]
    runs.record_step(run_id, "score_customers", "succeeded", time.time() - started, rows, {"shards": shard_count})


@celery_app.task(name="segrec.retrain.train_recommendations", **RETRY_OPTIONS)
def train_recommendations(run_id: str) -> None:
    """Train and stage the recommendation lists under the run's version."""
    retrain.step_train_recommendations(run_id, _config())


@celery_app.task(name="segrec.retrain.publish", **RETRY_OPTIONS)
def publish(run_id: str) -> str:
    """Evaluate against the current run and publish, or reject with the reason."""
    return retrain.step_evaluate_and_publish(run_id, _config()).status


@celery_app.task(name="segrec.retrain.mark_failed")
def mark_failed(run_id: str, *args) -> None:
    """Error callback: the run failed; release the lock so the next run can start."""
    run = runs.get_run(run_id)
    if run.status in runs.ACTIVE_STATUSES:
        failed_steps = [step for step in run.steps if step["status"] == "failed"]
        detail = failed_steps[-1].get("detail", {}).get("error") if failed_steps else "a task of the workflow failed"
        retrain.fail_run(run_id, _config(), RuntimeError(detail))

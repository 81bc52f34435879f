"""Celery tasks of the retrain workflow: thin wrappers that pass run ids and call shared/retrain.py.

prepare (snapshot + fit) -> chord(score_shard per customer-id range) -> finish_scoring
-> train_recommendations -> publish, with mark_failed as the error callback of every task (Celery
carries link_error through `replace` into the chord's header and body).

Every task is idempotent (it rewrites what it owns under the run id, and does nothing once the run
has ended), acks late so a task whose worker process dies is redelivered, runs under the configured
time limits, and retries with exponential backoff when the database or Redis drops out.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
from datetime import datetime

import psycopg
import redis
from celery import chain, chord, group
from sqlalchemy.exc import InterfaceError, OperationalError

from shared import retrain, runs
from shared.celery_app import celery_app

log = logging.getLogger("segrec.tasks")

# A lost or refused database or Redis connection: worth retrying, since the same call will work once
# the server is back. Anything else fails the run at once, with its reason.
TRANSIENT_ERRORS = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
    redis.ConnectionError,
    redis.TimeoutError,
    ConnectionError,
)
TASK_OPTIONS = {"bind": True, "acks_late": True, "reject_on_worker_lost": True}
# How long a retry keeps trying to reach the broker: about 40 s, longer than a Redis restart.
BROKER_PUBLISH_RETRY = {"max_retries": 25, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}
# The error callback must outlive an outage longer than the steps' own retry budget.
MARK_FAILED_RETRIES = 30


def _config() -> dict:
    return celery_app.segrec_config


def backoff_seconds(retries: int, config: dict) -> float:
    """Exponential backoff with full jitter: 1, 2, 4 ... seconds, capped, times a random factor in [0.5, 1]."""
    ceiling = min(config["RETRAIN_RETRY_BACKOFF_MAX"], 2.0 ** retries)
    return ceiling * random.uniform(0.5, 1.0)


@contextlib.contextmanager
def retried_on_transient_errors(task, max_retries: int | None = None):
    """Turn a transient error in the body into a Celery retry after a backoff; re-raise it when retries run out."""
    try:
        yield
    except TRANSIENT_ERRORS as error:
        config = _config()
        retries = config["RETRAIN_MAX_RETRIES"] if max_retries is None else max_retries
        countdown = backoff_seconds(task.request.retries, config)
        log.warning("transient error; retrying", extra={"task": task.name, "attempt": task.request.retries + 1,
                                                         "countdown": round(countdown, 2),
                                                         "error": f"{type(error).__name__}: {error}"[:300]})
        # The retry is itself a message to the broker: when the outage is Redis, keep trying to send it
        # while Redis comes back (kombu's publish retry), instead of failing the run on the first refusal.
        raise task.retry(exc=error, countdown=countdown, max_retries=retries,
                         retry_policy=BROKER_PUBLISH_RETRY) from error


@celery_app.task(name="segrec.retrain.start", **TASK_OPTIONS)
def start_retrain(self, trigger: str = "schedule", as_of: str | None = None) -> str:
    """Beat's entry point: begin a run (or find the one under way) and launch its workflow; returns its id."""
    with retried_on_transient_errors(self):
        try:
            run = retrain.begin_run(_config(), as_of=datetime.fromisoformat(as_of) if as_of else None,
                                    trigger=trigger)
        except retrain.RetrainInProgress as busy:
            return busy.run_id
        launch_workflow(run.run_id)
        return run.run_id


def launch_workflow(run_id: str) -> None:
    """Queue the steps of a begun run; if they cannot be queued, the run fails and frees the lock."""
    try:
        prepare.apply_async((run_id,), link_error=mark_failed.s(run_id=run_id))
    except Exception as error:
        retrain.fail_run(run_id, _config(), f"could not queue the workflow: {type(error).__name__}: {error}")
        raise


@celery_app.task(name="segrec.retrain.prepare", **TASK_OPTIONS)
def prepare(self, run_id: str):
    """Snapshot and fit on everyone, then fan out one scoring task per customer-id shard."""
    with retried_on_transient_errors(self):
        config = _config()
        if not retrain.still_running(run_id, config):
            return None
        shards = retrain.step_snapshot(run_id, config)
        retrain.step_fit(run_id, config)
        # The score step is recorded as running from here; finish_scoring closes it with the wall time.
        runs.start_step(run_id, retrain.SCORE_STEP, {"shards": len(shards)})
        rest = chain(
            finish_scoring.si(run_id, len(shards)),
            train_recommendations.si(run_id),
            publish.si(run_id),
        )
        if not shards:
            return self.replace(rest)
        return self.replace(chord(group(score_shard.si(run_id, low, high) for low, high in shards), rest))


@celery_app.task(name="segrec.retrain.score_shard", **TASK_OPTIONS)
def score_shard(self, run_id: str, low: str | None, high: str | None) -> int:
    """Score one customer-id range (rewrites the range's rows, so a retry never duplicates)."""
    with retried_on_transient_errors(self):
        if not retrain.still_running(run_id, _config()):
            return 0
        return retrain.step_score_shard(run_id, low, high)


@celery_app.task(name="segrec.retrain.finish_scoring", **TASK_OPTIONS)
def finish_scoring(self, run_id: str, shard_count: int) -> int | None:
    """Record the fan-out's wall time and row count as one step."""
    with retried_on_transient_errors(self):
        if not retrain.still_running(run_id, _config()):
            return None
        return retrain.finish_scoring(run_id, shard_count)


@celery_app.task(name="segrec.retrain.train_recommendations", **TASK_OPTIONS)
def train_recommendations(self, run_id: str) -> None:
    """Train and stage the recommendation lists under the run's version."""
    with retried_on_transient_errors(self):
        if not retrain.still_running(run_id, _config()):
            return
        retrain.step_train_recommendations(run_id, _config())


@celery_app.task(name="segrec.retrain.publish", **TASK_OPTIONS)
def publish(self, run_id: str) -> str:
    """Evaluate against the current run and publish, or reject with the reason (safe to repeat)."""
    with retried_on_transient_errors(self):
        run = runs.get_run(run_id)
        if run.status in runs.ACTIVE_STATUSES and not retrain.still_running(run_id, _config()):
            return runs.get_run(run_id).status
        return retrain.step_evaluate_and_publish(run_id, _config()).status


@celery_app.task(name="segrec.retrain.mark_failed", **TASK_OPTIONS)
def mark_failed(self, failed_task_id: str | None = None, *, run_id: str) -> None:
    """Error callback: the run failed with the failed task's error; release the lock so the next run can start.

    Celery sends it as a task of its own (it is bound, so the backend queues it rather than calling it
    in place) with the failed task's id first, except on chord header tasks, where Celery links an
    immutable copy (hence run_id by keyword). It retries through outages like the steps do.
    """
    with retried_on_transient_errors(self, max_retries=MARK_FAILED_RETRIES):
        run = runs.get_run(run_id)
        if run.status not in runs.ACTIVE_STATUSES:
            return
        retrain.fail_run(run_id, _config(), failure_reason(failed_task_id, run))


def failure_reason(failed_task_id: str | None, run) -> str:
    """The failed task's exception as stored by the result backend, else the last failed step's error."""
    error = celery_app.AsyncResult(failed_task_id).result if failed_task_id else None
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    failed_steps = [step for step in run.steps if step["status"] == "failed"]
    if failed_steps and failed_steps[-1].get("detail", {}).get("error"):
        return failed_steps[-1]["detail"]["error"]
    return f"task {failed_task_id} of the workflow failed"

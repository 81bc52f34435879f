"""Celery tasks of the retrain workflow: thin wrappers that pass run ids and call services/pipeline/retrain.py.

prepare (snapshot) -> chord(fit_customer_models, train_line_shard per customer-id range) -> fan_out_training ->
chord(train_models, train_bundles, score_shard per customer-id range) -> finish_scoring -> fan_out_for_you ->
chord(train_for_you_shard per customer-id range) -> finish_for_you -> publish, with mark_failed as the
error callback of every task (Celery carries link_error through `replace` into the chord's header and
body). The line shards are the map step of training: each reads its customers' paid lines into compact
arrays kept in Redis, and train_models joins them, so no process holds the text of the whole shop's
lines; the for-you shard of the same range reads them again. The line shards and train_models read
the published run's tiers, never this run's scores, so the line shards run beside the customer-model
fit and train_models beside the scoring shards: with two or more worker processes the serial steps
overlap the shards.

Every task is idempotent (it rewrites what it owns under the run id, and does nothing once the run
has ended) and declared with `segrec_task`: it acks late so a task whose worker process dies is
redelivered, runs under the configured time limits, and retries with exponential backoff when the
database or Redis drops out.
"""

from __future__ import annotations

import logging
from datetime import datetime

from celery import chain, chord, group

from services.pipeline import feedback, retrain
from services.pipeline.celery_app import celery_app, segrec_config, segrec_task
from shared import runs

log = logging.getLogger("segrec.tasks")

# The error callback must outlive an outage longer than the steps' own retry budget.
MARK_FAILED_RETRIES = 30


@segrec_task("segrec.retrain.start")
def start_retrain(self, trigger: str = "schedule", as_of: str | None = None) -> str:
    """Beat's entry point: begin a run (or find the one under way) and launch its workflow; returns its id."""
    try:
        run = retrain.begin_run(segrec_config(), as_of=datetime.fromisoformat(as_of) if as_of else None,
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
        retrain.fail_run(run_id, segrec_config(), f"could not queue the workflow: {type(error).__name__}: {error}")
        raise


@segrec_task("segrec.retrain.prepare")
def prepare(self, run_id: str):
    """Snapshot, then fit the customer models beside one line-reading task per customer-id shard."""
    config = segrec_config()
    if not retrain.still_running(run_id, config):
        return None
    customers, shards = retrain.step_snapshot(run_id, config)
    line_shards = retrain.training_shards(config, shards)
    # The line-reading fan-out is recorded as running from here; train_models closes it with the wall time.
    runs.start_step(run_id, retrain.LINES_STEP, {"shards": len(line_shards)})
    # The fit is first in the group, so a free worker process takes the longest task first.
    header = [fit_customer_models.si(run_id, customers, shards)]
    header += [train_line_shard.si(run_id, index, low, high) for index, (low, high) in enumerate(line_shards)]
    return self.replace(chord(group(header), fan_out_training.si(run_id, line_shards, shards)))


@segrec_task("segrec.retrain.fit_customer_models")
def fit_customer_models(self, run_id: str, customers: int, shards: list) -> None:
    """Fit RFM edges, BG/NBD and Gamma-Gamma for the scoring shards (rewrites the run's one scorer key)."""
    config = segrec_config()
    if retrain.still_running(run_id, config):
        retrain.step_fit(run_id, config, customers, [tuple(shard) for shard in shards])


@segrec_task("segrec.retrain.fan_out_training")
def fan_out_training(self, run_id: str, line_shards: list, shards: list):
    """train_models and train_bundles beside one scoring task per customer-id shard, then the for-you fan-out.

    train_models is first in the group and train_bundles second, so free worker processes take the longest
    tasks first and the others score while they train (both read the published run's tiers, never this
    run's scores).
    """
    if not retrain.still_running(run_id, segrec_config()):
        return None
    # The score step is recorded as running from here; finish_scoring closes it with the wall time.
    runs.start_step(run_id, retrain.SCORE_STEP, {"shards": len(shards)})
    header = [train_models.si(run_id, line_shards), train_bundles.si(run_id, line_shards)]
    header += [score_shard.si(run_id, low, high) for low, high in shards]
    return self.replace(chord(group(header), chain(finish_scoring.si(run_id, len(shards)),
                                                   fan_out_for_you.si(run_id, line_shards))))


@segrec_task("segrec.retrain.train_line_shard")
def train_line_shard(self, run_id: str, index: int, low: str | None, high: str | None) -> int:
    """Read one customer-id range's paid lines into a staged shard for train_models (rewrites its own key)."""
    if not retrain.still_running(run_id, segrec_config()):
        return 0
    return retrain.step_train_line_shard(run_id, segrec_config(), index, low, high)


@segrec_task("segrec.retrain.score_shard")
def score_shard(self, run_id: str, low: str | None, high: str | None) -> int:
    """Score one customer-id range (rewrites the range's rows, so a retry never duplicates)."""
    if not retrain.still_running(run_id, segrec_config()):
        return 0
    return retrain.step_score_shard(run_id, low, high)


@segrec_task("segrec.retrain.finish_scoring")
def finish_scoring(self, run_id: str, shard_count: int) -> int | None:
    """Record the fan-out's wall time and row count as one step."""
    if not retrain.still_running(run_id, segrec_config()):
        return None
    return retrain.finish_scoring(run_id, shard_count)


@segrec_task("segrec.retrain.train_models")
def train_models(self, run_id: str, line_shards: list | None = None) -> int | None:
    """Join the line shards, train the models and stage the shared lists and for-you inputs; returns lines."""
    config = segrec_config()
    if not retrain.still_running(run_id, config):
        return None
    retrain.finish_line_shards(run_id, len(line_shards or []))
    return retrain.step_train_models(run_id, config, line_shards).get("order_lines")


@segrec_task("segrec.retrain.train_bundles")
def train_bundles(self, run_id: str, line_shards: list | None = None) -> int | None:
    """Build the bundles from the line shards and stage them under the run's version; returns their count."""
    config = segrec_config()
    if not retrain.still_running(run_id, config):
        return None
    return retrain.step_train_bundles(run_id, config, line_shards)


@segrec_task("segrec.retrain.fan_out_for_you")
def fan_out_for_you(self, run_id: str, line_shards: list | None = None):
    """Fan out one for-you task per customer-id shard (the line shards' ranges), then publish.

    The shards read the run's neighbour lists, priors and line shards from Redis (by the run id and
    index), never from the task message, and write their customers' lists under the run's version.
    line_shards None (a message from before the ranges were passed on): the ranges are cut again.
    """
    config = segrec_config()
    if not retrain.still_running(run_id, config):
        return None
    shards = [tuple(shard) for shard in line_shards] if line_shards is not None else retrain.training_shards(config)
    # The fan-out is recorded as running from here; finish_for_you closes it with the wall time.
    runs.start_step(run_id, retrain.FOR_YOU_STEP, {"shards": len(shards)})
    rest = chain(finish_for_you.si(run_id, len(shards)), publish.si(run_id))
    if not shards:
        return self.replace(rest)
    return self.replace(chord(group(train_for_you_shard.si(run_id, index, low, high)
                                    for index, (low, high) in enumerate(shards)), rest))


@segrec_task("segrec.retrain.train_for_you_shard")
def train_for_you_shard(self, run_id: str, index: int, low: str | None, high: str | None) -> int:
    """Rank one customer-id range's for-you lists (rewrites the range's fields, so a retry never duplicates)."""
    config = segrec_config()
    if not retrain.still_running(run_id, config):
        return 0
    return retrain.step_train_for_you_shard(run_id, config, index, low, high)


@segrec_task("segrec.retrain.finish_for_you")
def finish_for_you(self, run_id: str, shard_count: int) -> int | None:
    """Record the for-you fan-out's wall time and customer count as one step."""
    if not retrain.still_running(run_id, segrec_config()):
        return None
    return retrain.finish_for_you(run_id, shard_count)


@segrec_task("segrec.retrain.publish")
def publish(self, run_id: str) -> str:
    """Evaluate against the current run and publish, or reject with the reason (safe to repeat)."""
    run = runs.get_run(run_id)
    if run.status in runs.ACTIVE_STATUSES and not retrain.still_running(run_id, segrec_config()):
        return runs.get_run(run_id).status
    return retrain.step_evaluate_and_publish(run_id, segrec_config()).status


@segrec_task("segrec.retrain.mark_failed", max_retries=MARK_FAILED_RETRIES)
def mark_failed(self, failed_task_id: str | None = None, *, run_id: str) -> None:
    """Error callback: the run failed with the failed task's error; release the lock so the next run can start.

    Celery sends it as a task of its own (it is bound, so the backend queues it rather than calling it
    in place) with the failed task's id first, except on chord header tasks, where Celery links an
    immutable copy (hence run_id by keyword). It retries through outages like the steps do, with a larger
    budget.
    """
    run = runs.get_run(run_id)
    if run.status not in runs.ACTIVE_STATUSES:
        return
    retrain.fail_run(run_id, segrec_config(), failure_reason(failed_task_id, run))


def failure_reason(failed_task_id: str | None, run) -> str:
    """The failed task's exception as stored by the result backend, else the last failed step's error."""
    error = celery_app.AsyncResult(failed_task_id).result if failed_task_id else None
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    failed_steps = [step for step in run.steps if step["status"] == "failed"]
    if failed_steps and failed_steps[-1].get("detail", {}).get("error"):
        return failed_steps[-1]["detail"]["error"]
    return f"task {failed_task_id} of the workflow failed"


# ---- storefront feedback -------------------------------------------------------------------------


@segrec_task("segrec.feedback.drain", soft_time_limit=240, time_limit=300)
def drain_feedback(self) -> dict:
    """Beat's every-few-seconds task: store what the feedback and served-answer streams hold (at least once)."""
    return feedback.drain(segrec_config())

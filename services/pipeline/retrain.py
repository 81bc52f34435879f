"""The nightly retrain as steps: snapshot, fit, score shards, train models, for-you shards, evaluate, publish.

Each step takes a run id (and a shard range), reads what it needs from the database or Redis and
writes its results under the run id, so a step can be retried and the same functions serve the
synchronous `segrec retrain` and the Celery workflow in services/pipeline/tasks.py.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pandas as pd
import redis
from sqlalchemy import DateTime, String, delete, func, insert, literal, or_, select

from services.recommend.training import (
    drop_line_shards,
    publish_version,
    stage_line_shard,
    train_bundles,
    train_for_you_shard,
    train_models,
    warm_cache,
)
from services.segmentation.console import aggregates as console_aggregates
from services.segmentation.scoring import CustomerScorer
from services.segmentation.snapshot import (
    hash_sample,
    load_customer_frame,
    load_previous_tiers,
    shard_boundaries,
    write_scores,
)
from services.segmentation.tiers import TierRules
from shared import runs
from shared.errors import NotFound
from shared.extensions import db, redis_store
from shared.ingest import utcnow
from shared.limits import TimeRules
from shared.models import Customer, CustomerScore, Order, Run, TierHistory
from shared.quarantine import merge_reports, quarantine_customers

log = logging.getLogger("segrec.retrain")

SCORER_TTL_SECONDS = 86_400
# Published runs whose score rows are kept (older ones are deleted; their cursors go stale).
KEEP_PUBLISHED_RUNS = 3
SCORE_STEP = "score_customers"
TRAIN_MODELS_STEP = "train_models"
TRAIN_BUNDLES_STEP = "train_bundles"
# The line-reading fan-out as a whole (wall time, lines); each shard is a step of its own, LINES_STEP_nnn.
LINES_STEP = "train_lines"
# The for-you fan-out as a whole (wall time, customers); each shard is a step of its own, FOR_YOU_STEP_nnn.
FOR_YOU_STEP = "train_for_you"


class RetrainInProgress(Exception):
    """Another run holds the retrain lock."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} is already under way")
        self.run_id = run_id


def scorer_from_config(config: dict) -> CustomerScorer:
    """The customer scorer with the configured business rules."""
    return CustomerScorer(
        window_days=config["RFM_WINDOW_DAYS"],
        segment_map=config["RFM_SEGMENT_MAP"],
        tier_rules=TierRules(downgrade_grace_days=config["TIER_DOWNGRADE_GRACE_DAYS"]),
        shop_timezone=config.get("SHOP_TIMEZONE", "UTC"),
    )


def _scorer_key(run_id: str) -> str:
    return redis_store.key("run", run_id, "scorer")


def begin_run(config: dict, as_of: datetime | None = None, trigger: str = "manual") -> Run:
    """Create a run and take the lock, or raise RetrainInProgress naming the run under way.

    A lock whose holder has ended, or has shown no sign of life for RETRAIN_STALE_SECONDS (its
    worker died), is taken over; the holder is marked failed so its leftovers never publish.
    """
    as_of = as_of or utcnow()
    run = runs.create_run(as_of, trigger)
    lock = runs.RunLock(config["RETRAIN_LOCK_SECONDS"])
    holder = lock.acquire(run.run_id)
    # Twice at most: another trigger may take over the same stale holder between our look and our move.
    for _attempt in range(2):
        if holder is None:
            break
        stale = stale_holder_reason(holder, config)
        if stale is None:
            break
        if lock.take_over(holder, run.run_id):
            log.warning("stale retrain lock taken over", extra={"run_id": run.run_id, "stale_run_id": holder,
                                                                "reason": stale})
            runs.finish_run(holder, "failed", f"{stale}; its lock was taken over by run {run.run_id}")
            holder = None
            break
        holder = lock.acquire(run.run_id)
    if holder is not None:
        runs.update_run(run.run_id, status="rejected", reason=f"run {holder} was already under way",
                        finished_at=utcnow())
        raise RetrainInProgress(holder)
    runs.update_run(run.run_id, status="running", started_at=utcnow())
    log.info("run started", extra={"run_id": run.run_id, "trigger": trigger, "as_of": as_of.isoformat()})
    return run


def stale_holder_reason(holder: str, config: dict) -> str | None:
    """Why the lock's holder is dead (ended, unknown, or silent too long), or None while it is alive."""
    try:
        run = runs.get_run(holder)
    except NotFound:
        return f"run {holder} holding the retrain lock has no record"
    if run.status not in runs.ACTIVE_STATUSES:
        return f"run {holder} had ended ({run.status}) without releasing the retrain lock"
    silent = (utcnow() - runs.last_progress(run)).total_seconds()
    if silent > config["RETRAIN_STALE_SECONDS"]:
        return f"run {holder} showed no progress for {silent:.0f} s (its worker probably died)"
    return None


def still_running(run_id: str, config: dict) -> bool:
    """True when a run's next task should do its work: the run is active and still holds the lock.

    Renews the lock (re-taking it if Redis lost it in a restart). A run that lost the lock to
    another run is failed here, so two runs never write at once.
    """
    run = runs.get_run(run_id)
    if run.status not in runs.ACTIVE_STATUSES:
        log.info("run has ended; task skipped", extra={"run_id": run_id, "status": run.status})
        return False
    lock = runs.RunLock(config["RETRAIN_LOCK_SECONDS"])
    holder = lock.renew(run_id)
    if holder != run_id:
        runs.finish_run(run_id, "failed", f"lost the retrain lock to run {holder}")
        log.error("run lost the retrain lock", extra={"run_id": run_id, "holder": holder})
        return False
    # A duplicate of a task (redelivered after its worker died) may get here while the original
    # workflow publishes and releases the lock; renewing would then re-take it for an ended run.
    if runs.get_run(run_id).status not in runs.ACTIVE_STATUSES:
        lock.release(run_id)
        return False
    return True


def step_snapshot(run_id: str, config: dict) -> tuple[int, list[tuple[str | None, str | None]]]:
    """Count the inputs, fingerprint them, and cut customer-id shards: (customers, scoring shards)."""
    with runs.timed_step(run_id, "snapshot") as info:
        with db.session() as session:
            customers = session.execute(select(func.count()).select_from(Customer)).scalar_one()
            orders, last_change = session.execute(select(func.count(), func.max(Order.updated_at))).one()
        shards = shard_boundaries(db.engine, config["SCORING_SHARD_SIZE"]) if customers else []
        info["rows"] = customers
        info["detail"] = {"customers": customers, "orders": orders, "shards": len(shards),
                          "last_order_change": last_change.isoformat() if last_change else None}
    return customers, shards


def step_fit(run_id: str, config: dict, customers: int, shards: list) -> dict:
    """Fit RFM edges, BG/NBD and Gamma-Gamma (on a sample above FIT_SAMPLE_CUSTOMERS); the scorer goes to Redis.

    customers, shards: the snapshot's count and scoring shards (a sample is read a shard at a time).
    """
    run = runs.get_run(run_id)
    min_date = TimeRules.from_config(config).min_date
    with runs.timed_step(run_id, "fit_customer_models") as info, step_resources(info):
        frame, quarantined, sampled = fit_frame(run.as_of, config, min_date, customers, shards)
        scorer = scorer_from_config(config).fit(frame, run.as_of) if len(frame) else None
        info["rows"] = len(frame)
        summary = scorer.model_summary() if scorer is not None else {"buyers": 0}
        if sampled:
            summary["fitted_on_sample"] = sampled
        info["detail"] = {key: value for key, value in summary.items() if key != "rfm_edges"}
        # Pickle is safe here: the bytes are written and read only by segrec's own processes.
        redis_store.client.set(_scorer_key(run_id), pickle.dumps(scorer), ex=SCORER_TTL_SECONDS)
    if quarantined["count"]:
        log.warning("customers quarantined", extra={"run_id": run_id, "reasons": quarantined["reasons"]})
    # Shards quarantine the same customers with the same earliest date (they read it back from here).
    quarantined["min_date"] = min_date.isoformat()
    runs.merge_metrics(run_id, {"customer_models": summary, "quarantine": quarantined})
    return summary


def fit_frame(as_of: datetime, config: dict, min_date: datetime, customers: int, shards: list) -> tuple:
    """(customers the scorer is fitted on, quarantine report of every customer, sample or None).

    Up to FIT_SAMPLE_CUSTOMERS customers: all of them, in one read. Beyond it: read the scoring shards one
    at a time, keeping a fixed hash sample (by customer id) of about FIT_SAMPLE_CUSTOMERS, so the step's
    memory stays that of the sample (5M customers read at once took 2.7 GB in one process; a sample of
    1M, 0.75 GB). RFM edges are quantiles and BG/NBD and Gamma-Gamma have a few parameters each: a
    million customers pin them down (within 0.6 % of the fit on all 5M, docs/CAPACITY.md [G]); every
    customer is still scored.
    """
    window_days, limit = config["RFM_WINDOW_DAYS"], config["FIT_SAMPLE_CUSTOMERS"]
    if not limit or customers <= limit:
        frame, quarantined = quarantine_customers(load_customer_frame(db.engine, as_of, window_days), as_of,
                                                  min_date)
        return frame, quarantined, None
    fraction = limit / customers
    parts, quarantined = [], None
    for low, high in shards:
        shard, shard_quarantined = quarantine_customers(
            load_customer_frame(db.engine, as_of, window_days, low=low, high=high), as_of, min_date)
        quarantined = merge_reports(quarantined, shard_quarantined)
        parts.append(hash_sample(shard, fraction))
    frame = pd.concat(parts, ignore_index=True)
    return frame, quarantined, {"customers": customers, "sampled": len(frame), "limit": limit}


def step_score_shard(run_id: str, low: str | None, high: str | None) -> int:
    """Score customers with ids in [low, high) and write their rows under the run (idempotent)."""
    run = runs.get_run(run_id)
    payload = redis_store.client.get(_scorer_key(run_id))
    if payload is None:
        raise RuntimeError(f"the fitted scorer of run {run_id} is missing from Redis; refit")
    scorer: CustomerScorer | None = pickle.loads(payload)
    if scorer is None:
        runs.record_step_progress(run_id, SCORE_STEP, shard_label(low, high))
        return 0
    min_date = datetime.fromisoformat((run.metrics or {}).get("quarantine", {}).get("min_date", "2000-01-01"))
    frame, _quarantined = quarantine_customers(
        load_customer_frame(db.engine, run.as_of, scorer.window_days, low=low, high=high), run.as_of, min_date)
    previous = load_previous_tiers(db.engine, runs.current_run_id(), low, high)
    scores = scorer.transform(frame, previous)
    written = write_scores(db.engine, run_id, scores, low, high)
    runs.record_step_progress(run_id, SCORE_STEP, shard_label(low, high))
    log.info("shard scored", extra={"run_id": run_id, "low": low, "high": high, "rows": written})
    return written


def shard_label(low: str | None, high: str | None) -> str:
    """A shard's customer-id range as text, e.g. 'c0100..c0200' ('' for an open end)."""
    return f"{low or ''}..{high or ''}"


def step_score_all(run_id: str, shards: list[tuple[str | None, str | None]]) -> int:
    """Score every shard in this process (the synchronous path)."""
    with runs.timed_step(run_id, SCORE_STEP) as info:
        written = sum(step_score_shard(run_id, low, high) for low, high in shards)
        info["rows"] = written
        info["detail"] = {"shards": len(shards)}
    return written


def shard_step_name(fan_out: str, index: int) -> str:
    """The run-record step of one shard of a fan-out: train_lines_001, train_for_you_002, ..."""
    return f"{fan_out}_{index + 1:03d}"


@contextmanager
def shard_step(run_id: str, fan_out: str, index: int, low: str | None, high: str | None) -> Iterator[dict]:
    """Record one shard of a fan-out as a step of its own (range, CPU seconds, peak memory), then as progress."""
    with runs.timed_step(run_id, shard_step_name(fan_out, index)) as info, step_resources(info):
        info["detail"] = {"low": low, "high": high}
        yield info
    runs.record_step_progress(run_id, fan_out, shard_label(low, high))


@contextmanager
def step_resources(info: dict) -> Iterator[None]:
    """Add the block's CPU seconds and peak resident memory to a step's detail."""
    reset_peak_memory()
    cpu_started = time.process_time()
    yield
    # CPU seconds tell the step's own work apart from waiting on a loaded machine.
    info["detail"] = {**(info["detail"] or {}), "peak_rss_mb": peak_memory_mb(),
                      "cpu_seconds": round(time.process_time() - cpu_started, 3)}


def close_shard_fan_out(run_id: str, fan_out: str, shard_count: int, ended_at: datetime | None = None) -> int:
    """Close a fan-out of shard steps: its wall time, and the rows its succeeded shards wrote (each shard once)."""
    run = runs.get_run(run_id)
    shard_steps = [step for step in run.steps if step["name"].startswith(fan_out + "_")]
    rows = sum(step["rows"] or 0 for step in shard_steps if step["status"] == "succeeded")
    close_fan_out(run_id, fan_out, rows, shard_count, ended_at=ended_at)
    return rows


def step_train_line_shard(run_id: str, config: dict, index: int, low: str | None, high: str | None) -> int:
    """Read and stage the paid lines of customers with ids in [low, high) for train_models (idempotent)."""
    run = runs.get_run(run_id)
    with shard_step(run_id, LINES_STEP, index, low, high) as info:
        shard = stage_line_shard(run_id, index, run.as_of, config, low, high)
        info["rows"] = shard.order_lines
        info["detail"].update(orders=len(shard.basket_times), customers=shard.customers)
    return info["rows"]


def finish_line_shards(run_id: str, shard_count: int) -> int:
    """Close the line-reading fan-out: its wall time ends with its last shard, its rows are the lines read."""
    last_shard = runs.step_updated_at(runs.get_run(run_id), LINES_STEP) if shard_count else None
    return close_shard_fan_out(run_id, LINES_STEP, shard_count, ended_at=last_shard)


def step_train_line_shards_all(run_id: str, config: dict, shards: list[tuple[str | None, str | None]]) -> int:
    """Every line shard in this process, one after another (the synchronous path)."""
    runs.start_step(run_id, LINES_STEP, {"shards": len(shards)})
    for index, (low, high) in enumerate(shards):
        step_train_line_shard(run_id, config, index, low, high)
    return finish_line_shards(run_id, len(shards))


def step_train_models(run_id: str, config: dict, shards: list | None = None) -> dict:
    """Train the recommendation models and stage the shared lists and the for-you inputs under the run's version.

    shards: the customer-id ranges whose line shards were staged (None: every line read here).
    """
    run = runs.get_run(run_id)
    with runs.timed_step(run_id, TRAIN_MODELS_STEP) as info, step_resources(info):
        metrics = train_models(run_id, run.as_of, config, [tuple(shard) for shard in shards] if shards else None)
        info["rows"] = metrics.get("order_lines")
        info["detail"] = {key: value for key, value in metrics.items() if not isinstance(value, dict)}
    lines_quarantined = metrics.pop("quarantine", None)
    if lines_quarantined and lines_quarantined["count"]:
        log.warning("order lines quarantined", extra={"run_id": run_id, "reasons": lines_quarantined["reasons"]})
    quarantine = merge_reports((runs.get_run(run_id).metrics or {}).get("quarantine"), lines_quarantined)
    runs.merge_metrics(run_id, {"recommendations": metrics, "quarantine": quarantine,
                                "model_selection": metrics.pop("model_selection", None)})
    return metrics


def step_train_bundles(run_id: str, config: dict, shards: list | None = None) -> int:
    """Build the bundles from the staged line shards and stage them under the run's version; returns their count."""
    run = runs.get_run(run_id)
    with runs.timed_step(run_id, TRAIN_BUNDLES_STEP) as info, step_resources(info):
        metrics = train_bundles(run_id, run.as_of, config, [tuple(shard) for shard in shards] if shards else None)
        info["rows"] = metrics["bundles"]
        info["detail"] = {"order_lines": metrics["order_lines"], "seconds": metrics["seconds"]}
    return metrics["bundles"]


def reset_peak_memory() -> None:
    """Start a new peak-RSS window for this process, so a step reports its own peak (Linux only)."""
    # Writing 5 to clear_refs resets VmHWM (Linux 4.0+); elsewhere the peak is the process's lifetime peak.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float | None:
    """This process's peak resident memory since the last reset, in MiB (None where /proc is missing)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def training_shards(config: dict, scoring_shards: list | None = None) -> list[tuple[str | None, str | None]]:
    """Customer-id ranges of the line and for-you shards (TRAINING_SHARD_SIZE customers; 0: the scoring shards').

    scoring_shards: the ranges the snapshot cut, taken as they are when the sizes agree (no second cut).
    """
    size = config.get("TRAINING_SHARD_SIZE") or config["SCORING_SHARD_SIZE"]
    if scoring_shards is not None and size == config["SCORING_SHARD_SIZE"]:
        return [tuple(shard) for shard in scoring_shards]
    with db.session() as session:
        if session.execute(select(Customer.customer_id).limit(1)).first() is None:
            return []
    return shard_boundaries(db.engine, size)


def step_train_for_you_shard(run_id: str, config: dict, index: int, low: str | None, high: str | None) -> int:
    """Rank and stage the for-you lists of customers with ids in [low, high) (a step of its own; idempotent)."""
    run = runs.get_run(run_id)
    with shard_step(run_id, FOR_YOU_STEP, index, low, high) as info:
        info["rows"] = train_for_you_shard(run_id, run.as_of, config, low, high, index)
    log.info("for-you shard trained", extra={"run_id": run_id, "low": low, "high": high, "rows": info["rows"]})
    return info["rows"]


def finish_for_you(run_id: str, shard_count: int) -> int:
    """Close the for-you fan-out: its wall time, and the customers its shards wrote (each shard once).

    The line shards, read by train_models and then by the for-you shard of the same range, are dropped here.
    """
    rows = close_shard_fan_out(run_id, FOR_YOU_STEP, shard_count)
    drop_line_shards(run_id, shard_count)
    metrics = dict(runs.get_run(run_id).metrics or {})
    runs.merge_metrics(run_id, {"recommendations": {**metrics.get("recommendations", {}), "customers": rows}})
    return rows


def step_train_for_you_all(run_id: str, config: dict, shards: list[tuple[str | None, str | None]]) -> int:
    """Every for-you shard in this process, one after another (the synchronous path)."""
    runs.start_step(run_id, FOR_YOU_STEP, {"shards": len(shards)})
    for index, (low, high) in enumerate(shards):
        step_train_for_you_shard(run_id, config, index, low, high)
    return finish_for_you(run_id, len(shards))


def segment_metrics(run_id: str) -> dict:
    """Counts per tier and lifecycle stage in a run (stored with it, read by the publish gate)."""
    with db.session() as session:
        tiers = dict(session.execute(select(CustomerScore.tier, func.count()).where(
            CustomerScore.run_id == run_id).group_by(CustomerScore.tier)).all())
        stages = dict(session.execute(select(CustomerScore.lifecycle, func.count()).where(
            CustomerScore.run_id == run_id).group_by(CustomerScore.lifecycle)).all())
    return {"customers_scored": int(sum(tiers.values())), "tiers": tiers, "lifecycle": stages}


def finish_scoring(run_id: str, shard_count: int) -> int:
    """Close the fanned-out score step: its wall time from its recorded start, and the rows written."""
    rows = segment_metrics(run_id)["customers_scored"]
    # The scoring shards share their chord with train_models, which may end later: the step ends with its
    # last shard's progress record.
    last_shard = runs.step_updated_at(runs.get_run(run_id), SCORE_STEP) if shard_count else None
    close_fan_out(run_id, SCORE_STEP, rows, shard_count, ended_at=last_shard)
    return rows


def close_fan_out(run_id: str, step: str, rows: int, shard_count: int, ended_at: datetime | None = None) -> None:
    """Record a fanned-out step as succeeded, with its wall time (from its start to `ended_at` or now) and rows."""
    run = runs.get_run(run_id)
    started_at = runs.step_started_at(run, step) or run.started_at or utcnow()
    ended_at = ended_at or utcnow()
    runs.record_step(run_id, step, "succeeded", (ended_at - started_at).total_seconds(), rows,
                     {"shards": shard_count}, started_at=started_at, finished_at=ended_at)
    log.info("step finished", extra={"run_id": run_id, "step": step, "rows": rows})


def step_evaluate_and_publish(run_id: str, config: dict) -> Run:
    """Gate on evaluation against the current run, then publish atomically, or keep the current run.

    Safe to repeat: a run already published only re-flips the recommendation pointer (the database
    flip committed, the Redis one may not have), and an ended run is left as it is.
    """
    lock = runs.RunLock(config["RETRAIN_LOCK_SECONDS"])
    run = runs.get_run(run_id)
    if run.status == "published":
        if runs.current_run_id() == run_id:
            publish_version(run_id)
        lock.release(run_id)
        return run
    if run.status not in runs.ACTIVE_STATUSES:
        return run
    started = time.perf_counter()
    runs.start_step(run_id, "publish")
    metrics = dict(run.metrics or {})
    metrics["segments"] = segment_metrics(run_id)
    current_id = runs.current_run_id()
    reason = None
    if current_id is not None:
        current = runs.get_run(current_id)
        reason = publish_gate_reason(current.metrics or {}, metrics, config["PUBLISH_TOLERANCE"])
    runs.update_run(run_id, metrics=metrics)
    if reason is not None:
        runs.record_step(run_id, "publish", "skipped", time.perf_counter() - started, detail={"reason": reason})
        runs.finish_run(run_id, "rejected", reason)
        lock.release(run_id)
        log.warning("run rejected", extra={"run_id": run_id, "reason": reason})
        return runs.get_run(run_id)

    # The storefront's hot keys are read once before the flip (and the flip refuses a version whose
    # catalogue is missing); tier history commits in the same transaction as the pointer.
    warm_cache(run_id)
    flipped = runs.publish(run_id, lambda session, previous: record_tier_changes(run_id, previous, session),
                           step_seconds=time.perf_counter() - started)
    if not flipped:
        log.warning("run ended before its publish; not published", extra={"run_id": run_id})
        return runs.get_run(run_id)
    publish_version(run_id)
    lock.release(run_id)
    prune_old_runs()
    precompute_console(run_id, config)
    published = runs.get_run(run_id)
    log.info("run published", extra={"run_id": run_id, "seconds": run_seconds(published)})
    return published


def precompute_console(run_id: str, config: dict) -> None:
    """Cache the console's per-run aggregates now, so no page view pays for them.

    The run is already published: a failure here only means the first page view computes them.
    """
    try:
        console_aggregates.precompute(run_id, runs.get_pointer(runs.PREVIOUS_RUN),
                                      config["CONSOLE_AGGREGATE_TTL_SECONDS"])
    except Exception:
        log.exception("console aggregates not precomputed", extra={"run_id": run_id})


def run_seconds(run: Run) -> float | None:
    """Wall time of a run from its start to its end."""
    if run.started_at is None or run.finished_at is None:
        return None
    return round((run.finished_at - run.started_at).total_seconds(), 3)


def publish_gate_reason(current: dict, candidate: dict, tolerance: float) -> str | None:
    """Why a candidate must not replace the current run, or None when it may."""
    new_customers = candidate["segments"]["customers_scored"]
    old_customers = current.get("segments", {}).get("customers_scored", 0)
    if old_customers and new_customers < old_customers * 0.5:
        return f"scored {new_customers} customers, fewer than half of the current run's {old_customers}"
    new_hit_rate = candidate.get("recommendations", {}).get("evaluation", {}).get("hr_at_10")
    old_hit_rate = current.get("recommendations", {}).get("evaluation", {}).get("hr_at_10")
    # The current run's model measured on the new run's own test cases, when training could.
    old_hit_rate = candidate.get("recommendations", {}).get("evaluation", {}).get("current_model_hr_at_10",
                                                                                  old_hit_rate)
    if new_hit_rate is not None and old_hit_rate is not None and new_hit_rate < old_hit_rate - tolerance:
        return (f"cart HR@10 {new_hit_rate:.4f} is worse than the current run's {old_hit_rate:.4f} "
                f"beyond the tolerance {tolerance}")
    return None


def record_tier_changes(run_id: str, previous_run_id: str | None, session=None) -> int:
    """Append a tier-history row for each customer whose tier differs from the previous run's (in SQL)."""
    if session is None:
        with db.session() as own_session:
            return record_tier_changes(run_id, previous_run_id, own_session)
    new = select(CustomerScore.customer_id, CustomerScore.tier).where(CustomerScore.run_id == run_id).subquery()
    old = select(CustomerScore.customer_id, CustomerScore.tier).where(
        CustomerScore.run_id == (previous_run_id or "")).subquery()
    changed = (
        select(
            new.c.customer_id,
            old.c.tier,
            new.c.tier,
            literal(utcnow(), type_=DateTime()),
            literal(run_id, type_=String()),
        )
        .select_from(new.outerjoin(old, old.c.customer_id == new.c.customer_id))
        .where(or_(old.c.tier.is_(None), old.c.tier != new.c.tier))
    )
    columns = ["customer_id", "from_tier", "to_tier", "changed_at", "run_id"]
    session.execute(delete(TierHistory).where(TierHistory.run_id == run_id))
    return session.execute(insert(TierHistory).from_select(columns, changed)).rowcount


def prune_old_runs() -> None:
    """Delete score rows of runs that are neither current, previous nor among the newest published."""
    with db.session() as session:
        keep = set(session.execute(
            select(Run.run_id).where(Run.status == "published").order_by(Run.published_at.desc())
            .limit(KEEP_PUBLISHED_RUNS)
        ).scalars())
        keep.update(value for value in (runs.current_run_id(session), runs.get_pointer(runs.PREVIOUS_RUN, session))
                    if value)
        stored = set(session.execute(select(CustomerScore.run_id).distinct()).scalars())
        active = set(session.execute(select(Run.run_id).where(Run.status.in_(runs.ACTIVE_STATUSES))).scalars())
        for run_id in stored - keep - active:
            session.execute(delete(CustomerScore).where(CustomerScore.run_id == run_id))


def fail_run(run_id: str, config: dict, error: BaseException | str) -> None:
    """Mark a run failed with its reason and release the lock; the current run keeps serving."""
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    reason = reason[:2000]
    if runs.finish_run(run_id, "failed", reason):
        log.error("run failed", extra={"run_id": run_id, "reason": reason})
    runs.RunLock(config["RETRAIN_LOCK_SECONDS"]).release(run_id)
    try:
        # A large shop's line shards are hundreds of MB of Redis: not left to their day-long expiry.
        drop_line_shards(run_id)
    except redis.RedisError as error:
        log.warning("line shards of a failed run not dropped", extra={"run_id": run_id, "error": str(error)})


def retrain_now(config: dict, as_of: datetime | None = None, trigger: str = "manual") -> Run:
    """Run every step in this process (for `segrec retrain` and tests)."""
    run = begin_run(config, as_of, trigger)
    try:
        customers, shards = step_snapshot(run.run_id, config)
        step_fit(run.run_id, config, customers, shards)
        # The line shards read the published run's tiers, not this run's scores: the order is the workflow's.
        line_shards = training_shards(config, shards)
        step_train_line_shards_all(run.run_id, config, line_shards)
        step_score_all(run.run_id, shards)
        step_train_models(run.run_id, config, line_shards)
        step_train_bundles(run.run_id, config, line_shards)
        step_train_for_you_all(run.run_id, config, line_shards)
        finished = step_evaluate_and_publish(run.run_id, config)
    except BaseException as error:
        fail_run(run.run_id, config, error)
        raise
    return finished

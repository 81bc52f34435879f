"""Training runs: their records, the one-at-a-time lock, publishing and rollback (no Flask here)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import datetime

from sqlalchemy import select, update

from shared.errors import Conflict, NotFound
from shared.extensions import db, redis_store, reply_text
from shared.ingest import dialect_insert, utcnow
from shared.models import Pointer, Run

log = logging.getLogger("segrec.runs")

CURRENT_RUN = "current_run"
PREVIOUS_RUN = "previous_run"
ACTIVE_STATUSES = ("queued", "running")
LOCK_NAME = "retrain-lock"


def new_run_id(as_of: datetime) -> str:
    """A sortable, unique run id: r20261125T020000-1a2b3c4d."""
    return f"r{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def current_run_id(session=None) -> str | None:
    """The published run segment lists and recommendations read, or None before the first publish."""
    return get_pointer(CURRENT_RUN, session)


def get_pointer(name: str, session=None) -> str | None:
    """Read a named pointer."""
    if session is None:
        with db.session() as own_session:
            return get_pointer(name, own_session)
    return session.execute(select(Pointer.value).where(Pointer.name == name)).scalar_one_or_none()


def set_pointer(session, name: str, value: str) -> None:
    """Create or move a named pointer inside the caller's transaction."""
    statement = dialect_insert(session, Pointer.__table__).values(name=name, value=value, updated_at=utcnow())
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["name"], set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at}
        )
    )


class RunLock:
    """A Redis lock with expiry so one retrain runs at a time across every beat and worker process."""

    # Each operation is one Lua call, so a check and the write that depends on it cannot interleave.
    _ACQUIRE = (
        "if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return ARGV[1] end "
        "return redis.call('get', KEYS[1])"
    )
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
    _TAKE_OVER = (
        "local holder = redis.call('get', KEYS[1]) "
        "if holder == ARGV[1] or not holder then redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) return 1 end "
        "return 0"
    )
    _RENEW = (
        "local holder = redis.call('get', KEYS[1]) "
        "if not holder or holder == ARGV[1] then redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2]) return ARGV[1] end "
        "return holder"
    )

    def __init__(self, timeout_seconds: int) -> None:
        self.timeout_seconds = timeout_seconds

    @property
    def key(self) -> str:
        return redis_store.key(LOCK_NAME)

    def acquire(self, run_id: str) -> str | None:
        """Take the lock for run_id; returns the holder's run id when another run has it."""
        holder = reply_text(redis_store.client.eval(self._ACQUIRE, 1, self.key, run_id, self.timeout_seconds))
        return None if holder == run_id else holder

    def holder(self) -> str | None:
        """The run id holding the lock, if any."""
        return reply_text(redis_store.client.get(self.key))

    def take_over(self, stale_holder: str, run_id: str) -> bool:
        """Move the lock from a dead run to run_id, unless someone else moved it first."""
        return bool(redis_store.client.eval(self._TAKE_OVER, 1, self.key, stale_holder, run_id, self.timeout_seconds))

    def renew(self, run_id: str) -> str | None:
        """Extend run_id's lock (re-taking it if Redis lost it); returns the run id now holding it."""
        return reply_text(redis_store.client.eval(self._RENEW, 1, self.key, run_id, self.timeout_seconds))

    def release(self, run_id: str) -> None:
        """Release the lock if run_id still holds it (compare-and-delete in one Lua call)."""
        redis_store.client.eval(self._RELEASE, 1, self.key, run_id)


def create_run(as_of: datetime, trigger: str) -> Run:
    """Insert a queued run."""
    run = Run(
        run_id=new_run_id(as_of), status="queued", as_of=as_of, steps=[], metrics={}, trigger=trigger,
        created_at=utcnow(),
    )
    with db.session() as session:
        session.add(run)
    return run


def get_run(run_id: str) -> Run:
    """One run or NotFound."""
    with db.session() as session:
        run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run {run_id}", {"run_id": [run_id]})
    return run


def update_run(run_id: str, **values) -> None:
    """Set fields of a run."""
    with db.session() as session:
        session.execute(update(Run).where(Run.run_id == run_id).values(**values))


def merge_metrics(run_id: str, values: dict) -> None:
    """Add top-level entries to a run's metrics under its row lock (steps of one run may run at once)."""
    with db.session() as session:
        run = _locked_run(session, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}", {"run_id": [run_id]})
        run.metrics = {**(run.metrics or {}), **values}


def record_step(run_id: str, name: str, status: str, seconds: float | None, rows: int | None = None,
                detail: dict | None = None, started_at: datetime | None = None,
                finished_at: datetime | None = None) -> None:
    """Append (or replace, on a retried step) one step's status, timing and row count."""
    _change_steps(run_id, lambda steps: with_step(steps, name, status, seconds, rows, detail, started_at,
                                                  finished_at))


def with_step(steps: list[dict], name: str, status: str, seconds: float | None, rows: int | None = None,
              detail: dict | None = None, started_at: datetime | None = None,
              finished_at: datetime | None = None) -> list[dict]:
    """The steps list with one step set (replacing an earlier record of it, whose start and place it keeps).

    Steps stay in the order they started, also where they overlap (train_models beside the scoring shards).
    """
    now = utcnow()
    position = next((index for index, step in enumerate(steps) if step["name"] == name), len(steps))
    earlier = steps[position] if position < len(steps) else {}
    step = {"name": name, "status": status, "seconds": None if seconds is None else round(seconds, 3),
            "rows": rows,
            "started_at": (started_at.isoformat() if started_at else earlier.get("started_at", now.isoformat())),
            "updated_at": now.isoformat()}
    if status != "running":
        step["finished_at"] = (finished_at or now).isoformat()
    if detail:
        step["detail"] = detail
    return steps[:position] + [step] + steps[position + 1:]


def start_step(run_id: str, name: str, detail: dict | None = None) -> None:
    """Record a step as running from now (its start is also a sign of life for stale-run detection)."""
    record_step(run_id, name, "running", None, detail=detail, started_at=utcnow())


def record_step_progress(run_id: str, name: str, done: str) -> None:
    """Note that one part (e.g. a shard) of a running step is done; the step's detail lists the parts."""

    def change(steps: list[dict]) -> list[dict]:
        for step in steps:
            if step["name"] == name and step["status"] == "running":
                detail = dict(step.get("detail") or {})
                detail["done"] = sorted(set(detail.get("done", [])) | {done})
                step["detail"] = detail
                step["updated_at"] = utcnow().isoformat()
        return steps

    _change_steps(run_id, change)


def _change_steps(run_id: str, change) -> None:
    """Rewrite a run's steps under a row lock, so concurrent shard tasks do not lose each other's updates."""
    with db.session() as session:
        run = _locked_run(session, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}", {"run_id": [run_id]})
        run.steps = change([dict(step) for step in (run.steps or [])])


def _locked_run(session, run_id: str) -> Run | None:
    """Load a run for changing it, holding its row's write lock until the transaction ends.

    The no-op UPDATE comes first because on SQLite a transaction that reads before it writes fails
    with "database is locked" when another process wrote in between; a write first waits its turn
    (busy timeout) instead. On PostgreSQL it locks the row like SELECT ... FOR UPDATE.
    """
    session.execute(update(Run).where(Run.run_id == run_id).values(status=Run.status))
    return session.get(Run, run_id)


def step_started_at(run: Run, name: str) -> datetime | None:
    """When a run's step started, from its record."""
    return _step_moment(run, name, "started_at")


def step_updated_at(run: Run, name: str) -> datetime | None:
    """When a run's step last changed (for a fan-out, its last part's progress), from its record."""
    return _step_moment(run, name, "updated_at")


def _step_moment(run: Run, name: str, field: str) -> datetime | None:
    for step in run.steps or []:
        if step["name"] == name and step.get(field):
            return datetime.fromisoformat(step[field])
    return None


def last_progress(run: Run) -> datetime:
    """The latest sign of life of a run: its start, or any step starting, advancing or finishing."""
    moments = [run.created_at, run.started_at]
    for step in run.steps or []:
        moments += [datetime.fromisoformat(step[key]) for key in ("started_at", "updated_at", "finished_at")
                    if step.get(key)]
    return max(moment for moment in moments if moment is not None)


@contextlib.contextmanager
def timed_step(run_id: str, name: str):
    """Time a step and record it; the body may set `info['rows']` and `info['detail']`."""
    info: dict = {"rows": None, "detail": None}
    started = time.perf_counter()
    # Which process runs it, while it runs (steps of one run may run at once on several workers).
    start_step(run_id, name, {"process": f"{socket.gethostname()}:{os.getpid()}"})
    log.info("step started", extra={"run_id": run_id, "step": name})
    try:
        yield info
    except Exception as error:
        record_step(run_id, name, "failed", time.perf_counter() - started, info["rows"],
                    {"error": f"{type(error).__name__}: {error}"[:500]})
        raise
    seconds = time.perf_counter() - started
    record_step(run_id, name, "succeeded", seconds, info["rows"], info["detail"])
    log.info("step finished", extra={"run_id": run_id, "step": name, "seconds": round(seconds, 3),
                                     "rows": info["rows"]})


def finish_run(run_id: str, status: str, reason: str | None = None) -> bool:
    """End an active run as failed or rejected (steps left running are marked failed); False if it had ended."""
    with db.session() as session:
        run = _locked_run(session, run_id)
        if run is None or run.status not in ACTIVE_STATUSES:
            return False
        now = utcnow()
        steps = [dict(step) for step in (run.steps or [])]
        for step in steps:
            if step["status"] == "running":
                step.update(status="failed", finished_at=now.isoformat())
        run.steps = steps
        run.status = status
        run.reason = reason
        run.finished_at = now
    return True


def publish(run_id: str, in_transaction=None, step_seconds: float | None = None) -> bool:
    """Make run_id current in one transaction; the old current becomes the previous (for rollback).

    `in_transaction(session, previous_run_id)` writes what must commit with the flip (tier history);
    the publish step is recorded in the same transaction, so a published run never shows it running.
    Returns False, changing nothing, when the run is no longer active (it failed or was taken over).
    """
    with db.session() as session:
        run = _locked_run(session, run_id)
        if run is None or run.status not in ACTIVE_STATUSES:
            return False
        current = current_run_id(session)
        if in_transaction is not None:
            in_transaction(session, current)
        if current is not None and current != run_id:
            set_pointer(session, PREVIOUS_RUN, current)
        set_pointer(session, CURRENT_RUN, run_id)
        now = utcnow()
        run.status = "published"
        run.published_at = now
        run.finished_at = now
        run.steps = with_step(list(run.steps or []), "publish", "succeeded", step_seconds)
    return True


def rollback() -> tuple[str, str]:
    """Make the previous published run current again; returns (from_run, to_run)."""
    with db.session() as session:
        current = current_run_id(session)
        previous = get_pointer(PREVIOUS_RUN, session)
        if previous is None or current is None:
            raise Conflict("there is no previous published run to roll back to")
        set_pointer(session, CURRENT_RUN, previous)
        set_pointer(session, PREVIOUS_RUN, current)
        session.execute(update(Run).where(Run.run_id == current).values(
            status="rejected", reason="rolled back by an operator"))
        # The run serving again was published before; a second rollback undoes the first.
        session.execute(update(Run).where(Run.run_id == previous).values(status="published", reason=None))
    return current, previous


def list_runs(limit: int = 50) -> list[Run]:
    """Newest runs first."""
    with db.session() as session:
        return list(session.execute(select(Run).order_by(Run.created_at.desc()).limit(limit)).scalars())

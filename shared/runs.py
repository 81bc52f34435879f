"""Training runs: their records, the one-at-a-time lock, publishing and rollback (no Flask here)."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import datetime

from sqlalchemy import select, update

from shared.errors import Conflict, NotFound
from shared.extensions import db, redis_store
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

    def __init__(self, timeout_seconds: int) -> None:
        self.timeout_seconds = timeout_seconds

    @property
    def key(self) -> str:
        return redis_store.key(LOCK_NAME)

    def acquire(self, run_id: str) -> str | None:
        """Take the lock for run_id; returns the holder's run id when another run has it."""
        client = redis_store.client
        if client.set(self.key, run_id, nx=True, ex=self.timeout_seconds):
            return None
        holder = client.get(self.key)
        return holder.decode() if holder else None

    def release(self, run_id: str) -> None:
        """Release the lock if run_id still holds it (compare-and-delete in one Lua call)."""
        script = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        redis_store.client.eval(script, 1, self.key, run_id)


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


def record_step(run_id: str, name: str, status: str, seconds: float, rows: int | None = None,
                detail: dict | None = None) -> None:
    """Append (or replace, on a retried step) one step's timing and row count."""
    with db.session() as session:
        run = session.get(Run, run_id, with_for_update=session.get_bind().dialect.name == "postgresql")
        steps = [step for step in (run.steps or []) if step["name"] != name]
        step = {"name": name, "status": status, "seconds": round(seconds, 3), "rows": rows}
        if detail:
            step["detail"] = detail
        steps.append(step)
        run.steps = steps


@contextlib.contextmanager
def timed_step(run_id: str, name: str):
    """Time a step and record it; the body may set `info['rows']` and `info['detail']`."""
    info: dict = {"rows": None, "detail": None}
    started = time.perf_counter()
    log.info("step started", extra={"run_id": run_id, "step": name})
    try:
        yield info
    except Exception as error:
        record_step(run_id, name, "failed", time.perf_counter() - started, info["rows"],
                    {"error": f"{type(error).__name__}: {error}"[:500]})
        raise
    seconds = time.perf_counter() - started
    record_step(run_id, name, "succeeded", seconds, info["rows"], info["detail"])
    log.info("step finished", extra={"run_id": run_id, "step": name, "seconds": round(seconds, 3)})


def publish(run_id: str) -> None:
    """Make run_id current in one transaction; the old current becomes the previous (for rollback)."""
    with db.session() as session:
        current = current_run_id(session)
        if current is not None and current != run_id:
            set_pointer(session, PREVIOUS_RUN, current)
        set_pointer(session, CURRENT_RUN, run_id)
        now = utcnow()
        session.execute(
            update(Run).where(Run.run_id == run_id).values(status="published", published_at=now, finished_at=now)
        )


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
    return current, previous


def list_runs(limit: int = 50) -> list[Run]:
    """Newest runs first."""
    with db.session() as session:
        return list(session.execute(select(Run).order_by(Run.created_at.desc()).limit(limit)).scalars())

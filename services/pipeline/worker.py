"""Entry point of Celery worker and beat processes: `celery -A services.pipeline.worker worker`.

Like Flask's examples/celery make_celery.py, this module builds the configured app when imported;
nothing else imports it. It also installs structured logging: one JSON object per line on stderr,
each carrying the run id of the task being executed (and the task's name and id).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import datetime, timezone

from celery import current_task
from celery.signals import setup_logging, task_postrun, task_prerun, worker_init, worker_process_init

from services.pipeline.celery_app import configure_celery, segrec_config
from shared import native_threads
from shared.config import load_config
from shared.extensions import db, redis_store
from shared.web import DEFAULT_REDIS_URL

RUN_ID_PATTERN = re.compile(r"^r\d{8}T\d{6}-[0-9a-f]{8}$")
current_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_run_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD_ATTRIBUTES = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class RunIdFilter(logging.Filter):
    """Give every record a run_id: its own `extra`, else the run of the task being executed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = current_run_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, run_id, task, and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", None),
        }
        task = current_task
        if task and task.request and task.request.id:
            payload["task"] = task.name
            payload["task_id"] = task.request.id
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and name not in payload:
                payload[name] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_json_logging(level: int | str = logging.INFO) -> None:
    """Send every logger's records to stderr as JSON lines (idempotent: pool processes call it again)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RunIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@setup_logging.connect
def use_json_logging(loglevel=None, **_kwargs) -> None:
    """Celery asks how to log: JSON lines at the worker's --loglevel (connecting here replaces its own setup)."""
    configure_json_logging(loglevel or logging.INFO)


def _run_id_of(args, kwargs) -> str | None:
    """The run id among a task's arguments (retrain tasks take it first, or as run_id=)."""
    if isinstance(kwargs, dict) and isinstance(kwargs.get("run_id"), str):
        return kwargs["run_id"]
    for value in args or ():
        if isinstance(value, str) and RUN_ID_PATTERN.match(value):
            return value
    return None


@task_prerun.connect
def bind_run_id(args=None, kwargs=None, **_extra) -> None:
    """While a task runs, its log records carry its run id."""
    current_run_id.set(_run_id_of(args, kwargs))


@task_postrun.connect
def unbind_run_id(**_extra) -> None:
    """A finished task's run id does not leak into the next task's records."""
    current_run_id.set(None)


def build_worker_app(overrides: dict | None = None):
    """Configure database, Redis and Celery from the environment (and overrides)."""
    config = load_config(overrides)
    config["REDIS_URL"] = config["REDIS_URL"] or DEFAULT_REDIS_URL
    db.configure(config["DATABASE_URL"], config["SHOP_TIMEZONE"])
    redis_store.configure(config["REDIS_URL"], config["REDIS_PREFIX"], socket_timeout=5.0)
    return configure_celery(config)


@worker_process_init.connect
def reset_connections_after_fork(**_kwargs) -> None:
    """A forked pool process must not share the parent's database connections."""
    db.dispose()
    config = segrec_config()
    db.configure(config["DATABASE_URL"], config["SHOP_TIMEZONE"])


# Native thread pools start one thread per core in every pool process; with a pool process per core they
# compete and spin: on the 1M shop with two processes, train_models took 64 s of CPU for 65 s of wall time,
# and 53 s for 56 s with one thread each (docs/CAPACITY.md [T]). Each pool process gets its share.
_native_threads_per_process: int | None = None


@worker_init.connect
def size_native_threads(sender=None, **_kwargs) -> None:
    """In the worker's main process, before its pool forks: each pool process's share of the cores."""
    global _native_threads_per_process
    if native_threads.sized_by_operator():
        return
    _native_threads_per_process = native_threads.threads_per_process(
        getattr(sender, "concurrency", None), native_threads.available_cores())


@worker_process_init.connect
def limit_native_threads(**_kwargs) -> None:
    """In each pool process: its share of native threads."""
    if _native_threads_per_process is not None:
        native_threads.limit_native_threads(_native_threads_per_process)


celery = build_worker_app()

"""The Celery app and the one decorator every segrec task is declared with.

The app is created unbound (no work at import): `configure_celery(config)` binds it to a segrec
configuration, the way Flask's examples/celery configures Celery from the Flask app's config. A Flask
app that sends tasks calls `celery_init_app(app)`, which also keeps the Celery app in
`app.extensions["celery"]`. The segrec configuration itself travels in the Celery configuration
under one key, CONFIG_KEY; `segrec_config()` is the one way tasks read it.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading

import psycopg
import redis
from celery import Celery, Task
from celery.schedules import crontab
from flask import Flask
from kombu import pools as kombu_pools
from sqlalchemy.exc import InterfaceError, OperationalError

log = logging.getLogger("segrec.tasks")

celery_app = Celery("segrec")

# The modules whose tasks a worker registers (imported by the worker at start, never by this module).
TASK_MODULES = ["services.pipeline.tasks", "services.segmentation.campaigns.tasks"]
# The key of celery_app.conf that holds the segrec configuration the app was configured with.
CONFIG_KEY = "segrec"

# A lost or refused database or Redis connection: worth retrying, since the same call will work once
# the server is back. Anything else fails the task at once, with its reason.
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
# How long a retry keeps trying to reach the broker: about 40 s, longer than a Redis restart.
BROKER_PUBLISH_RETRY = {"max_retries": 25, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


def nightly_retrain_schedule(config: dict) -> dict:
    """Beat's schedule: the retrain at RETRAIN_HOUR:RETRAIN_MINUTE in RETRAIN_TIMEZONE (the app's timezone),
    and the feedback consumer every FEEDBACK_DRAIN_SECONDS."""
    drain_seconds = float(config.get("FEEDBACK_DRAIN_SECONDS", 5.0))
    return {
        "nightly-retrain": {
            "task": "segrec.retrain.start",
            "schedule": crontab(hour=config["RETRAIN_HOUR"], minute=config["RETRAIN_MINUTE"], app=celery_app),
            "kwargs": {"trigger": "schedule"},
        },
        "feedback-drain": {
            "task": "segrec.feedback.drain",
            "schedule": drain_seconds,
            # A drain queued while the workers are down is pointless once the next one is due.
            "options": {"expires": max(drain_seconds * 2, 10.0)},
        },
    }


def configure_celery(config: dict) -> Celery:
    """Point Celery at Redis, install the nightly retrain schedule and keep the segrec configuration."""
    broker = config.get("CELERY_BROKER_URL") or config["REDIS_URL"]
    prefix = f"{config['REDIS_PREFIX']}:celery:"
    if celery_app.conf.get(CONFIG_KEY) is not None:
        _forget_connections()
    celery_app.conf.update(
        broker_url=broker,
        result_backend=broker,
        task_default_queue=config["CELERY_QUEUE"],
        # acks_late + reject_on_worker_lost: a task whose worker dies is redelivered, not lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=config["CELERY_TASK_TIME_LIMIT"],
        task_soft_time_limit=max(30, config["CELERY_TASK_TIME_LIMIT"] - 30),
        # A failing shard (chord header task) calls the error callback itself, not only the chord body.
        task_allow_error_cb_on_chord_header=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=86_400,
        # Chord counters and results live in Redis: ride out a Redis restart instead of failing the chord.
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": config["CELERY_TASK_TIME_LIMIT"] + 600,
                                  "global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        timezone=config["RETRAIN_TIMEZONE"],
        enable_utc=True,
        beat_schedule=nightly_retrain_schedule(config),
        include=TASK_MODULES,
    )
    celery_app.conf[CONFIG_KEY] = config
    # The app caches its timezone on first use; a reconfigured app must not keep the old one.
    celery_app.__dict__.pop("timezone", None)
    return celery_app


def celery_init_app(app: Flask) -> Celery:
    """Configure Celery from a Flask app's config and keep it in `app.extensions["celery"]`."""
    app.extensions["celery"] = configure_celery(app.config)
    return celery_app


def segrec_config() -> dict:
    """The segrec configuration Celery was configured with (what every task reads its settings from)."""
    return celery_app.conf[CONFIG_KEY]


def _forget_connections() -> None:
    """Drop the cached broker pool and result backend so a reconfigured app (tests) uses its new URLs.

    Celery caches both on first use and has no public way to rebind them; these are the same
    attributes it resets itself after a fork.
    """
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    # kombu keeps producer pools per connection URL process-wide: without this, the app's next producer pool
    # would be the old one, built on the connection pool just closed ("Acquire on closed pool").
    kombu_pools.reset()
    celery_app._after_fork()
    celery_app._backend_cache = None
    celery_app._local = threading.local()


def backoff_seconds(retries: int, config: dict) -> float:
    """Exponential backoff with jitter: 1, 2, 4 ... seconds, capped, times a random factor in [0.5, 1]."""
    ceiling = min(config["RETRAIN_RETRY_BACKOFF_MAX"], 2.0 ** retries)
    return ceiling * random.uniform(0.5, 1.0)


class SegrecTask(Task):
    """The base of every segrec task: a retry without a countdown waits the configured backoff.

    Celery's `autoretry_for` (set by `segrec_task`) turns a transient error into `retry(exc=...)`;
    its own `retry_backoff` and `max_retries` are fixed when the task is declared, while the
    ceiling (RETRAIN_RETRY_BACKOFF_MAX) and the budget (RETRAIN_MAX_RETRIES) are configuration,
    known only once the worker is configured: so they are filled in here.
    """

    # Retries of a transient error; None: the configured RETRAIN_MAX_RETRIES.
    transient_max_retries: int | None = None

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None, max_retries=None,
              **options):
        """Retry the task; a transient error without a countdown waits the configured backoff (and is logged)."""
        if isinstance(exc, TRANSIENT_ERRORS) and eta is None and countdown is None:
            config = segrec_config()
            countdown = backoff_seconds(self.request.retries, config)
            # Always the task's own budget: Celery's autoretry passes on whatever max_retries an earlier,
            # explicit retry of the same task object left behind (override_max_retries).
            max_retries = (config["RETRAIN_MAX_RETRIES"] if self.transient_max_retries is None
                           else self.transient_max_retries)
            log.warning("transient error; retrying", extra={
                "task": self.name, "attempt": self.request.retries + 1, "countdown": round(countdown, 2),
                "error": f"{type(exc).__name__}: {exc}"[:300]})
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta, countdown=countdown,
                             max_retries=max_retries, **options)


def segrec_task(name: str, *, base: type[SegrecTask] = SegrecTask, max_retries: int | None = None, **options):
    """Declare a task with the behaviour every segrec task shares.

    Bound, acknowledged late and rejected (so redelivered) when its worker process dies; a transient
    database or Redis error is retried after an exponential backoff, up to `max_retries` times (None:
    the configured RETRAIN_MAX_RETRIES); the retry message is sent with kombu's publish retry policy,
    so it survives a Redis restart. Time limits are the configured ones unless `options` set their own.
    """
    if max_retries is not None:
        options["max_retries"] = max_retries
    return celery_app.task(
        name=name,
        bind=True,
        base=base,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=TRANSIENT_ERRORS,
        # Passed to task.retry, which forwards apply_async options: the retry message is itself a publish.
        retry_kwargs={"retry_policy": BROKER_PUBLISH_RETRY},
        transient_max_retries=max_retries,
        **options,
    )

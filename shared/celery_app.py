"""The Celery app, created unbound: `configure_celery` binds it to a configuration (no work at import)."""

from __future__ import annotations

import threading

from celery import Celery
from celery.schedules import crontab

celery_app = Celery("segrec")

TASK_MODULES = ["services.segmentation.tasks", "shared.tasks"]


def nightly_retrain_schedule(config: dict) -> dict:
    """Beat's schedule: the retrain at RETRAIN_HOUR:RETRAIN_MINUTE in RETRAIN_TIMEZONE (the app's timezone)."""
    return {
        "nightly-retrain": {
            "task": "segrec.retrain.start",
            "schedule": crontab(hour=config["RETRAIN_HOUR"], minute=config["RETRAIN_MINUTE"], app=celery_app),
            "kwargs": {"trigger": "schedule"},
        }
    }


def configure_celery(config: dict) -> Celery:
    """Point Celery at Redis and install the nightly retrain schedule."""
    broker = config.get("CELERY_BROKER_URL") or config["REDIS_URL"]
    prefix = f"{config['REDIS_PREFIX']}:celery:"
    if getattr(celery_app, "segrec_config", None) is not None:
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
    # The app caches its timezone on first use; a reconfigured app must not keep the old one.
    celery_app.__dict__.pop("timezone", None)
    celery_app.segrec_config = config
    return celery_app


def _forget_connections() -> None:
    """Drop the cached broker pool and result backend so a reconfigured app (tests) uses its new URLs.

    Celery caches both on first use and has no public way to rebind them; these are the same
    attributes it resets itself after a fork.
    """
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._after_fork()
    celery_app._backend_cache = None
    celery_app._local = threading.local()

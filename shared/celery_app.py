"""The Celery app, created unbound: `configure_celery` binds it to a configuration (no work at import)."""

from __future__ import annotations

from celery import Celery
from celery.schedules import crontab

celery_app = Celery("segrec")

TASK_MODULES = ["services.segmentation.tasks", "services.recommend.tasks", "shared.tasks"]


def configure_celery(config: dict) -> Celery:
    """Point Celery at Redis and install the nightly retrain schedule."""
    broker = config.get("CELERY_BROKER_URL") or config["REDIS_URL"]
    celery_app.conf.update(
        broker_url=broker,
        result_backend=broker,
        # acks_late + reject_on_worker_lost: a task whose worker dies is redelivered, not lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=config["CELERY_TASK_TIME_LIMIT"],
        task_soft_time_limit=max(30, config["CELERY_TASK_TIME_LIMIT"] - 30),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=86_400,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": config["CELERY_TASK_TIME_LIMIT"] + 600,
                                  "global_keyprefix": f"{config['REDIS_PREFIX']}:celery:"},
        result_backend_transport_options={"global_keyprefix": f"{config['REDIS_PREFIX']}:celery:"},
        timezone=config["RETRAIN_TIMEZONE"],
        enable_utc=True,
        beat_schedule={
            "nightly-retrain": {
                "task": "segrec.retrain.start",
                "schedule": crontab(hour=config["RETRAIN_HOUR"], minute=config["RETRAIN_MINUTE"]),
                "kwargs": {"trigger": "schedule"},
            }
        },
        include=TASK_MODULES,
    )
    celery_app.segrec_config = config
    return celery_app

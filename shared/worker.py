"""Entry point of Celery worker and beat processes: `celery -A shared.worker worker`.

Like Flask's examples/celery make_celery.py, this module builds the configured app when imported;
nothing else imports it.
"""

from __future__ import annotations

from celery.signals import worker_process_init

from shared.celery_app import configure_celery
from shared.config import load_config
from shared.extensions import db, redis_store
from shared.web import DEFAULT_REDIS_URL


def build_worker_app(overrides: dict | None = None):
    """Configure database, Redis and Celery from the environment (and overrides)."""
    config = load_config(overrides)
    config["REDIS_URL"] = config["REDIS_URL"] or DEFAULT_REDIS_URL
    db.configure(config["DATABASE_URL"])
    redis_store.configure(config["REDIS_URL"], config["REDIS_PREFIX"], socket_timeout=5.0)
    return configure_celery(config)


@worker_process_init.connect
def reset_connections_after_fork(**_kwargs) -> None:
    """A forked pool process must not share the parent's database connections."""
    db.dispose()
    db.configure(celery.segrec_config["DATABASE_URL"])


celery = build_worker_app()

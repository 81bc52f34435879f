"""Prometheus metrics of training runs, computed from the run records when /metrics is scraped.

Runs execute in Celery workers, not in the web processes that serve /metrics, so the figures are
read from the database at scrape time: every web process (and every gunicorn worker) reports the
same values, and nothing is lost when a worker restarts.

- segrec_current_model_age_seconds: seconds since the current run was published (absent before the
  first publish); alert when it passes a day and a bit.
- segrec_run_duration_seconds{status}: wall time (start to end) of every ended run, by outcome, as a
  histogram; a run is counted when it is published, rejected or failed.
- segrec_celery_queue_length{queue}: tasks waiting in the Celery queue, read from the broker (Redis) at
  scrape time; a backlog means the workers are down or too few.
"""

from __future__ import annotations

import bisect
import logging

import redis
from flask import Flask, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import select

from shared.extensions import db
from shared.ingest import utcnow
from shared.models import Pointer, Run

log = logging.getLogger("segrec.metrics")

RUN_DURATION_BUCKETS = (30, 60, 120, 180, 300, 600, 900, 1800, 3600, 7200)
ENDED_STATUSES = ("published", "rejected", "failed")


class RunMetricsCollector:
    """Reads the current run's publish time and the ended runs' durations from the database."""

    def collect(self):
        try:
            with db.session() as session:
                published_at = session.execute(
                    select(Run.published_at).join(Pointer, Pointer.value == Run.run_id)
                    .where(Pointer.name == "current_run")
                ).scalar_one_or_none()
                ended = session.execute(
                    select(Run.status, Run.started_at, Run.finished_at).where(
                        Run.status.in_(ENDED_STATUSES), Run.started_at.is_not(None), Run.finished_at.is_not(None))
                ).all()
        except Exception as error:  # a scrape reports what it can; it never fails the endpoint
            log.warning("run metrics unavailable: %s", error)
            return
        age = GaugeMetricFamily("segrec_current_model_age_seconds",
                                "Seconds since the current (published) run was published")
        if published_at is not None:
            age.add_metric([], (utcnow() - published_at).total_seconds())
        yield age
        yield run_duration_histogram(ended)


def run_duration_histogram(ended_runs) -> HistogramMetricFamily:
    """Cumulative buckets of run wall times, one series per outcome."""
    histogram = HistogramMetricFamily("segrec_run_duration_seconds",
                                      "Wall time of ended training runs, start to end, by outcome", labels=["status"])
    by_status: dict[str, list[float]] = {status: [] for status in ENDED_STATUSES}
    for status, started_at, finished_at in ended_runs:
        by_status[status].append(max(0.0, (finished_at - started_at).total_seconds()))
    for status, durations in by_status.items():
        durations.sort()
        buckets = [(str(float(bound)), bisect.bisect_right(durations, bound)) for bound in RUN_DURATION_BUCKETS]
        buckets.append(("+Inf", len(durations)))
        histogram.add_metric([status], buckets, sum(durations))
    return histogram


RUN_REGISTRY = CollectorRegistry(auto_describe=False)
RUN_REGISTRY.register(RunMetricsCollector())


# kombu's Redis transport keeps a queue's priority levels in lists named "<queue>\x06\x16<level>".
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
KOMBU_PRIORITY_LEVELS = (3, 6, 9)


class QueueMetricsCollector:
    """Length of the Celery queue, read from the broker at scrape time."""

    def __init__(self, broker_url: str, prefix: str, queue: str) -> None:
        self.broker_url = broker_url
        self.queue = queue
        base = f"{prefix}:celery:{queue}"
        self.list_keys = [base, *(f"{base}{KOMBU_PRIORITY_SEPARATOR}{level}" for level in KOMBU_PRIORITY_LEVELS)]
        self._client: redis.Redis | None = None

    def collect(self):
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(self.broker_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            pipeline = self._client.pipeline(transaction=False)
            for key in self.list_keys:
                pipeline.llen(key)
            waiting = sum(pipeline.execute())
        except (redis.RedisError, OSError) as error:  # a scrape reports what it can
            log.warning("queue metrics unavailable: %s", error)
            return
        gauge = GaugeMetricFamily("segrec_celery_queue_length", "Tasks waiting in the Celery queue",
                                  labels=["queue"])
        gauge.add_metric([self.queue], waiting)
        yield gauge


def register_run_metrics(app: Flask) -> None:
    """Append the run and queue metrics to the app's /metrics answer (single- and multi-process mode alike)."""
    queue_registry = CollectorRegistry(auto_describe=False)
    broker_url = app.config.get("CELERY_BROKER_URL") or app.config["REDIS_URL"]
    queue_registry.register(QueueMetricsCollector(broker_url, app.config["REDIS_PREFIX"], app.config["CELERY_QUEUE"]))

    @app.after_request
    def append_run_metrics(response):
        if request.endpoint == "metrics" and response.status_code == 200:
            response.set_data(response.get_data() + generate_latest(RUN_REGISTRY) + generate_latest(queue_registry))
        return response

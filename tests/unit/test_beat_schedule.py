"""The nightly retrain's beat schedule: the configured hour and minute in the configured timezone."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from services.pipeline.celery_app import celery_app, configure_celery
from shared.config import load_config


@pytest.fixture
def configure():
    """Configure the Celery app from defaults plus overrides (no broker is contacted)."""

    def make(**overrides):
        return configure_celery(load_config({"REDIS_URL": "redis://127.0.0.1:6379/0", **overrides}, environ={}))

    return make


def nightly(app):
    entry = app.conf.beat_schedule["nightly-retrain"]
    assert entry["task"] == "segrec.retrain.start"
    assert entry["kwargs"] == {"trigger": "schedule"}
    return entry["schedule"]


def due_at(schedule, last_run: datetime, now: datetime) -> bool:
    """Whether beat would start the task at `now`, given it last ran at `last_run`."""
    schedule.nowfun = lambda: now
    return schedule.is_due(last_run).is_due


def test_default_is_two_in_the_morning_shanghai_time(configure):
    app = configure()
    schedule = nightly(app)
    assert (schedule.hour, schedule.minute) == ({2}, {0})
    assert app.conf.timezone == "Asia/Shanghai"
    assert str(schedule.tz) == "Asia/Shanghai"
    shanghai = ZoneInfo("Asia/Shanghai")
    last_run = datetime(2026, 11, 24, 2, 0, tzinfo=shanghai)
    assert not due_at(schedule, last_run, datetime(2026, 11, 25, 1, 59, tzinfo=shanghai))
    assert due_at(schedule, last_run, datetime(2026, 11, 25, 2, 0, 5, tzinfo=shanghai))
    # 02:00 in Shanghai is 18:00 UTC the day before.
    assert due_at(schedule, last_run, datetime(2026, 11, 24, 18, 0, 5, tzinfo=ZoneInfo("UTC")))
    assert not due_at(schedule, last_run, datetime(2026, 11, 24, 17, 59, tzinfo=ZoneInfo("UTC")))


def test_time_and_timezone_are_configurable(configure):
    app = configure(RETRAIN_HOUR=3, RETRAIN_MINUTE=30, RETRAIN_TIMEZONE="Europe/Berlin")
    schedule = nightly(app)
    assert (schedule.hour, schedule.minute) == ({3}, {30})
    assert app.conf.timezone == "Europe/Berlin"
    berlin = ZoneInfo("Europe/Berlin")
    last_run = datetime(2026, 11, 24, 3, 30, tzinfo=berlin)
    assert not due_at(schedule, last_run, datetime(2026, 11, 25, 3, 29, tzinfo=berlin))
    assert due_at(schedule, last_run, datetime(2026, 11, 25, 3, 30, 5, tzinfo=berlin))


def test_environment_overrides_reach_the_schedule(configure):
    app = configure_celery(load_config({"REDIS_URL": "redis://127.0.0.1:6379/0"},
                                       environ={"RETRAIN_HOUR": "4", "RETRAIN_MINUTE": "15"}))
    assert (nightly(app).hour, nightly(app).minute) == ({4}, {15})
    assert celery_app.conf.task_default_queue == "celery"

"""Configuration: defaults in code, overrides from the environment, tests pass a dict."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every setting the project reads, with its default. The README's configuration table lists them.
DEFAULTS: dict[str, object] = {
    # Storage. An empty DATABASE_URL means "a SQLite file under VAR_DIR".
    "DATABASE_URL": "",
    "VAR_DIR": str(REPO_ROOT / "var"),
    # An empty REDIS_URL means "127.0.0.1:6379 if it answers, else an embedded redis-server".
    "REDIS_URL": "",
    "REDIS_PREFIX": "segrec",
    "REDIS_SOCKET_TIMEOUT": 0.25,
    # Celery (broker and result backend default to REDIS_URL).
    "CELERY_BROKER_URL": "",
    "CELERY_TASK_TIME_LIMIT": 1800,
    "RETRAIN_HOUR": 2,
    "RETRAIN_MINUTE": 0,
    "RETRAIN_TIMEZONE": "Asia/Shanghai",
    "RETRAIN_LOCK_SECONDS": 3600,
    "SCORING_SHARD_SIZE": 200_000,
    "PUBLISH_TOLERANCE": 0.02,
    # HTTP.
    "MAX_BATCH_RECORDS": 5000,
    "MAX_CONTENT_LENGTH": 10 * 1024 * 1024,
    "PAGE_DEFAULT_LIMIT": 100,
    "PAGE_MAX_LIMIT": 1000,
    "MAX_FUTURE_SKEW_SECONDS": 86_400,
    "API_KEY_CACHE_SECONDS": 30,
    # Demo.
    "DEMO_SEED": 7,
    # Business rules (the glossary's numbers; all configurable).
    "RFM_WINDOW_DAYS": 365,
    "RFM_SEGMENT_MAP": "rf_grid_v1",
    "TIER_DOWNGRADE_GRACE_DAYS": 30,
    "BUNDLE_MARGIN_FLOOR": 0.08,
    "RECS_DEFAULT_LIMIT": 10,
    "RECS_MAX_LIMIT": 50,
}


def _coerce(raw: str, default: object) -> object:
    """Convert an environment string to the type of the default it overrides."""
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def load_config(overrides: dict | None = None, environ: dict | None = None) -> dict:
    """Return the settings: code defaults, then SEGREC_-less environment names, then overrides."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for name, default in DEFAULTS.items():
        if name in environ:
            config[name] = _coerce(environ[name], default)
    if overrides:
        config.update(overrides)
    if not config["DATABASE_URL"]:
        config["DATABASE_URL"] = f"sqlite:///{Path(config['VAR_DIR']) / 'segrec.db'}"
    return config

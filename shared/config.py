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
    # The queue workers consume and tasks are sent to (tests give each run of workers its own).
    "CELERY_QUEUE": "celery",
    "RETRAIN_HOUR": 2,
    "RETRAIN_MINUTE": 0,
    "RETRAIN_TIMEZONE": "Asia/Shanghai",
    "RETRAIN_LOCK_SECONDS": 3600,
    # A run that records no progress for this long is taken to be dead: a new trigger takes its lock.
    "RETRAIN_STALE_SECONDS": 2400,
    # Retries of a task (retrain steps, campaign builds) after a lost database or Redis connection, with
    # exponential backoff capped at RETRAIN_RETRY_BACKOFF_MAX seconds.
    "RETRAIN_MAX_RETRIES": 6,
    "RETRAIN_RETRY_BACKOFF_MAX": 60,
    "SCORING_SHARD_SIZE": 200_000,
    # Customers the nightly fit of RFM edges, BG/NBD and Gamma-Gamma reads at most: a larger shop is fitted on
    # a fixed hash sample (by customer id) of this many, read shard by shard (every customer is still scored); 0: all.
    "FIT_SAMPLE_CUSTOMERS": 1_000_000,
    # Customers per training shard (a line-reading and a for-you Celery task each); 0: the same as SCORING_SHARD_SIZE.
    "TRAINING_SHARD_SIZE": 0,
    "PUBLISH_TOLERANCE": 0.02,
    # Per-shop choice of the cart model at every retrain (services/recommend/selection.py).
    # EASE inverts an items x items matrix: 4,000 items take a few seconds (time bounds it, not memory).
    # Off: every shop keeps the default co-purchase model (no candidates are fitted).
    "MODEL_SELECTION": True,
    "EASE_MAX_ITEMS": 4000,
    # The softmax candidate's fit grows with cases x items: larger catalogues are left to the others.
    "SELECTION_SOFTMAX_MAX_ITEMS": 200,
    "SELECTION_MAX_CASES": 20_000,
    # Fewer validation cases than this: the shop keeps the default model, and the run says so.
    "SELECTION_MIN_CASES": 200,
    # Comma-separated grids; empty: the defaults of SelectionSettings.
    "SELECTION_BETAS": "",
    "SELECTION_EASE_L2_RATIOS": "",
    # HTTP.
    "MAX_BATCH_RECORDS": 5000,
    "MAX_CONTENT_LENGTH": 10 * 1024 * 1024,
    "MAX_FUTURE_SKEW_SECONDS": 86_400,
    # Request line and header limits the apps answer in JSON (414 / 431); gunicorn's own are set above these.
    "MAX_REQUEST_LINE": 4096,
    "MAX_HEADER_FIELDS": 100,
    "MAX_HEADER_FIELD_BYTES": 8000,
    # Reverse proxies in front of the apps whose X-Forwarded-For / -Proto to trust (1 behind deploy/nginx).
    "TRUSTED_PROXY_HOPS": 0,
    # Timestamps without an offset (REST bodies and CSV files) are this zone's local time; it also sets
    # where a day begins in daily figures (purchase days, day-based recency and lifecycle).
    "SHOP_TIMEZONE": "Asia/Shanghai",
    # Timestamps before this (UTC) are rejected at the edge and quarantined by the retrain.
    "MIN_PLAUSIBLE_DATE": "2000-01-01",
    "API_KEY_CACHE_SECONDS": 30,
    # Rate limits per API key and rate class ("N/second|minute|hour|day", the `limits` notation); counters in
    # Redis under REDIS_PREFIX. Storefront reads are high, exports and campaign creation low.
    "RATE_LIMIT_ENABLED": True,
    "RATE_LIMIT_RECS_READ": "2000/minute",
    "RATE_LIMIT_SEGMENTS_READ": "600/minute",
    "RATE_LIMIT_SEGMENTS_EXPORT": "20/minute",
    "RATE_LIMIT_CAMPAIGNS_READ": "600/minute",
    "RATE_LIMIT_CAMPAIGNS_CREATE": "20/minute",
    "RATE_LIMIT_CAMPAIGNS_EXPORT": "20/minute",
    "RATE_LIMIT_INGEST_WRITE": "600/minute",
    # The storefront sends feedback about as often as it reads recommendations.
    "RATE_LIMIT_FEEDBACK_WRITE": "2000/minute",
    "RATE_LIMIT_ANALYTICS_READ": "600/minute",
    "RATE_LIMIT_ADMIN": "120/minute",
    # Failed authentications (no, unknown or revoked key) per client address.
    "RATE_LIMIT_FAILED_AUTH": "30/minute",
    # Idempotency keys of campaign creation are scoped to the API key and remembered this long.
    "IDEMPOTENCY_KEY_TTL_HOURS": 24,
    # Demo.
    "DEMO_SEED": 7,
    # Business rules (the glossary's numbers; all configurable).
    "RFM_WINDOW_DAYS": 365,
    "RFM_SEGMENT_MAP": "rf_grid_v1",
    "TIER_DOWNGRADE_GRACE_DAYS": 30,
    "BUNDLE_MARGIN_FLOOR": 0.08,
    # Win-back campaigns.
    "CAMPAIGN_DEFAULT_HOLDOUT_FRACTION": 0.1,
    "CAMPAIGN_DEFAULT_FREQUENCY_CAP_DAYS": 14,
    "CAMPAIGN_DEFAULT_RECOMMENDATIONS": 5,
    "CAMPAIGN_DEFAULT_OFFER_DAYS": 14,
    "CAMPAIGN_BUILD_CHUNK": 5000,
    "CAMPAIGN_RECS_MGET_CHUNK": 1000,
    "CAMPAIGN_BUILD_TIME_LIMIT": 900,
    # Builds run one at a time (so frequency caps hold across campaigns); how long one waits for another.
    "CAMPAIGN_BUILD_LOCK_WAIT_SECONDS": 120.0,
    # Below these a report says the sample is too small to conclude anything.
    "CAMPAIGN_REPORT_MIN_MEMBERS": 30,
    "CAMPAIGN_REPORT_MIN_CONVERTERS": 5,
    # A fixed share of all customers that no campaign ever contacts (0.0: off); the salt picks which.
    "GLOBAL_CONTROL_FRACTION": 0.0,
    "GLOBAL_CONTROL_SALT": "segrec-global-control-v1",
    # Webhooks (the signing key is the environment variable WEBHOOK_SECRET, never a config value).
    # Webhooks go only to globally routable addresses (Python's ipaddress is_global, IPv4 forms inside IPv6
    # unwrapped); these networks are refused on top of that, and WEBHOOK_ALLOWED_NETWORKS (e.g. an
    # intranet CRM's 10.20.0.0/16) are let through despite it. Comma-separated CIDRs.
    "WEBHOOK_FORBIDDEN_NETWORKS": (
        "127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,0.0.0.0/8,::1/128,fc00::/7,fe80::/10"
    ),
    "WEBHOOK_ALLOWED_NETWORKS": "",
    "WEBHOOK_BATCH_SIZE": 500,
    "WEBHOOK_TIMEOUT_SECONDS": 10.0,
    "WEBHOOK_MAX_ATTEMPTS": 6,
    "WEBHOOK_RETRY_BACKOFF_SECONDS": 10.0,
    # Storefront feedback (POST /v1/feedback): events per request, and the Redis Stream's bound in entries
    # (one entry per accepted request); past it the endpoint answers 503 with Retry-After instead of growing.
    "MAX_FEEDBACK_EVENTS": 500,
    "FEEDBACK_STREAM_MAX_LENGTH": 100_000,
    "FEEDBACK_RETRY_AFTER_SECONDS": 5,
    # The served-answers log is trimmed (approximately) to this many entries if no consumer drains it.
    "SERVED_STREAM_MAX_LENGTH": 1_000_000,
    # A web worker sends served-answer records this many at a time, or after this long (1: one XADD per answer).
    "SERVED_LOG_BATCH": 32,
    "SERVED_LOG_FLUSH_SECONDS": 0.5,
    # The consumer: entries per read, reads per task run, beat interval, and how long an entry may stay
    # pending with a consumer before another consumer takes it over (a dead consumer's entries, XAUTOCLAIM).
    "FEEDBACK_CONSUMER_BATCH": 200,
    "FEEDBACK_CONSUMER_MAX_BATCHES": 50,
    "FEEDBACK_DRAIN_SECONDS": 5.0,
    "FEEDBACK_CLAIM_IDLE_SECONDS": 60.0,
    # A purchase is attributed to the last click on the same sku by the same customer within this window.
    "ATTRIBUTION_WINDOW_HOURS": 24,
    # Experiments: the default minimum detectable effect (absolute CTR difference) for the sample size.
    "EXPERIMENT_DEFAULT_MDE": 0.01,
    "EXPERIMENT_CACHE_SECONDS": 5.0,
    # The console (/console). Its session cookie is signed with SECRET_KEY; when unset, a random key is
    # generated once into VAR_DIR/console-secret-key (shared by the workers of one machine).
    "SECRET_KEY": "",
    "CONSOLE_SESSION_HOURS": 12,
    # "auto": the cookie is Secure when the request came over https; "true"/"false" force it.
    "CONSOLE_COOKIE_SECURE": "auto",
    "CONSOLE_PAGE_SIZE": 50,
    # Per-run aggregates (R x F grid, counts, transitions) are cached in Redis this long after first use.
    "CONSOLE_AGGREGATE_TTL_SECONDS": 30 * 86_400,
    "CONSOLE_LIVE_COUNT_TTL_SECONDS": 60,
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

"""Per-key rate limits (flask-limiter on the project's Redis) and a per-address budget for failed authentication.

Every endpoint that checks a scope belongs to a rate class (by default its scope's name); each class has
its own limit per API key, `RATE_LIMIT_<CLASS>` in the configuration (e.g. RATE_LIMIT_RECS_READ). The
counters live in Redis under `<REDIS_PREFIX>:ratelimit`, so every gunicorn worker and both services share them.
"""

from __future__ import annotations

import time

from flask import Flask, current_app, g, request
from flask_limiter import Limiter
from limits import parse as parse_limit

from shared.errors import DomainError

# The rate classes and the setting that holds each one's limit.
RATE_CLASSES = {
    "recs:read": "RATE_LIMIT_RECS_READ",
    "segments:read": "RATE_LIMIT_SEGMENTS_READ",
    "segments:export": "RATE_LIMIT_SEGMENTS_EXPORT",
    "campaigns:read": "RATE_LIMIT_CAMPAIGNS_READ",
    "campaigns:create": "RATE_LIMIT_CAMPAIGNS_CREATE",
    "campaigns:export": "RATE_LIMIT_CAMPAIGNS_EXPORT",
    "ingest:write": "RATE_LIMIT_INGEST_WRITE",
    "feedback:write": "RATE_LIMIT_FEEDBACK_WRITE",
    "analytics:read": "RATE_LIMIT_ANALYTICS_READ",
    "admin": "RATE_LIMIT_ADMIN",
}
EXTENSION = "segrec_limiter"


class RateLimited(DomainError):
    """Too many requests (failed authentications from one address); carries its Retry-After header."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, limit: int, reset_at: int) -> None:
        super().__init__(message, {"retry_after_seconds": retry_after})
        # The same headers flask-limiter sends on the per-key limits (RateLimit-Reset in epoch seconds).
        self.headers = {"Retry-After": str(retry_after), "RateLimit-Limit": str(limit),
                        "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset_at)}


def _principal_key() -> str:
    """The rate-limit identity: the API key's id (the check runs after authentication)."""
    principal = g.get("principal")
    return f"key:{principal.key_id}" if principal is not None else f"addr:{request.remote_addr}"


def _retry_after_only_on_429(response):
    """Keep flask-limiter's Retry-After on a 429 only; a 503 keeps the Retry-After its error set."""
    own = g.get("retry_after")
    if own is not None:
        response.headers["Retry-After"] = own
    elif response.status_code != 429:
        response.headers.pop("Retry-After", None)
    return response


def register_rate_limits(app: Flask) -> None:
    """A Limiter of this app's own, storing counters in the configured Redis under REDIS_PREFIX."""
    config = app.config
    config.setdefault("RATELIMIT_ENABLED", bool(config["RATE_LIMIT_ENABLED"]))
    config.setdefault("RATELIMIT_STORAGE_URI", config["REDIS_URL"])
    config.setdefault("RATELIMIT_KEY_PREFIX", f"{config['REDIS_PREFIX']}:ratelimit")
    config.setdefault("RATELIMIT_STRATEGY", "fixed-window")
    config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    config.setdefault("RATELIMIT_HEADER_LIMIT", "RateLimit-Limit")
    config.setdefault("RATELIMIT_HEADER_REMAINING", "RateLimit-Remaining")
    config.setdefault("RATELIMIT_HEADER_RESET", "RateLimit-Reset")
    # A Redis outage must not take the APIs down with it: limits are then not enforced (and logged).
    config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    # Registered before the limiter's own hook, so it runs after it: flask-limiter sets Retry-After on
    # every limited answer, but it only means something on a 429.
    app.after_request(_retry_after_only_on_429)
    limiter = Limiter(key_func=_principal_key)
    limiter.init_app(app)
    app.extensions[EXTENSION] = {"limiter": limiter, "views": {}}


def rate_limited_view(view, rate_class: str):
    """`view` wrapped in the per-key limit of `rate_class` for the current app (built once per app and view)."""
    state = current_app.extensions.get(EXTENSION)
    if state is None or not current_app.config.get("RATELIMIT_ENABLED", True):
        return view
    cache_key = (view, rate_class)
    wrapped = state["views"].get(cache_key)
    if wrapped is None:
        setting = RATE_CLASSES[rate_class]
        wrapped = state["limiter"].shared_limit(
            lambda: current_app.config[setting], scope=f"class:{rate_class}", key_func=_principal_key
        )(view)
        state["views"][cache_key] = wrapped
    return wrapped


def _failed_auth_budget():
    """(storage strategy, limit item, identifiers) for the failed-authentication budget of this address."""
    state = current_app.extensions.get(EXTENSION)
    if state is None or not current_app.config.get("RATELIMIT_ENABLED", True):
        return None
    item = parse_limit(current_app.config["RATE_LIMIT_FAILED_AUTH"])
    identifiers = (current_app.config["RATELIMIT_KEY_PREFIX"], "failed-auth", request.remote_addr or "unknown")
    return state["limiter"].limiter, item, identifiers


def _raise_rate_limited(strategy, item, identifiers) -> None:
    reset_at, _remaining = strategy.get_window_stats(item, *identifiers)
    retry_after = max(1, int(reset_at - time.time() + 0.999))
    raise RateLimited(
        f"too many failed authentications from this address; retry after {retry_after} s",
        retry_after, item.amount, int(reset_at),
    )


def check_failed_auth_budget() -> None:
    """Raise RateLimited when this address has used up its failed-authentication budget."""
    budget = _failed_auth_budget()
    if budget is None:
        return
    strategy, item, identifiers = budget
    try:
        exhausted = not strategy.test(item, *identifiers)
    except Exception:  # storage down: authentication still works, unthrottled
        current_app.logger.warning("rate-limit storage unreachable; failed-auth budget not checked")
        return
    if exhausted:
        _raise_rate_limited(strategy, item, identifiers)


def count_failed_auth() -> None:
    """Spend one unit of this address's failed-authentication budget; raise RateLimited when it runs out."""
    budget = _failed_auth_budget()
    if budget is None:
        return
    strategy, item, identifiers = budget
    try:
        allowed = strategy.hit(item, *identifiers)
    except Exception:
        current_app.logger.warning("rate-limit storage unreachable; failed authentication not counted")
        return
    if not allowed:
        _raise_rate_limited(strategy, item, identifiers)

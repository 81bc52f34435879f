"""Per-key rate limits and a per-address budget for failed authentication, counted in the project's Redis.

Every endpoint that checks a scope belongs to a rate class (by default its scope's name); each class has
its own limit per API key, `RATE_LIMIT_<CLASS>` in the configuration (e.g. RATE_LIMIT_RECS_READ), in the
`limits` notation ("2000/minute", several separated by ";"). The counters are fixed windows that start at a
key's first request (what flask-limiter's default strategy counted), under `<REDIS_PREFIX>:ratelimit`, so
every gunicorn worker and both services share them.

A request costs one Redis round trip: a Lua script checks the address's failed-authentication budget and
counts the request against each of the key's windows. flask-limiter, which this replaces, asked Redis four
times per request (budget, hit, and two reads for the headers): under load that was most of a cached
answer's time. If Redis is unreachable the limits are not enforced (logged) rather than failing requests.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from flask import Flask, current_app, g, request
from limits import parse_many

from shared.errors import DomainError
from shared.extensions import redis_store

log = logging.getLogger("segrec.ratelimit")

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
EXTENSION = "segrec_rate_limits"

# KEYS[1] the address's failed-authentication counter, KEYS[2..] the key's window counters;
# ARGV[1] the address's budget, ARGV[2..] each window's length in ms.
# Returns {1, ms left} when the address is blocked (nothing counted), else {0, 0, count, ms left, ...}.
_CHECK_AND_COUNT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return {1, redis.call('PTTL', KEYS[1])}
end
local out = {0, 0}
for i = 2, #KEYS do
  local count = redis.call('INCR', KEYS[i])
  local left = redis.call('PTTL', KEYS[i])
  if left < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[i])
    left = tonumber(ARGV[i])
  end
  out[#out + 1] = count
  out[#out + 1] = left
end
return out
"""
# KEYS[1] the address's failed-authentication counter; ARGV[1] its window in ms. Returns {count, ms left}.
_COUNT_FAILURE = """
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""


class RateLimited(DomainError):
    """Too many requests (a key's budget, or failed authentications from one address); carries its headers."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, limit: int, reset_at: int) -> None:
        super().__init__(message, {"retry_after_seconds": retry_after})
        self.headers = {"Retry-After": str(retry_after), "RateLimit-Limit": str(limit),
                        "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset_at)}


@dataclass(frozen=True)
class Window:
    """One limit: `amount` requests per `seconds`, named as the `limits` notation prints it."""

    amount: int
    seconds: int
    label: str


def parse_windows(text: str) -> tuple[Window, ...]:
    """'2000/minute;50/second' -> its windows (the `limits` notation)."""
    return tuple(Window(item.amount, item.get_expiry(), str(item)) for item in parse_many(text))


def _seconds_left(milliseconds: int) -> int:
    return max(1, math.ceil(milliseconds / 1000))


class RateLimiter:
    """The per-key windows and the failed-authentication budget of one app (one Lua call per request)."""

    def __init__(self, config) -> None:
        self.config = config
        self.prefix = f"{config['REDIS_PREFIX']}:ratelimit"
        self._windows: dict[str, tuple[Window, ...]] = {}
        self._scripts: dict[str, object] = {}
        self._client = None

    def windows(self, setting: str) -> tuple[Window, ...]:
        """The parsed limit of a setting (parsed once per text, so a changed setting takes effect)."""
        text = self.config[setting]
        cache_key = f"{setting}={text}"
        if cache_key not in self._windows:
            self._windows[cache_key] = parse_windows(text)
        return self._windows[cache_key]

    def _script(self, name: str, source: str):
        client = redis_store.client
        if self._client is not client:
            self._scripts, self._client = {}, client
        if name not in self._scripts:
            self._scripts[name] = client.register_script(source)
        return self._scripts[name]

    def _address_key(self) -> tuple[str, Window]:
        budget = self.windows("RATE_LIMIT_FAILED_AUTH")[0]
        address = request.remote_addr or "unknown"
        return f"{self.prefix}:failed-auth:{address}:{budget.label}", budget

    def check(self, key_id: int | None, rate_class: str | None) -> None:
        """Refuse a blocked address, and count the request against the key's windows of `rate_class`.

        With `rate_class` None only the address is checked. Raises RateLimited; on success the key's
        RateLimit-* headers are kept for the answer.
        """
        address_key, budget = self._address_key()
        windows = self.windows(RATE_CLASSES[rate_class]) if rate_class else ()
        keys = [address_key] + [f"{self.prefix}:class:{rate_class}:key:{key_id}:{window.label}" for window in windows]
        try:
            result = self._script("check", _CHECK_AND_COUNT)(
                keys=keys, args=[budget.amount] + [window.seconds * 1000 for window in windows])
        except Exception as error:  # storage down: requests are served, unthrottled
            log.warning("rate-limit storage unreachable; request not counted: %s", error)
            return
        if result[0] == 1:
            self._refuse_address(budget, int(result[1]))
        self._apply_windows(windows, result[2:], rate_class)

    def _apply_windows(self, windows: tuple[Window, ...], counts: list, rate_class: str) -> None:
        """Raise RateLimited for a spent window; else keep the headers of the window with least left."""
        now = time.time()
        tightest = None
        for window, count, left_ms in zip(windows, counts[0::2], counts[1::2]):
            remaining = window.amount - int(count)
            retry_after = _seconds_left(int(left_ms))
            if remaining < 0:
                raise RateLimited(
                    f"this key's limit of {window.label} for '{rate_class}' requests is spent; "
                    f"retry after {retry_after} s", retry_after, window.amount, int(now + retry_after))
            if tightest is None or remaining < tightest[1]:
                tightest = (window.amount, remaining, int(now + retry_after))
        if tightest is not None:
            g.rate_limit_headers = {"RateLimit-Limit": str(tightest[0]), "RateLimit-Remaining": str(tightest[1]),
                                    "RateLimit-Reset": str(tightest[2])}

    def _refuse_address(self, budget: Window, left_ms: int) -> None:
        retry_after = _seconds_left(left_ms)
        raise RateLimited(f"too many failed authentications from this address; retry after {retry_after} s",
                          retry_after, budget.amount, int(time.time() + retry_after))

    def count_failure(self) -> None:
        """Spend one unit of this address's failed-authentication budget; raise RateLimited when it runs out."""
        address_key, budget = self._address_key()
        try:
            count, left_ms = self._script("failure", _COUNT_FAILURE)(
                keys=[address_key], args=[budget.seconds * 1000])
        except Exception as error:
            log.warning("rate-limit storage unreachable; failed authentication not counted: %s", error)
            return
        if int(count) > budget.amount:
            self._refuse_address(budget, int(left_ms))


def _limiter() -> RateLimiter | None:
    limiter = current_app.extensions.get(EXTENSION)
    if limiter is None or not current_app.config.get("RATE_LIMIT_ENABLED", True):
        return None
    return limiter


def check_rate_limits(key_id: int | None, rate_class: str | None) -> None:
    """Refuse a blocked address and count the request against the key's `rate_class` budget (see RateLimiter)."""
    limiter = _limiter()
    if limiter is not None:
        limiter.check(key_id, rate_class)


def check_failed_auth_budget() -> None:
    """Raise RateLimited when this address has used up its failed-authentication budget."""
    check_rate_limits(None, None)


def count_failed_auth() -> None:
    """Spend one unit of this address's failed-authentication budget; raise RateLimited when it runs out."""
    limiter = _limiter()
    if limiter is not None:
        limiter.count_failure()


def _send_rate_limit_headers(response):
    """The key's RateLimit-* headers on every answer its budget was counted for (a 429 carries its own)."""
    headers = g.get("rate_limit_headers")
    if headers and response.status_code != 429:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
    return response


def register_rate_limits(app: Flask) -> None:
    """A RateLimiter of this app's own, counting in the configured Redis under REDIS_PREFIX."""
    app.extensions[EXTENSION] = RateLimiter(app.config)
    app.after_request(_send_rate_limit_headers)

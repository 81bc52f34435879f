"""Per-key rate limits and a per-address budget for failed authentication, counted in the project's Redis.

Every endpoint that checks a scope belongs to a rate class (by default its scope's name); each class has
its own limit per API key, `RATE_LIMIT_<CLASS>` in the configuration (e.g. RATE_LIMIT_RECS_READ), in the
`limits` notation ("2000/minute", several separated by ";"). The counters are fixed windows that start at a
key's first request (what flask-limiter's default strategy counted), under `<REDIS_PREFIX>:ratelimit`, so
every gunicorn worker and both services share them.

flask-limiter, which this replaces, asked Redis four times per request (budget, hit, and two reads for
the headers); under load each round trip is a scheduling wait, and that was most of a cached answer's time.
Here a Lua script checks the address's failed-authentication budget and counts against each of the key's
windows in one round trip, and a busy key's requests are counted in *leases*: the script adds several
requests to the shared counter at once and the worker hands them out locally. A lease is never more than
granted by the shared counter (so a key never gets more than its limit across workers), lasts at most
LEASE_SECONDS, grows only while it is used up (up to LEASE_MAX) and shrinks to single requests as the
window nears its limit; a worker returns its unused requests when it renews. The address's budget is
checked at every lease, so a valid key from an address whose budget was just spent elsewhere is refused
within LEASE_SECONDS (at once in the worker that counted the failure; wrong keys are refused at once
everywhere). If Redis is unreachable the limits are not enforced (logged) rather than failing requests.
"""

from __future__ import annotations

import logging
import math
import threading
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
# A lease of requests lasts at most this long and holds at most this many (see the module docstring).
LEASE_SECONDS = 1.0
LEASE_MAX = 32
# Near its limit a window's lease is at most this fraction of what is left: it shrinks to one request.
LEASE_SHARE_OF_REMAINING = 8

# KEYS[1] the address's failed-authentication counter, KEYS[2..] the key's window counters;
# ARGV[1] the address's budget, then per window its length in ms and the requests to add (a new lease
# less the unused part of the last one). Returns {1, ms left} when the address is blocked (nothing
# counted), else {0, 0, count, ms left, ...} per window.
_CHECK_AND_COUNT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
  return {1, redis.call('PTTL', KEYS[1])}
end
local out = {0, 0}
for i = 2, #KEYS do
  local count = redis.call('INCRBY', KEYS[i], ARGV[2 * i - 1])
  local left = redis.call('PTTL', KEYS[i])
  if left < 0 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i - 2])
    left = tonumber(ARGV[2 * i - 2])
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


class Lease:
    """Requests of one key's window counted in Redis ahead of use, handed out by this worker."""

    __slots__ = ("size", "tokens", "used", "count", "expires", "window_ends")

    def __init__(self) -> None:
        self.size = 1
        self.tokens = 0
        self.used = 0
        self.count = 0
        self.expires = 0.0
        self.window_ends = 0.0

    def take(self, now: float) -> bool:
        """One request from the lease, if it has one and is still valid."""
        if self.tokens > 0 and now < self.expires:
            self.tokens -= 1
            self.used += 1
            return True
        return False

    def renewal(self, window: Window, now: float) -> tuple[int, int]:
        """(new lease size, requests to add to the shared counter: the lease less the last one's unused part)."""
        grown = self.size * 2 if self.used >= self.size else self.used
        size = max(1, min(LEASE_MAX, grown, (window.amount - self.count) // LEASE_SHARE_OF_REMAINING))
        unused = self.tokens if now < self.window_ends else 0
        # Handed back now: a concurrent renewal (threaded workers) must not return them a second time.
        self.tokens = 0
        return size, size - unused

    def renew(self, window: Window, size: int, count: int, left_ms: int, now: float) -> bool:
        """Record what the shared counter granted; False when it granted nothing (the window is spent)."""
        granted = max(0, min(size, window.amount - (count - size)))
        self.size, self.count = size, count
        self.window_ends = now + left_ms / 1000
        self.expires = min(now + LEASE_SECONDS, self.window_ends)
        self.tokens = max(granted - 1, 0)
        self.used = 1 if granted else 0
        return granted > 0

    def remaining(self, window: Window) -> int:
        """Requests left in the window as far as this worker knows (its own unused lease included)."""
        return max(0, min(window.amount, window.amount - self.count + self.tokens))


class RateLimiter:
    """The per-key windows and the failed-authentication budget of one app (at most one Lua call per request)."""

    def __init__(self, config) -> None:
        self.config = config
        self.prefix = f"{config['REDIS_PREFIX']}:ratelimit"
        self._windows: dict[str, tuple[Window, ...]] = {}
        self._scripts: dict[str, object] = {}
        self._client = None
        self._leases: dict[tuple, Lease] = {}
        self._blocked: dict[str, float] = {}
        self._lock = threading.Lock()

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
        address = request._get_current_object().remote_addr or "unknown"
        return f"{self.prefix}:failed-auth:{address}:{budget.label}", budget

    def check(self, key_id: int | None, rate_class: str | None) -> None:
        """Refuse a blocked address, and count the request against the key's windows of `rate_class`.

        With `rate_class` None only the address is checked. Raises RateLimited; on success the key's
        RateLimit-* headers are kept for the answer.
        """
        now = time.monotonic()
        address_key, budget = self._address_key()
        blocked_until = self._blocked.get(address_key)
        if blocked_until is not None and now < blocked_until:
            self._refuse_address(budget, int((blocked_until - now) * 1000))
        windows = self.windows(RATE_CLASSES[rate_class]) if rate_class else ()
        leases = [self._lease(key_id, rate_class, window) for window in windows]
        with self._lock:
            if leases and all(lease.tokens > 0 and now < lease.expires for lease in leases):
                for lease in leases:
                    lease.take(now)
                self._keep_headers(windows, leases)
                return
            renewals = [lease.renewal(window, now) for lease, window in zip(leases, windows)]
        keys = [address_key] + [f"{self.prefix}:class:{rate_class}:key:{key_id}:{window.label}" for window in windows]
        args = [budget.amount]
        for window, (_size, added) in zip(windows, renewals):
            args += [window.seconds * 1000, added]
        try:
            result = self._script("check", _CHECK_AND_COUNT)(keys=keys, args=args)
        except Exception as error:  # storage down: requests are served, unthrottled
            log.warning("rate-limit storage unreachable; request not counted: %s", error)
            return
        if result[0] == 1:
            self._refuse_address(budget, int(result[1]))
        self._apply_windows(windows, leases, renewals, result[2:], rate_class)

    def _lease(self, key_id: int | None, rate_class: str, window: Window) -> Lease:
        lease = self._leases.get((key_id, rate_class, window.label))
        if lease is None:
            if len(self._leases) > 10_000:  # keys come and go: forget them all rather than grow
                self._leases.clear()
            lease = self._leases.setdefault((key_id, rate_class, window.label), Lease())
        return lease

    def _apply_windows(self, windows, leases, renewals, counts: list, rate_class: str) -> None:
        """Record the renewed leases; raise RateLimited for a spent window, else keep the answer's headers."""
        now = time.monotonic()
        spent = None
        with self._lock:
            for window, lease, (size, _added), count, left_ms in zip(windows, leases, renewals, counts[0::2],
                                                                      counts[1::2]):
                if not lease.renew(window, size, int(count), int(left_ms), now) and spent is None:
                    spent = (window, _seconds_left(int(left_ms)))
        if spent is not None:
            window, retry_after = spent
            raise RateLimited(
                f"this key's limit of {window.label} for '{rate_class}' requests is spent; "
                f"retry after {retry_after} s", retry_after, window.amount, int(time.time() + retry_after))
        self._keep_headers(windows, leases)

    def _keep_headers(self, windows, leases) -> None:
        """The RateLimit-* headers of the window with the fewest requests left."""
        if not windows:
            return
        now = time.monotonic()
        tightest = min(zip(windows, leases), key=lambda pair: pair[1].remaining(pair[0]))
        window, lease = tightest
        reset_at = int(time.time() + max(1.0, lease.window_ends - now) + 0.999)
        g._get_current_object().rate_limit_headers = {
            "RateLimit-Limit": str(window.amount),
            "RateLimit-Remaining": str(lease.remaining(window)),
            "RateLimit-Reset": str(reset_at),
        }

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
            self._blocked[address_key] = time.monotonic() + int(left_ms) / 1000
            if len(self._blocked) > 10_000:
                self._blocked.clear()
            self._refuse_address(budget, int(left_ms))


def _limiter() -> RateLimiter | None:
    app = current_app._get_current_object()
    limiter = app.extensions.get(EXTENSION)
    if limiter is None or not app.config.get("RATE_LIMIT_ENABLED", True):
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
    headers = getattr(g._get_current_object(), "rate_limit_headers", None)
    if headers and response.status_code != 429:
        # setdefault, with one pass over the answer's headers instead of two per name (Headers.setdefault
        # scans them to look and again to set): 8 to 2 us a request.
        present = {name.lower() for name in response.headers.keys()}
        for name, value in headers.items():
            if name.lower() not in present:
                response.headers.add(name, value)
    return response


def register_rate_limits(app: Flask) -> None:
    """A RateLimiter of this app's own, counting in the configured Redis under REDIS_PREFIX."""
    app.extensions[EXTENSION] = RateLimiter(app.config)
    app.after_request(_send_rate_limit_headers)

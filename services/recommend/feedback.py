"""The fast path of storefront feedback: validated events and served answers are appended to Redis Streams.

POST /v1/feedback appends one stream entry per request (the request's accepted events as one JSON
array) and answers 202; serving logs a record per answer (recommendation_id, surface, model version,
variant), and each web worker appends its records in batches, one stream entry per batch (ServedLog). A Celery
consumer group (services/pipeline/feedback.py) drains both into the database. Nothing here touches the
database: a feedback request costs one Redis round trip, a served answer a share of one.

The feedback stream is bounded: entries are deleted once the consumer has committed them, so its
length is what is still to be stored; past FEEDBACK_STREAM_MAX_LENGTH a Lua script refuses the append
(atomically with the length check) and the endpoint answers 503 with Retry-After.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import os
import threading
import time
from datetime import datetime

import orjson
import redis

from shared.errors import DomainError
from shared.extensions import redis_store, reply_text
from shared.ingest import utcnow

log = logging.getLogger("segrec.feedback")

FEEDBACK_STREAM = ("feedback", "events")
SERVED_STREAM = ("feedback", "served")
CONSUMER_GROUP = "segrec-feedback"
EVENT_TYPES = ("impression", "click", "add_to_cart")
SURFACES = ("bought_together", "bundles", "cart", "for_you", "campaign")

# KEYS[1] the stream; ARGV[1] the bound, ARGV[2] the payload. Returns the entry id, or false when full.
_APPEND_IF_ROOM = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return false
end
return redis.call('XADD', KEYS[1], '*', 'events', ARGV[2])
"""


class FeedbackBacklog(DomainError):
    """The feedback stream is full: the storefront should retry after a few seconds (503 with Retry-After)."""

    status = 503
    code = "feedback_backlog"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("feedback is arriving faster than it is stored; retry after a few seconds",
                         {"retry_after_seconds": int(retry_after_seconds)})
        self.headers = {"Retry-After": str(int(retry_after_seconds))}


class StreamFull(Exception):
    """The feedback stream holds FEEDBACK_STREAM_MAX_LENGTH entries not yet stored: try again later."""


def stream_key(stream: tuple[str, str]) -> str:
    """The Redis key of a stream under the configured prefix."""
    return redis_store.key(*stream)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# What an event carries besides its time, as the stream holds it and as feedback_events stores it.
EVENT_FIELDS = ("event_id", "type", "recommendation_id", "customer_id", "session_id", "sku", "skus")


def event_payload(event: dict) -> dict:
    """A validated event as the stream carries it (times as ISO 8601 UTC strings)."""
    payload = {name: event.get(name) for name in EVENT_FIELDS}
    payload["occurred_at"] = _iso(event["occurred_at"])
    return payload


class FeedbackWriter:
    """Appends accepted events to the feedback stream (one entry per request)."""

    SCRIPT_SHA = hashlib.sha1(_APPEND_IF_ROOM.encode()).hexdigest()

    def append(self, events: list[dict], max_length: int, payload: bytes | None = None) -> str:
        """Append the events as one entry (`payload`: already encoded); raises StreamFull at the bound."""
        if payload is None:
            payload = orjson.dumps([event_payload(event) for event in events])
        arguments = (1, stream_key(FEEDBACK_STREAM), max_length, payload)
        # One command on the worker's own connection (RedisStore.command); the script is sent in full
        # only the first time a Redis server sees it.
        try:
            entry_id = redis_store.command("EVALSHA", self.SCRIPT_SHA, *arguments)
        except redis.exceptions.NoScriptError:
            entry_id = redis_store.command("EVAL", _APPEND_IF_ROOM, *arguments)
        if entry_id is None:
            raise StreamFull()
        return reply_text(entry_id)


# The served stream's field names: a batch of records as one JSON array, and the one record per entry
# that workers before the batched form wrote (still read, for entries left from before an upgrade).
SERVED_BATCH_FIELD = "served_batch"
SERVED_RECORD_FIELD = "served"


def served_records(fields: dict) -> list[dict]:
    """The served-answer records of one served-stream entry, in either form."""
    batch = fields.get(SERVED_BATCH_FIELD.encode())
    if batch is not None:
        return orjson.loads(batch)
    return [orjson.loads(fields[SERVED_RECORD_FIELD.encode()])]


def served_record(answer: dict, surface: str, served: ServedContext) -> bytes:
    """The served-log entry of an answer."""
    return orjson.dumps({
        "recommendation_id": answer["recommendation_id"],
        "surface": surface,
        "model_version": answer.get("model_version"),
        "variant": served.variant,
        "experiment_id": served.experiment_id,
        "customer_id": served.customer_id,
        "session_id": served.session_id,
        "served_at": utcnow().isoformat(),
    })


class ServedLog:
    """Buffers served-answer records and appends each batch to the served stream as one entry.

    A Redis round trip per answer cost about a third of a bought-together request in the profile, so a
    web worker sends its records `batch` at a time, as one XADD of one JSON array (one XADD per record
    in a pipeline still cost ~7 % of a request), and a background thread sends what waits longer than
    `flush_seconds`. What a worker killed with SIGKILL still held (at most `batch`
    records, under a second) is lost; their feedback then counts under surface "unknown". A Redis error
    never fails a request: the batch is dropped and logged.
    """

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._lock = threading.Lock()
        self._owner_pid: int | None = None
        self._settings = (1, 0.5, 1_000_000)

    def configure(self, batch: int, flush_seconds: float, max_length: int) -> None:
        """Settings of the current app (called per request: cheap)."""
        self._settings = (batch, flush_seconds, max_length)

    def append(self, record: bytes) -> None:
        """Queue a record; send the queue when it is full."""
        batch, flush_seconds, _max_length = self._settings
        if self._owner_pid != os.getpid():
            self._start_flusher(flush_seconds)
        with self._lock:
            self._pending.append(record)
            if len(self._pending) < batch:
                return
            records, self._pending = self._pending, []
        self._send(records)

    def flush(self) -> None:
        """Send whatever waits (the background thread, process exit, tests)."""
        with self._lock:
            records, self._pending = self._pending, []
        if records:
            self._send(records)

    def _send(self, records: list[bytes]) -> None:
        batch, _flush_seconds, max_length = self._settings
        # The bound counts answers; the stream's length counts batches of up to `batch` answers.
        max_entries = max(1, math.ceil(max_length / max(1, batch)))
        payload = b"[" + b",".join(records) + b"]"
        try:
            redis_store.command("XADD", stream_key(SERVED_STREAM), "MAXLEN", "~", max_entries, "*",
                                SERVED_BATCH_FIELD, payload)
        except redis.RedisError as error:
            log.warning("served answers not logged: %s", error, extra={"records": len(records)})

    def _start_flusher(self, flush_seconds: float) -> None:
        # A forked gunicorn worker does not inherit the parent's thread: each process starts its own.
        with self._lock:
            if self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()
            self._pending = []
        thread = threading.Thread(target=self._flush_forever, args=(flush_seconds,), name="served-log",
                                  daemon=True)
        thread.start()
        atexit.register(self.flush)

    def _flush_forever(self, flush_seconds: float) -> None:
        while True:
            time.sleep(flush_seconds)
            try:
                self.flush()
            except Exception as error:  # the flusher must outlive any one failure
                log.warning("served log flush failed: %s", error)


served_log = ServedLog()


class ServedContext:
    """Who an answer was served to and under which experiment variant."""

    __slots__ = ("customer_id", "session_id", "variant", "experiment_id")

    def __init__(self, customer_id: str | None = None, session_id: str | None = None, variant: str = "current",
                 experiment_id: str | None = None) -> None:
        self.customer_id = customer_id
        self.session_id = session_id
        self.variant = variant
        self.experiment_id = experiment_id

    @property
    def unit(self) -> str | None:
        """The id experiments assign by: the customer, else the session."""
        return self.customer_id or self.session_id

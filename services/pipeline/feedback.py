"""The consumer of the feedback and served-answer streams: drains them in batches into the database.

Delivery is at least once: entries are read through a consumer group, written in one transaction with
INSERT ... ON CONFLICT DO NOTHING (feedback by event_id, served answers by recommendation_id), and only
then acknowledged and deleted. A consumer that dies between reading and acknowledging leaves its
entries pending; any consumer takes them over with XAUTOCLAIM once they have been idle for
FEEDBACK_CLAIM_IDLE_SECONDS, and writing them again stores nothing twice.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone

import orjson
import redis
from sqlalchemy.dialects import postgresql, sqlite

from services.recommend.feedback import (
    CONSUMER_GROUP,
    EVENT_FIELDS,
    FEEDBACK_STREAM,
    SERVED_STREAM,
    served_records,
    stream_key,
)
from shared.extensions import db, redis_store
from shared.ingest import utcnow
from shared.models import FeedbackEvent, ServedRecommendation

log = logging.getLogger("segrec.feedback")


def consumer_name() -> str:
    """This process's name in the consumer group (a restarted process is a new consumer)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(client: redis.Redis, key: str) -> None:
    """Create the consumer group (and the stream) if missing."""
    try:
        client.xgroup_create(key, CONSUMER_GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _naive_utc(text: str | None) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def feedback_rows(fields: dict, received_at: datetime) -> list[dict]:
    """The feedback_events rows of one stream entry (one POST's events)."""
    rows = []
    for event in orjson.loads(fields[b"events"]):
        row = {name: event.get(name) for name in EVENT_FIELDS}
        row["occurred_at"] = _naive_utc(event["occurred_at"])
        row["received_at"] = received_at
        rows.append(row)
    return rows


def served_rows(fields: dict, _received_at: datetime) -> list[dict]:
    """The served_recommendations rows of one stream entry (a web worker's batch, or one older record)."""
    records = served_records(fields)
    for record in records:
        record["served_at"] = _naive_utc(record["served_at"])
        record["variant"] = record.get("variant") or "current"
    return records


# stream -> (table, unique key, entry parser)
TARGETS = {
    FEEDBACK_STREAM: (FeedbackEvent, "event_id", feedback_rows),
    SERVED_STREAM: (ServedRecommendation, "recommendation_id", served_rows),
}


def insert_ignoring_duplicates(session, model, key: str, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT (key) DO NOTHING, on PostgreSQL and SQLite alike."""
    unique: dict[str, dict] = {}
    for row in rows:
        unique.setdefault(row[key], row)
    if not unique:
        return
    dialect = postgresql if db.dialect == "postgresql" else sqlite
    statement = dialect.insert(model).on_conflict_do_nothing(index_elements=[key])
    session.execute(statement, list(unique.values()))


def store_entries(client: redis.Redis, stream: tuple[str, str], entries: list) -> int:
    """Write a batch of entries in one transaction, then acknowledge and delete them; returns rows written."""
    model, key, parse = TARGETS[stream]
    received_at = utcnow()
    rows: list[dict] = []
    entry_ids = []
    for entry_id, fields in entries:
        entry_ids.append(entry_id)
        if not fields:  # deleted while pending: nothing left to store
            continue
        try:
            rows.extend(parse(fields, received_at))
        except (KeyError, ValueError, TypeError) as error:  # cannot be stored, ever: log it and drop it
            log.error("unreadable stream entry dropped", extra={"stream": stream[1], "entry": str(entry_id),
                                                                "error": f"{type(error).__name__}: {error}"})
    with db.session() as session:
        insert_ignoring_duplicates(session, model, key, rows)
    # Acknowledged only after the commit: a crash before this line leaves the entries pending.
    stream_name = stream_key(stream)
    pipe = client.pipeline(transaction=False)
    pipe.xack(stream_name, CONSUMER_GROUP, *entry_ids)
    pipe.xdel(stream_name, *entry_ids)
    pipe.execute()
    return len(rows)


def drain_stream(stream: tuple[str, str], config: dict, consumer: str) -> dict:
    """Take over idle pending entries, then read new ones, batch by batch, up to the configured number of batches."""
    client = redis_store.client
    name = stream_key(stream)
    ensure_group(client, name)
    batch = config["FEEDBACK_CONSUMER_BATCH"]
    budget = config["FEEDBACK_CONSUMER_MAX_BATCHES"]
    idle_ms = int(config["FEEDBACK_CLAIM_IDLE_SECONDS"] * 1000)
    counts = {"rows": 0, "entries": 0, "reclaimed": 0}
    start = "0-0"
    while budget > 0:
        start, claimed, _deleted = client.xautoclaim(name, CONSUMER_GROUP, consumer, idle_ms, start, count=batch)
        budget -= 1
        if claimed:
            counts["reclaimed"] += len(claimed)
            counts["entries"] += len(claimed)
            counts["rows"] += store_entries(client, stream, claimed)
        if start in (b"0-0", "0-0"):
            break
    while budget > 0:
        answer = client.xreadgroup(CONSUMER_GROUP, consumer, {name: ">"}, count=batch)
        budget -= 1
        entries = answer[0][1] if answer else []
        if not entries:
            break
        counts["entries"] += len(entries)
        counts["rows"] += store_entries(client, stream, entries)
    return counts


def drain(config: dict, consumer: str | None = None) -> dict:
    """Drain both streams once; returns what was stored, per stream."""
    consumer = consumer or consumer_name()
    result = {stream[1]: drain_stream(stream, config, consumer) for stream in (SERVED_STREAM, FEEDBACK_STREAM)}
    if any(counts["entries"] for counts in result.values()):
        log.info("feedback drained", extra={"consumer": consumer, **{f"{name}_{key}": value
                                                                      for name, counts in result.items()
                                                                      for key, value in counts.items()}})
    return result

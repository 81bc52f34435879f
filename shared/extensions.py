"""Extensions created unbound at import time and bound to a configuration later.

Flask apps, Celery workers and the command line share them, so nothing here imports Flask.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import redis
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config import DEFAULTS

DEFAULT_SHOP_TIMEZONE = str(DEFAULTS["SHOP_TIMEZONE"])


class NotConfigured(RuntimeError):
    """An extension was used before `configure` bound it."""


def _shop_day(stored: str | None, zone_name: str) -> str | None:
    """The shop-local calendar day ('YYYY-MM-DD') of a naive UTC time as SQLite stores it."""
    if stored is None:
        return None
    # Zone offsets are whole minutes: the day depends only on the date, hour and minute.
    key = (stored[:16], zone_name)
    day = _SHOP_DAYS.get(key)
    if day is None:
        utc = datetime.fromisoformat(stored[:16]).replace(tzinfo=timezone.utc)
        day = utc.astimezone(ZoneInfo(zone_name)).date().isoformat()
        if len(_SHOP_DAYS) > 100_000:
            _SHOP_DAYS.clear()
        _SHOP_DAYS[key] = day
    return day


_SHOP_DAYS: dict[tuple[str, str], str] = {}


def _sqlite_pragmas(dbapi_connection, _record):
    # WAL lets the API read while a worker writes; the busy timeout waits for a writer instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLite has no time zones: shop_day(placed_at, zone) gives the shop-local day (shared.ingest.shop_day).
    dbapi_connection.create_function("shop_day", 2, _shop_day, deterministic=True)


class Database:
    """Holds one SQLAlchemy engine and session factory per process."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._sessions: sessionmaker | None = None
        self.url: str | None = None
        self.shop_timezone = DEFAULT_SHOP_TIMEZONE

    def configure(self, url: str, shop_timezone: str | None = None) -> Database:
        """Bind to a database URL (idempotent for the same URL and zone).

        Sessions carry the shop's time zone in `session.info["shop_timezone"]`: SQL that counts
        calendar days (shared.ingest.shop_day) counts them in that zone.
        """
        shop_timezone = shop_timezone or DEFAULT_SHOP_TIMEZONE
        if self._engine is not None and self.url == url and self.shop_timezone == shop_timezone:
            return self
        self.dispose()
        kwargs: dict = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800)
        engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        self._engine = engine
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False, info={"shop_timezone": shop_timezone})
        self.url = url
        self.shop_timezone = shop_timezone
        return self

    def init_app(self, app) -> None:
        """Bind to a Flask app's DATABASE_URL."""
        self.configure(app.config["DATABASE_URL"], app.config.get("SHOP_TIMEZONE"))
        app.extensions["segrec_db"] = self

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise NotConfigured("database is not configured")
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        if self._sessions is None:
            raise NotConfigured("database is not configured")
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def open_session(self) -> Session:
        """A session the caller closes itself (for responses that stream after the view returns)."""
        if self._sessions is None:
            raise NotConfigured("database is not configured")
        return self._sessions()

    def dispose(self) -> None:
        """Close pooled connections (after fork, or at shutdown)."""
        if self._engine is not None:
            self._engine.dispose()
        self._engine = None
        self._sessions = None
        self.url = None
        self.shop_timezone = DEFAULT_SHOP_TIMEZONE


def reply_text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (the client answers bytes)."""
    return value.decode() if isinstance(value, bytes) else value


class RedisStore:
    """Holds one Redis client per process, with every key under a configurable prefix."""

    def __init__(self) -> None:
        self._client: redis.Redis | None = None
        self.url: str | None = None
        self.prefix = "segrec"
        self._lock = threading.Lock()
        self._local = threading.local()

    def configure(self, url: str, prefix: str = "segrec", socket_timeout: float = 0.25) -> RedisStore:
        """Bind to a Redis URL; short timeouts so the storefront falls back instead of hanging."""
        with self._lock:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                health_check_interval=30,
            )
            self.url = url
            self.prefix = prefix
        return self

    def init_app(self, app) -> None:
        """Bind to a Flask app's REDIS_URL."""
        self.configure(app.config["REDIS_URL"], app.config["REDIS_PREFIX"], app.config["REDIS_SOCKET_TIMEOUT"])
        app.extensions["segrec_redis"] = self

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise NotConfigured("redis is not configured")
        return self._client

    def command(self, *args):
        """Run one command on this thread's own connection and return its reply (raises redis.RedisError).

        For the storefront's hottest single commands: the client's per-command path (pool checkout, retry
        wrapper, metrics recorder) cost three times the round trip itself in the profile. The connection is
        the pool's kind (same URL and timeouts); after a connection or timeout error it is dropped and
        the next call reconnects.
        """
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is None or local.owner != (os.getpid(), self._client):
            connection = self.client.connection_pool.make_connection()
            local.connection, local.owner = connection, (os.getpid(), self._client)
        try:
            connection.send_command(*args)
            return connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            local.connection = None
            raise

    def key(self, *parts: object) -> str:
        """A namespaced key, e.g. key('recs', 'v3', 'sku', 'A1') -> 'segrec:recs:v3:sku:A1'."""
        return ":".join([self.prefix, *(str(part) for part in parts)])


db = Database()
redis_store = RedisStore()

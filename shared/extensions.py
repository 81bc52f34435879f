"""Extensions created unbound at import time and bound to a configuration later.

Flask apps, Celery workers and the command line share them, so nothing here imports Flask.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import redis
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


class NotConfigured(RuntimeError):
    """An extension was used before `configure` bound it."""


def _sqlite_pragmas(dbapi_connection, _record):
    # WAL lets the API read while a worker writes; the busy timeout waits for a writer instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """Holds one SQLAlchemy engine and session factory per process."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._sessions: sessionmaker | None = None
        self.url: str | None = None

    def configure(self, url: str) -> Database:
        """Bind to a database URL (idempotent for the same URL)."""
        if self._engine is not None and self.url == url:
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
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self.url = url
        return self

    def init_app(self, app) -> None:
        """Bind to a Flask app's DATABASE_URL."""
        self.configure(app.config["DATABASE_URL"])
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


class RedisStore:
    """Holds one Redis client per process, with every key under a configurable prefix."""

    def __init__(self) -> None:
        self._client: redis.Redis | None = None
        self.url: str | None = None
        self.prefix = "segrec"
        self._lock = threading.Lock()

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

    def key(self, *parts: object) -> str:
        """A namespaced key, e.g. key('recs', 'v3', 'sku', 'A1') -> 'segrec:recs:v3:sku:A1'."""
        return ":".join([self.prefix, *(str(part) for part in parts)])


db = Database()
redis_store = RedisStore()

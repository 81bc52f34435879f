"""Fixtures: real databases (SQLite always, PostgreSQL when reachable) and a real Redis.

Integration tests take `database_url` and run once per database. PostgreSQL tests use a throwaway
database created for the session; Redis tests use a key prefix of their own, deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from shared.auth import create_key
from shared.dbadmin import upgrade
from shared.extensions import db, redis_store
from shared.models import Base
from shared.redis_server import EmbeddedRedis, answers

POSTGRES_ADMIN_URL = os.environ.get("SEGREC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Public datasets the tests and benchmarks read, copied into the repository (sources and licences: tests/data/README.md).
TEST_DATA = Path(__file__).resolve().parent / "data"


def postgres_reachable() -> bool:
    """True when the PostgreSQL server for tests accepts a connection."""
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


POSTGRES = postgres_reachable()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "segrec-test.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not POSTGRES:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}")
    name = f"segrec_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        # A worker process killed mid-transaction behind a test's TCP proxy can leave its session "idle in
        # transaction", holding locks that block the next test's TRUNCATE forever; the server ends such
        # sessions after a minute instead.
        connection.execute(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = \'60s\'')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    url = f"{base}/{name}"
    upgrade(url)
    yield url
    db.dispose()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str:
    """A migrated, emptied database: each test using it runs on SQLite and on PostgreSQL."""
    url = request.getfixturevalue(f"{request.param}_url")
    db.configure(url)
    empty_all_tables()
    return url


def empty_all_tables() -> None:
    """Delete every row of every segrec table (the schema stays)."""
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    with db.engine.begin() as connection:
        if db.dialect == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """The test Redis: SEGREC_TEST_REDIS_URL, else 127.0.0.1:6379, else an embedded redis-server."""
    configured = os.environ.get("SEGREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if answers(configured):
        yield configured
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_prefix(redis_url) -> str:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"segrec-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis_store.client if redis_store.url == redis_url else None
    if client is None:
        import redis

        client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture
def app_config(database_url, redis_url, redis_prefix, tmp_path) -> dict:
    """Configuration every app fixture starts from."""
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": redis_prefix,
        "VAR_DIR": str(tmp_path),
        "API_KEY_CACHE_SECONDS": 0,
        "MAX_BATCH_RECORDS": 50,
        "MAX_CONTENT_LENGTH": 64 * 1024,
        # Served answers are logged at once, so a test sees them in the stream right after its request.
        "SERVED_LOG_BATCH": 1,
    }


@pytest.fixture
def segmentation_app(app_config):
    from services.segmentation.app import create_app

    return create_app(app_config)


@pytest.fixture
def recommend_app(app_config):
    from services.recommend.app import create_app
    from services.recommend.views.recommendations import experiments, recommender

    app = create_app(app_config)
    # The web tier caches the model version, promotions and running experiments per process; each test has
    # its own Redis prefix and database contents.
    recommender.reset()
    experiments.reset()
    yield app
    recommender.reset()
    experiments.reset()


@pytest.fixture
def make_key(database_url):
    """Create an API key with the given scopes and return the 'Authorization' header for it."""

    def make(*scopes: str, name: str = "test") -> dict:
        with db.session() as session:
            _row, raw_key = create_key(session, name, list(scopes))
        return {"Authorization": f"Bearer {raw_key}"}

    return make


@pytest.fixture
def admin(make_key) -> dict:
    """The Authorization header of an admin key."""
    return make_key("admin")


@pytest.fixture
def storefront(make_key) -> dict:
    """The Authorization header of a storefront key (recs:read)."""
    return make_key("recs:read")


@pytest.fixture
def shop(segmentation_app):
    """The small factory shop (a quarter of it dormant), scored and published with a recommendation model."""
    from services.pipeline.retrain import retrain_now
    from tests.factories import AS_OF, small_shop

    small_shop()
    run = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert run.status == "published", run.reason
    return run

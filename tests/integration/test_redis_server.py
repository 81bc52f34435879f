"""The embedded Redis that `segrec run` starts when no Redis is configured or answering."""

from __future__ import annotations

import redis

from shared.redis_server import EmbeddedRedis, answers, free_port, resolve_redis


def test_embedded_server_is_a_real_redis_with_its_files_under_var(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("segrec-embedded-check", "1")
        assert client.get("segrec-embedded-check") == b"1"
        assert client.info("server")["redis_version"]
        assert (tmp_path / "redis" / "redis.log").exists()
    finally:
        server.stop()
    assert not answers(server.url)
    # It saves on shutdown, so a restarted stack finds its data again.
    assert (tmp_path / "redis" / "redis.rdb").exists()


def test_resolve_prefers_the_configured_url(tmp_path):
    configured = f"redis://127.0.0.1:{free_port()}/0"
    url, embedded = resolve_redis(configured, tmp_path)
    assert url == configured and embedded is None


def test_resolve_uses_the_default_address_when_it_answers_else_starts_one(tmp_path):
    url, embedded = resolve_redis("", tmp_path)
    try:
        if answers("redis://127.0.0.1:6379/0"):
            assert url == "redis://127.0.0.1:6379/0" and embedded is None
        else:
            assert embedded is not None and answers(url)
    finally:
        if embedded is not None:
            embedded.stop()

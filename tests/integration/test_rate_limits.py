"""Per-key rate limits and the failed-authentication budget (shared/ratelimit.py on the real Redis)."""

from __future__ import annotations

import pytest

from services.recommend.app import create_app
from services.recommend.views.recommendations import recommender


@pytest.fixture
def limited_app(app_config):
    config = dict(app_config, RATE_LIMIT_RECS_READ="3/minute", RATE_LIMIT_FAILED_AUTH="2/minute")
    recommender.reset()
    yield create_app(config)
    recommender.reset()


def test_the_fourth_request_under_a_limit_of_three_gets_429_with_retry_after(limited_app, make_key):
    client = limited_app.test_client()
    storefront = make_key("recs:read")
    statuses = [client.get("/v1/popular", headers=storefront).status_code for _ in range(3)]
    assert 429 not in statuses
    response = client.get("/v1/popular", headers=storefront)
    assert response.status_code == 429
    assert response.json["error"]["code"] == "rate_limited"
    assert response.json["error"]["status"] == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] == "3"
    assert response.headers["RateLimit-Remaining"] == "0"


def test_another_key_keeps_its_own_budget(limited_app, make_key):
    client = limited_app.test_client()
    busy = make_key("recs:read", name="busy")
    quiet = make_key("recs:read", name="quiet")
    for _ in range(3):
        client.get("/v1/popular", headers=busy)
    assert client.get("/v1/popular", headers=busy).status_code == 429
    response = client.get("/v1/popular", headers=quiet)
    assert response.status_code != 429
    assert response.headers["RateLimit-Remaining"] == "2"


def test_a_limit_of_one_class_leaves_the_others_alone(limited_app, make_key):
    client = limited_app.test_client()
    admin = make_key("admin")
    for _ in range(3):
        client.get("/v1/popular", headers=admin)
    assert client.get("/v1/popular", headers=admin).status_code == 429
    # The same key's ingest budget (600/minute) is untouched.
    response = client.post("/v1/products", json={"records": []}, headers=admin)
    assert response.status_code != 429


def test_failed_authentication_is_limited_per_address(limited_app, make_key):
    client = limited_app.test_client()
    wrong = {"Authorization": "Bearer sgr_not-a-key"}
    assert [client.get("/v1/popular", headers=wrong).status_code for _ in range(2)] == [401, 401]
    response = client.get("/v1/popular", headers=wrong)
    assert response.status_code == 429
    assert response.json["error"]["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
    # Once the budget is spent the address waits, even with a valid key: guessing cannot go on from there.
    assert client.get("/v1/popular", headers=make_key("recs:read")).status_code == 429
    # Another address is not affected.
    other = client.get("/v1/popular", headers=wrong, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert other.status_code == 401


@pytest.fixture
def caching_app(app_config):
    """Keys stay verified in the worker for a while: requests take the one-round-trip path."""
    config = dict(app_config, RATE_LIMIT_RECS_READ="3/minute", RATE_LIMIT_FAILED_AUTH="2/minute",
                  API_KEY_CACHE_SECONDS=60)
    recommender.reset()
    yield create_app(config)
    recommender.reset()


def test_a_key_verified_moments_ago_is_still_counted_and_refused_over_its_limit(caching_app, make_key):
    client = caching_app.test_client()
    storefront = make_key("recs:read")
    remaining = [client.get("/v1/popular", headers=storefront).headers["RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    response = client.get("/v1/popular", headers=storefront)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_a_blocked_address_is_refused_even_with_a_key_verified_moments_ago(caching_app, make_key):
    client = caching_app.test_client()
    storefront = make_key("recs:read")
    assert client.get("/v1/popular", headers=storefront).status_code == 200
    wrong = {"Authorization": "Bearer sgr_not-a-key"}
    assert [client.get("/v1/popular", headers=wrong).status_code for _ in range(3)] == [401, 401, 429]
    refused = client.get("/v1/popular", headers=storefront)
    assert refused.status_code == 429
    assert "failed authentications" in refused.json["error"]["message"]


def test_a_missing_scope_spends_no_budget(caching_app, make_key):
    client = caching_app.test_client()
    ingest_only = make_key("ingest:write")
    assert [client.get("/v1/popular", headers=ingest_only).status_code for _ in range(5)] == [403] * 5


def test_limits_are_off_when_disabled(app_config, make_key):
    recommender.reset()
    app = create_app(dict(app_config, RATE_LIMIT_ENABLED=False, RATE_LIMIT_RECS_READ="1/minute"))
    client = app.test_client()
    storefront = make_key("recs:read")
    assert [client.get("/v1/popular", headers=storefront).status_code == 429 for _ in range(3)] == [False] * 3


def test_retry_after_only_on_429(limited_app, make_key):
    client = limited_app.test_client()
    response = client.get("/v1/popular", headers=make_key("recs:read"))
    assert "Retry-After" not in response.headers
    assert response.headers["RateLimit-Limit"] == "3"


def test_two_workers_counting_in_leases_admit_exactly_the_limit(app_config, make_key):
    # Two apps are two gunicorn workers: each counts a busy key in leases taken from the shared counter.
    config = dict(app_config, RATE_LIMIT_RECS_READ="100/minute", API_KEY_CACHE_SECONDS=60)
    recommender.reset()
    workers = [create_app(config).test_client(), create_app(config).test_client()]
    storefront = make_key("recs:read")
    statuses = [workers[turn % 2].get("/v1/popular", headers=storefront).status_code for turn in range(160)]
    recommender.reset()
    assert statuses.count(200) == 100
    assert statuses.count(429) == 60
    assert statuses[-1] == 429

"""Storefront feedback end to end: the real endpoints, a real Celery worker draining the streams, real Redis.

Answers are served and logged, impressions and clicks are posted to /v1/feedback, orders arrive through
the segmentation service's /v1/orders as shops send them, a worker process stores the streams, and
/v1/recommendations/metrics attributes exactly the orders a last click explains.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from services.pipeline.celery_app import configure_celery
from services.recommend.feedback import CONSUMER_GROUP, FEEDBACK_STREAM, SERVED_STREAM, stream_key
from shared.config import load_config
from shared.extensions import db, redis_store
from shared.models import FeedbackEvent, ServedRecommendation
from tests.integration.test_retrain_worker import ROOT, Workers

DRAIN_TIMEOUT = 60


@pytest.fixture
def settings(app_config) -> dict:
    """What the test's apps and worker share: database, Redis, prefix, a queue of its own, a quick reclaim."""
    return {
        "DATABASE_URL": app_config["DATABASE_URL"],
        "REDIS_URL": app_config["REDIS_URL"],
        "REDIS_PREFIX": app_config["REDIS_PREFIX"],
        "VAR_DIR": app_config["VAR_DIR"],
        "CELERY_QUEUE": f"segrec-test-{uuid.uuid4().hex[:8]}",
        "FEEDBACK_CLAIM_IDLE_SECONDS": 0.5,
    }


@pytest.fixture
def worker(settings, tmp_path):
    workers = Workers(settings, tmp_path / "worker.log", concurrency=1).start()
    yield workers
    workers.stop()


@pytest.fixture
def apps(app_config, settings, shop):
    """The recommend and segmentation apps on the same database and Redis, after the shop was trained."""
    from services.recommend.app import create_app as recommend_app
    from services.recommend.views.recommendations import experiments, recommender
    from services.segmentation.app import create_app as segmentation_app

    recommender.reset()
    experiments.reset()
    config = {**app_config, **settings}
    yield recommend_app(config).test_client(), segmentation_app(config).test_client()
    recommender.reset()
    experiments.reset()


def drain_with_worker(settings: dict, workers: Workers) -> dict:
    """Send the beat's drain task to the worker and wait for its answer."""
    app = configure_celery(load_config({**settings}, environ={}))
    result = app.send_task("segrec.feedback.drain", queue=settings["CELERY_QUEUE"])
    try:
        return result.get(timeout=DRAIN_TIMEOUT)
    except Exception as error:
        raise AssertionError(f"drain failed: {error}\n{workers.log_tail()}") from error


def iso(moment: datetime) -> str:
    return moment.replace(tzinfo=timezone.utc).isoformat()


def impression(event_id, recommendation_id, items, at, customer_id=None, session_id=None) -> dict:
    return {"event_id": event_id, "type": "impression", "recommendation_id": recommendation_id,
            "customer_id": customer_id, "session_id": session_id, "occurred_at": iso(at),
            "skus": [{"sku": item["sku"], "position": position} for position, item in enumerate(items, 1)]}


def click(event_id, recommendation_id, sku, at, customer_id=None, session_id=None) -> dict:
    return {"event_id": event_id, "type": "click", "recommendation_id": recommendation_id, "sku": sku,
            "customer_id": customer_id, "session_id": session_id, "occurred_at": iso(at)}


def stored_events() -> int:
    with db.session() as session:
        return session.execute(select(func.count()).select_from(FeedbackEvent)).scalar_one()


def test_impressions_clicks_and_orders_are_attributed_through_a_real_worker(apps, make_key, settings, worker):
    recommend, segmentation = apps
    storefront = make_key("recs:read", "feedback:write")
    analytics = make_key("analytics:read")
    ingest = make_key("ingest:write")
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    shown_at, clicked_at, bought_at = now - timedelta(hours=3), now - timedelta(hours=2), now - timedelta(hours=1)

    together = recommend.get("/v1/items/PHN-1/bought-together?customer_id=fb-1", headers=storefront).json
    cart = recommend.post("/v1/cart/recommendations", headers=storefront, json={
        "session_id": "sess-2", "items": [{"sku": "TEA-1", "quantity": 1}]}).json
    for_you = recommend.get("/v1/customers/fb-3/recommendations", headers=storefront).json
    assert together["items"][0]["sku"] == "CASE-1"
    cart_pick = cart["cross_sell"][0]["sku"]
    batch = [
        impression("e1", together["recommendation_id"], together["items"], shown_at, customer_id="fb-1"),
        click("e2", together["recommendation_id"], "CASE-1", clicked_at, customer_id="fb-1"),
        impression("e3", cart["recommendation_id"], cart["cross_sell"], shown_at, session_id="sess-2"),
        click("e4", cart["recommendation_id"], cart_pick, clicked_at, session_id="sess-2"),
        # The shopper logs in: an event carrying both ids maps the session to the customer.
        {"event_id": "e5", "type": "add_to_cart", "recommendation_id": cart["recommendation_id"], "sku": cart_pick,
         "customer_id": "fb-2", "session_id": "sess-2", "occurred_at": iso(clicked_at)},
        impression("e6", for_you["recommendation_id"], for_you["items"], shown_at, customer_id="fb-3"),
        # An answer of an older model (never logged here): accepted, counted unattributed.
        impression("e7", "from-an-older-model", together["items"], shown_at, customer_id="fb-4"),
        click("e8", "from-an-older-model", "CHG-1", clicked_at, customer_id="fb-4"),
        # Too old for the attribution window, and too far in the future: rejected per record.
        click("old", together["recommendation_id"], "CASE-1", now - timedelta(hours=25), customer_id="fb-1"),
        click("ahead", together["recommendation_id"], "CASE-1", now + timedelta(days=2), customer_id="fb-1"),
    ]
    response = recommend.post("/v1/feedback", headers=storefront, json={"events": batch})
    assert response.status_code == 202, response.json
    assert response.json["accepted"] == 8
    assert [(item["index"], item["id"], list(item["errors"])) for item in response.json["rejected"]] == [
        (8, "old", ["occurred_at"]), (9, "ahead", ["occurred_at"])]
    # The storefront re-sends the whole batch (a timeout on its side): stored once.
    assert recommend.post("/v1/feedback", headers=storefront, json=batch).json["accepted"] == 8

    orders = [
        # fb-1 clicked the case an hour before: its line is attributed, the milk is not.
        {"order_id": "fb-o1", "customer_id": "fb-1", "placed_at": iso(bought_at), "lines": [
            {"sku": "CASE-1", "quantity": 2, "unit_price": 29.0}, {"sku": "MILK-1", "quantity": 1, "unit_price": 12.0}]},
        # fb-2 clicked as sess-2, mapped to fb-2 by the add_to_cart event.
        {"order_id": "fb-o2", "customer_id": "fb-2", "placed_at": iso(bought_at), "lines": [
            {"sku": cart_pick, "quantity": 1, "unit_price": 40.0}]},
        # fb-3 bought without clicking; fb-1's earlier order came before the click.
        {"order_id": "fb-o3", "customer_id": "fb-3", "placed_at": iso(bought_at), "lines": [
            {"sku": "CASE-1", "quantity": 1, "unit_price": 29.0}]},
        {"order_id": "fb-o4", "customer_id": "fb-1", "placed_at": iso(shown_at), "lines": [
            {"sku": "CASE-1", "quantity": 1, "unit_price": 29.0}]},
        # fb-4 clicked an unknown answer: the purchase is counted under surface "unknown".
        {"order_id": "fb-o5", "customer_id": "fb-4", "placed_at": iso(bought_at), "lines": [
            {"sku": "CHG-1", "quantity": 1, "unit_price": 39.0}]},
    ]
    response = segmentation.post("/v1/orders", headers=ingest, json=orders)
    assert response.status_code == 200 and response.json["accepted"] == 5, response.json

    drained = drain_with_worker(settings, worker)
    assert drained["events"]["rows"] == 16 and drained["served"]["rows"] == 3
    assert stored_events() == 8
    assert redis_store.client.xlen(stream_key(FEEDBACK_STREAM)) == 0

    zone = ZoneInfo("Asia/Shanghai")
    today = datetime.now(zone).date()
    body = recommend.get(f"/v1/recommendations/metrics?from={today - timedelta(days=1)}&to={today}"
                         "&group_by=surface", headers=analytics).json
    assert body["unattributed_events"] == 2
    figures = {row["surface"]: (row["impressions"], row["clicks"], row["ctr"]["value"], row["attributed_orders"],
                                row["attributed_revenue"]) for row in body["rows"]}
    assert figures == {
        "bought_together": (1, 1, 1.0, 1, 58.0),
        "cart": (1, 1, 1.0, 1, 40.0),
        "for_you": (1, 0, 0.0, 0, 0.0),
        "unknown": (1, 1, 1.0, 1, 39.0),
    }
    together_row = next(row for row in body["rows"] if row["surface"] == "bought_together")
    assert together_row["revenue_per_1000_impressions"] == 58000.0
    assert together_row["add_to_cart_rate"]["value"] == 0.0
    assert body["rows"][1]["add_to_cart_rate"]["value"] == 1.0  # the cart answer's add_to_cart
    assert together_row["ctr"]["ci95_low"] == pytest.approx(0.206549, abs=1e-6)  # Wilson, 1 of 1

    by_model = recommend.get(f"/v1/recommendations/metrics?from={today - timedelta(days=1)}&to={today}"
                             "&surface=cart&group_by=model_version,variant", headers=analytics).json
    assert [(row["model_version"], row["variant"], row["attributed_revenue"]) for row in by_model["rows"]] == [
        (together["model_version"], "current", 40.0)]
    metrics = recommend.get("/metrics").get_data(as_text=True)
    assert 'segrec_recommendations_served_total{surface="cart",variant="current"}' in metrics
    assert 'segrec_feedback_events_total{type="impression"}' in metrics


def test_feedback_needs_its_scope_and_bounds_batches(app_config, make_key):
    from services.recommend.app import create_app

    recommend = create_app({**app_config, "MAX_FEEDBACK_EVENTS": 20}).test_client()
    event = click("x1", "r1", "CASE-1", datetime.now(timezone.utc).replace(tzinfo=None), customer_id="c1")
    assert recommend.post("/v1/feedback", headers=make_key("recs:read"), json=[event]).status_code == 403
    storefront = make_key("feedback:write")
    assert recommend.post("/v1/feedback", headers=storefront, json=[event] * 20).status_code == 202
    too_many = [dict(event, event_id=f"x{index}") for index in range(21)]
    response = recommend.post("/v1/feedback", headers=storefront, json=too_many)
    assert response.status_code == 413
    assert response.json["error"]["code"] == "batch_too_large"


def test_a_full_stream_answers_503_with_retry_after(app_config, settings, make_key):
    from services.recommend.app import create_app

    recommend = create_app({**app_config, **settings, "FEEDBACK_STREAM_MAX_LENGTH": 2}).test_client()
    storefront = make_key("feedback:write")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    statuses = [recommend.post("/v1/feedback", headers=storefront,
                               json=[click(f"f{index}", "r1", "CASE-1", now, customer_id="c1")]).status_code
                for index in range(3)]
    assert statuses == [202, 202, 503]
    refused = recommend.post("/v1/feedback", headers=storefront, json=[click("f9", "r1", "CASE-1", now,
                                                                             customer_id="c1")])
    assert refused.headers["Retry-After"] == "5"
    assert refused.json["error"]["code"] == "feedback_backlog"
    assert redis_store.client.xlen(stream_key(FEEDBACK_STREAM)) == 2


# A consumer process that reads a batch, commits it, and is SIGKILLed before it acknowledges.
DYING_CONSUMER = textwrap.dedent("""
    import os, signal, sys
    from services.pipeline import feedback
    from shared.config import load_config
    from shared.extensions import db, redis_store

    config = load_config({"FEEDBACK_CONSUMER_BATCH": 2, "FEEDBACK_CONSUMER_MAX_BATCHES": 2})
    db.configure(config["DATABASE_URL"], config["SHOP_TIMEZONE"])
    redis_store.configure(config["REDIS_URL"], config["REDIS_PREFIX"])
    original_insert = feedback.insert_ignoring_duplicates

    def insert_then_die(session, *args):
        original_insert(session, *args)
        session.commit()
        os.kill(os.getpid(), signal.SIGKILL)

    feedback.insert_ignoring_duplicates = insert_then_die
    feedback.drain_stream(feedback.FEEDBACK_STREAM, config, "consumer-that-dies")
""")


def test_a_consumer_killed_mid_batch_loses_no_event(apps, make_key, settings, worker):
    recommend, _segmentation = apps
    storefront = make_key("feedback:write")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for batch in range(5):
        events = [click(f"k{batch}-{index}", "r1", "CASE-1", now, customer_id=f"c{index}") for index in range(20)]
        assert recommend.post("/v1/feedback", headers=storefront, json=events).json["accepted"] == 20

    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({key: str(value) for key, value in settings.items()}, PYTHONPATH=str(ROOT))
    dying = subprocess.run([sys.executable, "-c", DYING_CONSUMER], env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert dying.returncode == -9, dying.stderr
    key = stream_key(FEEDBACK_STREAM)
    # It stored its two entries (40 events) but never acknowledged them: they are pending with the dead consumer.
    assert stored_events() == 40
    assert redis_store.client.xpending(key, CONSUMER_GROUP)["pending"] == 2
    time.sleep(settings["FEEDBACK_CLAIM_IDLE_SECONDS"] + 0.2)

    drained = drain_with_worker(settings, worker)
    assert drained["events"]["reclaimed"] == 2
    assert drained["events"]["entries"] == 5
    assert stored_events() == 100
    assert redis_store.client.xpending(key, CONSUMER_GROUP)["pending"] == 0
    assert redis_store.client.xlen(key) == 0
    with db.session() as session:
        assert session.execute(select(func.count(func.distinct(FeedbackEvent.event_id)))).scalar_one() == 100
        assert session.execute(select(func.count()).select_from(ServedRecommendation)).scalar_one() == 0
    assert redis_store.client.xlen(stream_key(SERVED_STREAM)) == 0


def test_campaign_recommendations_are_attributed_to_surface_campaign(apps, make_key, settings, worker):
    """A win-back member's recommended skus carry a recommendation_id; its click and purchase count for campaign."""
    recommend, segmentation = apps
    storefront = make_key("feedback:write")
    analytics = make_key("analytics:read")
    ingest = make_key("ingest:write")
    marketer = make_key("campaigns:write")
    created = segmentation.post("/v1/campaigns/win-back", json={"holdout_fraction": 0.2},
                                headers={**marketer, "Idempotency-Key": uuid.uuid4().hex})
    assert created.status_code == 202, created.json
    campaign_id = created.json["campaign_id"]
    deadline = time.monotonic() + DRAIN_TIMEOUT  # the worker builds it
    while segmentation.get(f"/v1/campaigns/{campaign_id}", headers=marketer).json["status"] != "ready":
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    members = segmentation.get(f"/v1/campaigns/{campaign_id}/members?group=treatment&limit=200",
                               headers=marketer).json["items"]
    member = next(item for item in members if item["recommended_skus"])
    customer, sku = member["customer_id"], member["recommended_skus"][0]
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    batch = [
        impression("k1", member["recommendation_id"], [{"sku": item} for item in member["recommended_skus"]],
                   now - timedelta(hours=3), customer_id=customer),
        click("k2", member["recommendation_id"], sku, now - timedelta(hours=2), customer_id=customer),
    ]
    assert recommend.post("/v1/feedback", headers=storefront, json=batch).status_code == 202
    order = {"order_id": "camp-o1", "customer_id": customer, "placed_at": iso(now - timedelta(hours=1)),
             "lines": [{"sku": sku, "quantity": 3, "unit_price": 10.0}]}
    assert segmentation.post("/v1/orders", headers=ingest, json=[order]).json["accepted"] == 1

    drain_with_worker(settings, worker)

    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    body = recommend.get(f"/v1/recommendations/metrics?from={today - timedelta(days=1)}&to={today}"
                         "&surface=campaign&group_by=surface", headers=analytics).json
    assert body["unattributed_events"] == 0
    assert [(row["surface"], row["impressions"], row["clicks"], row["attributed_orders"], row["attributed_revenue"])
            for row in body["rows"]] == [("campaign", 1, 1, 1, 30.0)]


def test_served_batches_and_older_single_records_are_stored_once(recommend_app):
    from services.pipeline.feedback import drain, ensure_group
    from services.recommend.feedback import ServedContext, ServedLog, served_record

    config = {**recommend_app.config, "FEEDBACK_CLAIM_IDLE_SECONDS": 0}
    key = stream_key(SERVED_STREAM)
    # A log of the test's own, whose flusher never fires during the test: three answers make one entry.
    served = ServedLog()
    served.configure(3, 3600, 1000)
    for index in range(3):
        served.append(served_record({"recommendation_id": f"batch-{index}", "model_version": "m1"}, "for_you",
                                    ServedContext(customer_id=f"c{index}", variant="popular", experiment_id="e1")))
    [(batch_id, batch_fields)] = redis_store.client.xrange(key)
    assert set(batch_fields) == {b"served_batch"}
    # An entry a worker from before the batched form wrote during an upgrade: one record, field "served".
    older = served_record({"recommendation_id": "older-1", "model_version": "m0"}, "cart", ServedContext())
    redis_store.client.xadd(key, {"served": older})

    # A consumer read the batch and died before acknowledging it; the drain takes it over with XAUTOCLAIM.
    ensure_group(redis_store.client, key)
    read = redis_store.client.xreadgroup(CONSUMER_GROUP, "consumer-that-died", {key: ">"}, count=1)
    assert [entry_id for entry_id, _fields in read[0][1]] == [batch_id]
    counts = drain(config, consumer="alive")["served"]
    assert counts == {"rows": 4, "entries": 2, "reclaimed": 1}
    assert redis_store.client.xlen(key) == 0
    assert redis_store.client.xpending(key, CONSUMER_GROUP)["pending"] == 0

    # The same batch delivered again stores nothing twice.
    redis_store.client.xadd(key, batch_fields)
    assert drain(config, consumer="alive")["served"]["rows"] == 3
    with db.session() as session:
        rows = session.execute(select(ServedRecommendation.recommendation_id, ServedRecommendation.surface,
                                      ServedRecommendation.variant, ServedRecommendation.customer_id)).all()
    assert sorted(map(tuple, rows)) == [("batch-0", "for_you", "popular", "c0"), ("batch-1", "for_you", "popular", "c1"),
                                        ("batch-2", "for_you", "popular", "c2"), ("older-1", "cart", "current", None)]

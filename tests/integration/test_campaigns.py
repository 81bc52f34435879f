"""Win-back campaigns over HTTP, on real databases and Redis; the build runs in-process (the domain function the
Celery task wraps), except in the one test that starts a real worker process."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from services.pipeline.retrain import retrain_now
from services.recommend.store import ListReader, customer_payloads, decode_customer_lists
from services.segmentation import campaigns
from services.segmentation.campaigns import build as campaign_build
from shared.extensions import db
from shared.ingest import utcnow
from shared.models import Campaign, CampaignMember, Customer, CustomerScore, Product, ServedRecommendation
from tests.factories import AS_OF, add_orders, small_shop

REPO = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")
SECRET = "test-webhook-secret"
# Loopback allowed (the test receiver listens on 127.0.0.1); the private ranges stay forbidden.
TEST_FORBIDDEN_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,fc00::/7"
TEST_ALLOWED_NETWORKS = "127.0.0.1/32"


@pytest.fixture
def client(segmentation_app):
    return segmentation_app.test_client()


@pytest.fixture
def writer(make_key):
    return make_key("campaigns:write")


def post_campaign(client, headers, body, key=None):
    """POST a win-back campaign with an Idempotency-Key (a fresh one unless given)."""
    return client.post("/v1/campaigns/win-back", json=body,
                       headers={**headers, "Idempotency-Key": key or uuid.uuid4().hex})


def create_and_build(client, headers, app, body, now=None) -> dict:
    """Create a campaign over HTTP, build it in-process, and return it as GET shows it."""
    response = post_campaign(client, headers, body)
    assert response.status_code == 202, response.json
    campaign_id = response.json["campaign_id"]
    result = campaigns.build_campaign(campaign_id, app.config, now=now)
    assert result.status == "ready"
    return client.get(f"/v1/campaigns/{campaign_id}", headers=headers).json


def all_members(client, headers, campaign_id, group=None, limit=7) -> list[dict]:
    """Walk every page of a campaign's members."""
    items, cursor = [], None
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "") + (f"&group={group}" if group else "")
        page = client.get(f"/v1/campaigns/{campaign_id}/members?{query}", headers=headers)
        assert page.status_code == 200, page.json
        items.extend(page.json["items"])
        cursor = page.json["next_cursor"]
        if not cursor:
            return items


def dormant_ids(run_id) -> list[str]:
    with db.session() as session:
        return list(session.execute(
            select(CustomerScore.customer_id).where(CustomerScore.run_id == run_id,
                                                    CustomerScore.lifecycle == "dormant")
        ).scalars())


def test_win_back_builds_groups_offers_and_recommendations(client, writer, segmentation_app, shop):
    body = {"name": "Autumn win-back", "holdout_fraction": 0.3,
            "offer": {"kind": "percent_off", "value": 15, "valid_days": 10}, "recommendations": {"limit": 3}}
    response = post_campaign(client, writer, body)
    assert response.status_code == 202
    campaign_id = response.json["campaign_id"]
    assert response.json["status"] == "building"
    # Before the build, the members are not there to read.
    assert client.get(f"/v1/campaigns/{campaign_id}/members", headers=writer).status_code == 409

    campaigns.build_campaign(campaign_id, segmentation_app.config)
    campaign = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json
    dormant = dormant_ids(shop.run_id)
    assert campaign["status"] == "ready" and campaign["note"] is None
    assert campaign["audience_size"] == len(dormant) > 10
    assert campaign["treatment_size"] + campaign["control_size"] == len(dormant)
    assert campaign["skipped"] == {"opted_out": 0, "global_control": 0, "frequency_capped": 0}
    assert campaign["definition"]["audience"] == {"lifecycle": ["dormant"]}

    members = all_members(client, writer, campaign_id)
    assert sorted(member["customer_id"] for member in members) == sorted(dormant)
    assert [member["rank"] for member in members] == list(range(1, len(members) + 1))
    # Ranked by expected value, highest first.
    with db.session() as session:
        value = dict(session.execute(select(CustomerScore.customer_id, CustomerScore.expected_value_365d)
                                     .where(CustomerScore.run_id == shop.run_id)).all())
    values = [value[member["customer_id"]] for member in members]
    assert values == sorted(values, reverse=True)

    catalogue = ListReader().catalogue(campaign["model_version"])
    sellable = {sku for sku, ok in zip(catalogue.skus, catalogue.sellable) if ok}
    launched = campaign["launched_at"]
    for member in members:
        assert member["group"] == campaigns.holdout_group(campaign_id, member["customer_id"], 0.3)
        if member["group"] == "treatment":
            assert member["offer"]["kind"] == "percent_off" and member["offer"]["value"] == 15
            assert member["offer"]["expires_at"].startswith(
                (utcnow().date() + timedelta(days=10)).isoformat()[:8])
            assert 1 <= len(member["recommended_skus"]) <= 3
            assert set(member["recommended_skus"]) <= sellable
            assert member["contacted_at"][:19] == launched[:19]
            assert member["recommendation_id"] == campaigns.member_recommendation_id(campaign_id,
                                                                                       member["customer_id"])
        else:
            assert member["offer"] is None and member["recommended_skus"] == [] and member["contacted_at"] is None
            assert member["recommendation_id"] is None
    treatment = all_members(client, writer, campaign_id, group="treatment")
    assert len(treatment) == campaign["treatment_size"] and {m["group"] for m in treatment} == {"treatment"}
    # Each treated member's skus are a served answer of surface campaign, so feedback on them is attributed.
    with db.session() as session:
        served = session.execute(select(ServedRecommendation).where(ServedRecommendation.surface == "campaign")
                                 ).scalars().all()
    assert sorted((row.recommendation_id, row.customer_id, row.model_version) for row in served) == sorted(
        (member["recommendation_id"], member["customer_id"], campaign["model_version"]) for member in treatment)


def test_same_key_same_body_is_the_same_campaign_other_body_conflicts(client, writer, segmentation_app, shop):
    key = uuid.uuid4().hex
    body = {"holdout_fraction": 0.2, "offer": {"kind": "amount_off", "value": 20}}
    first = post_campaign(client, writer, body, key)
    # The same body with its keys in another order and a value in another spelling is the same request.
    again = post_campaign(client, writer, {"offer": {"value": 20.0, "kind": "amount_off"}, "holdout_fraction": 0.2},
                          key)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json["campaign_id"] == first.json["campaign_id"]
    other = post_campaign(client, writer, {**body, "holdout_fraction": 0.25}, key)
    assert other.status_code == 409 and other.json["error"]["code"] == "conflict"

    campaign_id = first.json["campaign_id"]
    campaigns.build_campaign(campaign_id, segmentation_app.config)
    # A redelivered build task finds the campaign ready and leaves it alone.
    campaigns.build_campaign(campaign_id, segmentation_app.config)
    with db.session() as session:
        rows = session.execute(select(func.count()).where(CampaignMember.campaign_id == campaign_id)).scalar_one()
    assert rows == len(dormant_ids(shop.run_id))
    replay = post_campaign(client, writer, body, key)
    assert replay.status_code == 200 and replay.json["status"] == "ready"


def test_idempotency_keys_belong_to_the_api_key_and_expire(client, writer, make_key, segmentation_app, shop):
    key = uuid.uuid4().hex
    body = {"holdout_fraction": 0.2}
    marketing = post_campaign(client, writer, body, key)
    assert marketing.status_code == 202
    # The admin key replaying the marketing key's Idempotency-Key and body gets a campaign of its own.
    admin = make_key("admin", name="admin")
    admins = post_campaign(client, admin, body, key)
    assert admins.status_code == 202
    assert admins.json["campaign_id"] != marketing.json["campaign_id"]
    assert post_campaign(client, admin, body, key).json["campaign_id"] == admins.json["campaign_id"]
    # After IDEMPOTENCY_KEY_TTL_HOURS the key is released: the same request creates a new campaign.
    with db.session() as session:
        session.execute(update(Campaign).where(Campaign.campaign_id == marketing.json["campaign_id"])
                        .values(created_at=utcnow() - timedelta(hours=25)))
    fresh = post_campaign(client, writer, body, key)
    assert fresh.status_code == 202 and fresh.json["campaign_id"] != marketing.json["campaign_id"]
    with db.session() as session:
        assert session.get(Campaign, marketing.json["campaign_id"]).idempotency_key is None


def test_interrupted_build_is_redone_without_duplicates(client, writer, segmentation_app, shop, monkeypatch):
    segmentation_app.config["CAMPAIGN_BUILD_CHUNK"] = 4
    campaign_id = post_campaign(client, writer, {"holdout_fraction": 0.5}).json["campaign_id"]
    real_finish = campaign_build._finish
    calls = []

    def finish_fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE campaigns", {}, Exception("connection lost"))
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(campaign_build, "_finish", finish_fails_once)
    with pytest.raises(OperationalError):
        campaigns.build_campaign(campaign_id, segmentation_app.config)
    with db.session() as session:
        partial = session.execute(select(func.count()).where(CampaignMember.campaign_id == campaign_id)).scalar_one()
    assert partial == len(dormant_ids(shop.run_id))  # every chunk landed, the campaign is not ready yet
    # The task's retry builds again: same members, same groups, no duplicates.
    result = campaigns.build_campaign(campaign_id, segmentation_app.config)
    assert result.status == "ready" and len(calls) == 2
    members = all_members(client, writer, campaign_id, limit=100)
    assert len(members) == len({m["customer_id"] for m in members}) == partial
    assert all(m["group"] == campaigns.holdout_group(campaign_id, m["customer_id"], 0.5) for m in members)


def test_builds_run_one_at_a_time(client, writer, segmentation_app, shop):
    segmentation_app.config["CAMPAIGN_BUILD_LOCK_WAIT_SECONDS"] = 0.3
    campaign_id = post_campaign(client, writer, {}).json["campaign_id"]
    other_build = campaigns.build_lock(segmentation_app.config)
    assert other_build.acquire()
    try:
        with pytest.raises(campaigns.BuildInProgress):
            campaigns.build_campaign(campaign_id, segmentation_app.config)
    finally:
        other_build.release()
    assert campaigns.build_campaign(campaign_id, segmentation_app.config).status == "ready"


def test_failed_build_keeps_no_members(client, writer, segmentation_app, shop):
    campaign_id = post_campaign(client, writer, {}).json["campaign_id"]
    campaigns.build_campaign(campaign_id, segmentation_app.config)
    with db.session() as session:
        session.execute(update(Campaign).where(Campaign.campaign_id == campaign_id)
                        .values(status="building"))
    campaigns.mark_failed(campaign_id, "SoftTimeLimitExceeded: took too long")
    body = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json
    assert body["status"] == "failed" and "SoftTimeLimitExceeded" in body["reason"]
    with db.session() as session:
        assert session.execute(select(func.count()).where(CampaignMember.campaign_id == campaign_id)).scalar_one() == 0
    assert client.get(f"/v1/campaigns/{campaign_id}/report", headers=writer).status_code == 409


def test_missing_idempotency_key_is_400(client, writer):
    response = client.post("/v1/campaigns/win-back", json={}, headers=writer)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "idempotency_key_required"
    blank = client.post("/v1/campaigns/win-back", json={}, headers={**writer, "Idempotency-Key": "  "})
    assert blank.status_code == 400


@pytest.mark.parametrize("body, field", [
    ({"holdout_fraction": 0.95}, "holdout_fraction"),
    ({"holdout_fraction": -0.1}, "holdout_fraction"),
    ({"offer": {"kind": "amount_off", "value": -5}}, "offer"),
    ({"offer": {"kind": "percent_off", "value": 150}}, "offer"),
    ({"offer": {"kind": "cashback", "value": 5}}, "offer"),
    ({"audience": {"shoe_size": ["42"]}}, "shoe_size"),
    ({"audience": {"tier": ["platinum"]}}, "tier"),
    ({"audience": {"expected_value_365d": ["500"]}}, "expected_value_365d"),
    ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
    ({"webhook_url": "http://127.0.0.1:8080/hook"}, "webhook_url"),
    ({"webhook_url": "http://localhost/hook"}, "webhook_url"),
    ({"webhook_url": "http://10.1.2.3/hook"}, "webhook_url"),
    ({"webhook_url": "http://169.254.169.254/latest/meta-data"}, "webhook_url"),
    ({"webhook_url": "http://[::1]/hook"}, "webhook_url"),
    ({"webhook_url": "http://[::ffff:192.168.0.1]/hook"}, "webhook_url"),
    ({"webhook_url": "https://user:pw@example.com/hook"}, "webhook_url"),
    # Loopback, metadata and other non-global addresses in every spelling (issue 11).
    *[({"webhook_url": url}, "webhook_url") for url in (
        "http://[::]:6379/", "http://100.100.100.200/", "http://2130706433/", "http://0x7f000001/",
        "http://017700000001/", "http://127.1/", "http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::1]/", "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "http://100.64.0.1/",
        "http://198.18.0.1/", "http://224.0.0.1/", "http://255.255.255.255/", "http://[ff02::1]/",
        "http://240.0.0.1/", "http://0.0.0.0/", "http://[::ffff:7f00:1]/",
    )],
    ({"frequency_cap_days": -1}, "frequency_cap_days"),
])
def test_bad_requests_are_422_and_create_nothing(client, writer, body, field, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    response = post_campaign(client, writer, body)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == "validation_error"
    assert field in json.dumps(response.json["error"]["details"])
    with db.session() as session:
        assert session.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0


def test_empty_audience_is_ready_with_a_note(client, writer, segmentation_app, shop):
    campaign = create_and_build(client, writer, segmentation_app,
                                {"audience": {"lifecycle": ["dormant"], "expected_value_365d": {"gte": 1e12}}})
    assert campaign["status"] == "ready"
    assert campaign["audience_size"] == campaign["treatment_size"] == campaign["control_size"] == 0
    assert "matched no customer" in campaign["note"]
    assert all_members(client, writer, campaign["campaign_id"]) == []
    report = client.get(f"/v1/campaigns/{campaign['campaign_id']}/report", headers=writer).json
    assert report["uplift"]["verdict"] == "insufficient_data"


def test_opted_out_global_control_and_frequency_cap_are_left_out(client, writer, segmentation_app, shop):
    dormant = sorted(dormant_ids(shop.run_id))
    opted_out = set(dormant[:3])
    with db.session() as session:
        session.execute(update(Customer).where(Customer.customer_id.in_(opted_out)).values(opted_out=True))
    segmentation_app.config.update(GLOBAL_CONTROL_FRACTION=0.25, GLOBAL_CONTROL_SALT="test-salt")
    global_control = {customer for customer in set(dormant) - opted_out
                      if campaigns.in_global_control(customer, 0.25, "test-salt")}
    assert global_control, "the test needs some global-control customers"

    first = create_and_build(client, writer, segmentation_app, {"holdout_fraction": 0.3})
    assert first["skipped"] == {"opted_out": 3, "global_control": len(global_control), "frequency_capped": 0}
    first_members = all_members(client, writer, first["campaign_id"], limit=100)
    member_ids = {m["customer_id"] for m in first_members}
    assert member_ids == set(dormant) - opted_out - global_control
    treated = {m["customer_id"] for m in first_members if m["group"] == "treatment"}

    # A second campaign within the cap leaves out whoever the first one contacted (its treatment group only).
    second = create_and_build(client, writer, segmentation_app, {"frequency_cap_days": 14})
    assert second["skipped"]["frequency_capped"] == len(treated)
    second_ids = {m["customer_id"] for m in all_members(client, writer, second["campaign_id"], limit=100)}
    assert second_ids == member_ids - treated

    # Fifteen days later a 14-day cap no longer holds anyone back; a cap of 0 days never does.
    later = utcnow() + timedelta(days=15)
    third = create_and_build(client, writer, segmentation_app, {"frequency_cap_days": 14}, now=later)
    assert third["skipped"]["frequency_capped"] == 0
    uncapped = create_and_build(client, writer, segmentation_app, {"frequency_cap_days": 0})
    assert uncapped["skipped"]["frequency_capped"] == 0
    for campaign in (second, third, uncapped):
        assert campaign["skipped"]["opted_out"] == 3
        assert campaign["skipped"]["global_control"] == len(global_control)


def test_recommendations_are_read_in_bulk_and_skip_out_of_stock_items(client, writer, segmentation_app,
                                                                      monkeypatch):
    small_shop()
    # Milk is the shop's best seller and a repeat purchase: out of stock, nobody may be sent it.
    with db.session() as session:
        session.execute(update(Product).where(Product.sku == "MILK-1").values(stock=0))
    assert retrain_now(segmentation_app.config, as_of=AS_OF).status == "published"
    segmentation_app.config["CAMPAIGN_RECS_MGET_CHUNK"] = 4
    customer_list_reads = []

    def counting_reads(version, customer_ids):
        customer_list_reads.append(len(customer_ids))
        return customer_payloads(version, customer_ids)

    monkeypatch.setattr(campaign_build, "customer_payloads", counting_reads)
    campaign = create_and_build(client, writer, segmentation_app, {"holdout_fraction": 0.2,
                                                                  "recommendations": {"limit": 4}})
    treated = campaign["treatment_size"]
    assert treated > 4
    assert len(customer_list_reads) == math.ceil(treated / 4) and sum(customer_list_reads) == treated

    version = campaign["model_version"]
    for member in all_members(client, writer, campaign["campaign_id"], group="treatment", limit=100):
        assert "MILK-1" not in member["recommended_skus"]
        # Up to the limit: a customer who bought most of this ten-item catalogue leaves fewer to suggest.
        assert 1 <= len(member["recommended_skus"]) <= 4
        assert len(set(member["recommended_skus"])) == len(member["recommended_skus"])
        lists = decode_customer_lists(customer_payloads(version, [member["customer_id"]])[0])
        catalogue = ListReader().catalogue(version)
        personal = [catalogue.skus[item] for item in lists.for_you if catalogue.sellable[item]]
        # The model's own for-you list comes first; popular items only fill what it leaves.
        assert member["recommended_skus"][:len(personal[:4])] == personal[:4]


def test_members_csv_streams_every_member(client, writer, segmentation_app, shop):
    campaign = create_and_build(client, writer, segmentation_app,
                                {"holdout_fraction": 0.4, "offer": {"kind": "free_shipping", "valid_days": 7}})
    response = client.get(f"/v1/campaigns/{campaign['campaign_id']}/members.csv", headers=writer)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == campaign["treatment_size"] + campaign["control_size"]
    assert [int(row["rank"]) for row in rows] == list(range(1, len(rows) + 1))
    for row in rows:
        if row["group"] == "treatment":
            assert row["offer_kind"] == "free_shipping" and row["offer_valid_days"] == "7"
            assert row["recommended_skus"] and row["contacted_at"]
            assert row["recommendation_id"] == campaigns.member_recommendation_id(campaign["campaign_id"],
                                                                                    row["customer_id"])
        else:
            assert row["offer_kind"] == "" and row["recommended_skus"] == "" and row["recommendation_id"] == ""
    control_only = client.get(f"/v1/campaigns/{campaign['campaign_id']}/members.csv?group=control", headers=writer)
    control_rows = list(csv.DictReader(io.StringIO(control_only.get_data(as_text=True))))
    assert len(control_rows) == campaign["control_size"] and {row["group"] for row in control_rows} <= {"control"}


def test_unknown_campaign_scopes_and_bad_cursor(client, writer, make_key, segmentation_app, shop):
    assert client.get("/v1/campaigns/cmp-nope", headers=writer).status_code == 404
    assert client.get("/v1/campaigns/cmp-nope/report", headers=writer).status_code == 404
    reader = make_key("segments:read")
    assert post_campaign(client, reader, {}).status_code == 403
    assert client.get("/v1/campaigns/cmp-nope", headers=reader).status_code == 403
    campaign = create_and_build(client, writer, segmentation_app, {})
    response = client.get(f"/v1/campaigns/{campaign['campaign_id']}/members?cursor=!!bad", headers=writer)
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_cursor"
    bad_group = client.get(f"/v1/campaigns/{campaign['campaign_id']}/members?group=everyone", headers=writer)
    assert bad_group.status_code == 422


def test_report_compares_orders_since_launch(client, writer, segmentation_app, shop):
    campaign = create_and_build(client, writer, segmentation_app, {"holdout_fraction": 0.5}, now=AS_OF)
    members = all_members(client, writer, campaign["campaign_id"], limit=100)
    treatment = [m["customer_id"] for m in members if m["group"] == "treatment"]
    control = [m["customer_id"] for m in members if m["group"] == "control"]
    assert len(treatment) >= 3 and len(control) >= 2
    after = AS_OF + timedelta(days=2)
    add_orders([
        {"order_id": "wb-1", "customer_id": treatment[0], "placed_at": after, "skus": ["PHN-1"]},        # 699
        {"order_id": "wb-2", "customer_id": treatment[0], "placed_at": after, "skus": ["TEA-1"]},        # 48
        {"order_id": "wb-3", "customer_id": treatment[1], "placed_at": after, "skus": ["CAP-1"]},        # 59
        {"order_id": "wb-4", "customer_id": control[0], "placed_at": after, "skus": ["SOCK-1"]},         # 15
        # Not counted: refunded, and placed before the launch.
        {"order_id": "wb-5", "customer_id": treatment[2], "placed_at": after, "skus": ["PHN-1"], "status": "refunded"},
        {"order_id": "wb-6", "customer_id": control[1], "placed_at": AS_OF - timedelta(hours=1), "skus": ["CAP-1"]},
    ])
    report = client.get(f"/v1/campaigns/{campaign['campaign_id']}/report", headers=writer).json
    assert report["treatment"]["members"] == len(treatment) and report["control"]["members"] == len(control)
    assert report["treatment"]["converters"] == 2 and report["treatment"]["orders"] == 3
    assert report["treatment"]["revenue"] == pytest.approx(699 + 48 + 59)
    assert report["control"]["converters"] == 1 and report["control"]["revenue"] == pytest.approx(15)
    uplift = report["uplift"]
    assert uplift["conversion_uplift"] == pytest.approx(2 / len(treatment) - 1 / len(control))
    assert uplift["ci95_low"] < uplift["conversion_uplift"] < uplift["ci95_high"]
    assert uplift["ci_method"] == "newcombe-wilson"
    assert uplift["verdict"] == "insufficient_data" and "Too few" in uplift["conclusion"]


# ---- webhooks ------------------------------------------------------------------------------------


class Receiver:
    """A tiny local HTTP server that records POSTs and answers with the statuses it is given, in turn."""

    def __init__(self, statuses=(200,)) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/segrec"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def verified_batches(self) -> list[dict]:
        """Every received body whose signature checks out with the shared secret (asserting they all do)."""
        batches = []
        for headers, body in self.requests:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Segrec-Signature"], expected)
            batches.append(json.loads(body))
        return batches


@pytest.fixture
def webhook_app(segmentation_app, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    segmentation_app.config.update(WEBHOOK_FORBIDDEN_NETWORKS=TEST_FORBIDDEN_NETWORKS,
                                   WEBHOOK_ALLOWED_NETWORKS=TEST_ALLOWED_NETWORKS, WEBHOOK_BATCH_SIZE=4,
                                   WEBHOOK_RETRY_BACKOFF_SECONDS=1.0, WEBHOOK_MAX_ATTEMPTS=3)
    return segmentation_app


def test_webhook_batches_are_signed_and_delivered(client, writer, webhook_app, shop):
    with Receiver() as receiver:
        response = post_campaign(client, writer, {"holdout_fraction": 0.2, "webhook_url": receiver.url,
                                                  "offer": {"kind": "amount_off", "value": 30}})
        campaign_id = response.json["campaign_id"]
        result = campaigns.build_campaign(campaign_id, webhook_app.config)
        assert len(result.webhook_batches) == math.ceil(result.treatment_size / 4) >= 2
        for batch_no in result.webhook_batches:
            assert campaigns.deliver_webhook_batch(campaign_id, batch_no, webhook_app.config) == "delivered"
        # A redelivered task does not send a delivered batch again.
        assert campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config) == "delivered"
        batches = receiver.verified_batches()
    assert len(batches) == len(result.webhook_batches)
    sent = [member for batch in batches for member in batch["members"]]
    treatment = all_members(client, writer, campaign_id, group="treatment", limit=100)
    assert [m["customer_id"] for m in sent] == [m["customer_id"] for m in treatment]
    assert all(m["offer"]["value"] == 30 and m["recommended_skus"] for m in sent)
    webhook = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json["webhook"]
    assert webhook["url"] == receiver.url and webhook["by_status"] == {"delivered": len(batches)}
    assert all(delivery["attempts"] == 1 and delivery["last_status_code"] == 200
               for delivery in webhook["deliveries"])


def test_webhook_failures_are_recorded_retried_and_given_up(client, writer, webhook_app, shop):
    with Receiver(statuses=(503, 200)) as receiver:
        campaign_id = post_campaign(client, writer, {"webhook_url": receiver.url,
                                                     "frequency_cap_days": 0}).json["campaign_id"]
        campaigns.build_campaign(campaign_id, webhook_app.config)
        with pytest.raises(campaigns.WebhookRetry) as retry:
            campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config)
        assert retry.value.countdown == 1.0
        delivery = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json["webhook"]["deliveries"][0]
        assert delivery["status"] == "retrying" and delivery["last_status_code"] == 503
        assert campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config) == "delivered"
        first, second = receiver.verified_batches()[:2]
        assert first == second  # a retry sends the same bytes
    with Receiver(statuses=(500,)) as failing:
        campaign_id = post_campaign(client, writer, {"webhook_url": failing.url,
                                                     "frequency_cap_days": 0}).json["campaign_id"]
        campaigns.build_campaign(campaign_id, webhook_app.config)
        for _attempt in range(2):
            with pytest.raises(campaigns.WebhookRetry):
                campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config)
        assert campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config) == "failed"
    with Receiver(statuses=(400,)) as refusing:
        campaign_id = post_campaign(client, writer, {"webhook_url": refusing.url,
                                                     "frequency_cap_days": 0}).json["campaign_id"]
        campaigns.build_campaign(campaign_id, webhook_app.config)
        assert campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config) == "failed"
    deliveries = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json["webhook"]["deliveries"]
    assert deliveries[0]["status"] == "failed" and deliveries[0]["attempts"] == 1
    assert deliveries[0]["last_error"] == "http_4xx"


def test_delivery_connects_to_the_checked_address_with_the_original_host(webhook_app):
    """The URL's host name is sent as Host, but the connection goes to the address checked (no second lookup)."""
    with Receiver() as receiver:
        port = receiver.server.server_port
        target = campaigns.WebhookTarget(url=f"http://crm.example.invalid:{port}/hooks?x=1", scheme="http",
                                         host="crm.example.invalid", port=port, address="127.0.0.1")
        status, _headers = campaigns.post_to_checked_address(target, b"{}", {"Content-Type": "application/json"}, 5)
        assert status == 200
        assert receiver.requests[0][0]["Host"] == f"crm.example.invalid:{port}"


def test_redirects_are_not_followed_and_failures_show_a_status_class(client, writer, webhook_app, shop):
    with Receiver(statuses=(302,)) as redirecting:
        campaign_id = post_campaign(client, writer, {"webhook_url": redirecting.url,
                                                     "frequency_cap_days": 0}).json["campaign_id"]
        campaigns.build_campaign(campaign_id, webhook_app.config)
        assert campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config) == "failed"
        assert len(redirecting.requests) == 1
    delivery = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json["webhook"]["deliveries"][0]
    assert (delivery["last_status_code"], delivery["last_error"]) == (302, "http_3xx")
    # A closed port: the record says connect_error, not the socket's message (which would let a caller probe ports).
    with Receiver() as receiver:
        closed_url = receiver.url
    campaign_id = post_campaign(client, writer, {"webhook_url": closed_url, "frequency_cap_days": 0}).json["campaign_id"]
    campaigns.build_campaign(campaign_id, webhook_app.config)
    with pytest.raises(campaigns.WebhookRetry):
        campaigns.deliver_webhook_batch(campaign_id, 1, webhook_app.config)
    delivery = client.get(f"/v1/campaigns/{campaign_id}", headers=writer).json["webhook"]["deliveries"][0]
    assert (delivery["status"], delivery["last_error"]) == ("retrying", "connect_error")


def test_webhook_needs_a_secret_on_the_server(client, writer, webhook_app, monkeypatch):
    monkeypatch.delenv("WEBHOOK_SECRET")
    response = post_campaign(client, writer, {"webhook_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 503 and "WEBHOOK_SECRET" in response.json["error"]["message"]


# ---- a real worker -------------------------------------------------------------------------------


def test_a_real_worker_builds_the_campaign_and_delivers_the_webhook(app_config, make_key, database_url,
                                                                     redis_url, redis_prefix, tmp_path,
                                                                     monkeypatch):
    from services.segmentation.app import create_app

    queue = f"campaigns-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    app = create_app({**app_config, "CELERY_QUEUE": queue, "WEBHOOK_FORBIDDEN_NETWORKS": TEST_FORBIDDEN_NETWORKS,
                      "WEBHOOK_ALLOWED_NETWORKS": TEST_ALLOWED_NETWORKS, "WEBHOOK_BATCH_SIZE": 5})
    small_shop()
    assert retrain_now(app.config, as_of=AS_OF).status == "published"
    client = app.test_client()
    headers = make_key("campaigns:write")
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix,
           "CELERY_QUEUE": queue, "WEBHOOK_SECRET": SECRET, "WEBHOOK_FORBIDDEN_NETWORKS": TEST_FORBIDDEN_NETWORKS,
           "WEBHOOK_ALLOWED_NETWORKS": TEST_ALLOWED_NETWORKS, "WEBHOOK_BATCH_SIZE": "5"}
    log_path = tmp_path / "worker.log"
    with Receiver() as receiver, open(log_path, "w") as log_file:
        worker = subprocess.Popen(
            [str(CELERY), "-A", "services.pipeline.worker", "worker", "--pool", "solo", "-Q", queue,
             "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", "INFO"],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            response = post_campaign(client, headers, {"holdout_fraction": 0.25, "webhook_url": receiver.url,
                                                       "offer": {"kind": "percent_off", "value": 10}})
            assert response.status_code == 202
            campaign_id = response.json["campaign_id"]
            deadline = time.monotonic() + 60
            campaign = response.json
            while time.monotonic() < deadline:
                campaign = client.get(f"/v1/campaigns/{campaign_id}", headers=headers).json
                webhook = campaign.get("webhook") or {}
                delivered = webhook.get("by_status", {}).get("delivered", 0)
                if campaign["status"] != "building" and delivered == webhook.get("batches", -1):
                    break
                assert worker.poll() is None, log_path.read_text()
                time.sleep(0.25)
            assert campaign["status"] == "ready", (campaign, log_path.read_text()[-3000:])
            assert campaign["webhook"]["batches"] == math.ceil(campaign["treatment_size"] / 5)
            assert campaign["webhook"]["by_status"] == {"delivered": campaign["webhook"]["batches"]}, \
                log_path.read_text()[-3000:]
            sent = {member["customer_id"] for batch in receiver.verified_batches() for member in batch["members"]}
            treatment = all_members(client, headers, campaign_id, group="treatment", limit=100)
            assert sent == {member["customer_id"] for member in treatment}
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

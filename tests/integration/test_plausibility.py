"""Shop-local time, plausibility at the edge and quarantine in the retrain, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select, update

from shared.extensions import db
from shared.ingest import import_csv, refresh_customer_aggregates
from shared.models import Customer, CustomerScore, Order, OrderLine, Product
from services.pipeline.retrain import retrain_now
from tests.factories import AS_OF, add_products, small_shop

SHANGHAI = ZoneInfo("Asia/Shanghai")
ORDER_HEADER = ["order_id", "customer_id", "placed_at", "sku", "quantity", "unit_price", "status"]


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rejects(path) -> dict[str, str]:
    """line number -> reason."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["line"]: row["reason"] for row in csv.DictReader(handle)}


@pytest.fixture
def writer(make_key):
    return make_key("ingest:write")


def stored_placed_at(order_id: str) -> datetime:
    with db.session() as session:
        return session.get(Order, order_id).placed_at


def score_of(run_id: str, customer_id: str) -> CustomerScore:
    with db.session() as session:
        return session.get(CustomerScore, (run_id, customer_id))


# ---- (a) naive shop-local times ------------------------------------------------------------------


def test_naive_local_times_from_the_last_hour_are_shop_time_and_the_retrain_publishes(
        segmentation_app, writer, tmp_path):
    add_products()
    # Shanghai wall-clock time half an hour ago, as a Chinese shop's export writes it (no offset).
    local = datetime.now(SHANGHAI).replace(tzinfo=None, microsecond=0) - timedelta(minutes=30)
    expected_utc = local - timedelta(hours=8)  # Asia/Shanghai is UTC+8 all year
    path = write_csv(tmp_path / "orders.csv", ORDER_HEADER, [
        ["local-1", "C-csv", local.isoformat(sep=" "), "TEA-1", "1", "48", "paid"],
        ["local-2", "C-csv", local.isoformat(), "TEA-1", "2", "48", "paid"],
    ])
    summary = import_csv("orders", path, db, progress=False, config=segmentation_app.config)
    assert (summary.created, summary.rejected) == (2, 0)
    response = segmentation_app.test_client().post("/v1/orders", headers=writer, json=[{
        "order_id": "local-3", "customer_id": "C-rest", "placed_at": local.isoformat(),
        "lines": [{"sku": "TEA-1", "quantity": 1, "unit_price": 48}],
    }])
    assert response.status_code == 200 and response.json["created"] == 1, response.json
    for order_id in ("local-1", "local-2", "local-3"):
        assert stored_placed_at(order_id) == expected_utc

    run = retrain_now(segmentation_app.config)
    assert run.status == "published", run.reason
    assert run.metrics["quarantine"]["count"] == 0
    expected_recency = (run.as_of - expected_utc).total_seconds() / 86_400
    for customer_id in ("C-csv", "C-rest"):
        score = score_of(run.run_id, customer_id)
        assert score.recency_days >= 0
        assert score.recency_days == pytest.approx(expected_recency, abs=1e-6)


def test_purchase_days_count_shop_local_days(segmentation_app, writer):
    # 10:00Z is 18:00 in Shanghai and 18:00Z is 02:00 the next day there: two shop days, not one.
    client = segmentation_app.test_client()
    batch = [
        {"order_id": f"d{index}", "customer_id": "c1", "placed_at": placed_at,
         "lines": [{"sku": "tea-1", "quantity": 1, "unit_price": 30}]}
        for index, placed_at in enumerate(["2025-03-01T10:00:00Z", "2025-03-01T18:00:00Z", "2025-03-02 01:00:00"])
    ]
    response = client.post("/v1/orders", headers=writer, json=batch)
    assert response.json["created"] == 3, response.json
    with db.session() as session:
        customer = session.get(Customer, "c1")
        # 2025-03-02 01:00 Shanghai is 2025-03-01T17:00Z: the same shop day as the 18:00Z order.
        assert customer.purchase_days == 2
        assert customer.first_paid_at == datetime(2025, 3, 1, 10)
        assert customer.last_paid_at == datetime(2025, 3, 1, 18)


# ---- (b) poison rows that bypassed the edge ----------------------------------------------------------


def _poison(order_id: str, customer_id: str, placed_at: datetime, quantity: int, unit_price: float,
            total: float) -> None:
    """Write an order straight into the tables, as no edge check would let it in."""
    now = datetime(2026, 11, 1)
    with db.session() as session:
        session.execute(insert(Customer).values(customer_id=customer_id, placeholder=True, attributes={},
                                                updated_at=now))
        session.execute(insert(Order).values(order_id=order_id, customer_id=customer_id, placed_at=placed_at,
                                             status="paid", total=total, content_hash="poison", updated_at=now))
        session.execute(insert(OrderLine).values(order_id=order_id, line_no=1, sku="TEA-1", quantity=quantity,
                                                 unit_price=unit_price))
        refresh_customer_aggregates(session, [customer_id])


@pytest.mark.parametrize("fit_sample", [None, 3], ids=["fit-on-all", "fit-on-a-sample"])
def test_poison_orders_are_quarantined_and_the_retrain_publishes(segmentation_app, fit_sample):
    config = segmentation_app.config
    if fit_sample:
        # A shop above FIT_SAMPLE_CUSTOMERS is fitted on a sample read shard by shard: the quarantine
        # still counts every customer, and every customer is still scored.
        config = {**config, "FIT_SAMPLE_CUSTOMERS": fit_sample, "SCORING_SHARD_SIZE": 4}
    small_shop()
    _poison("p-ancient", "X-ancient", datetime(1700, 1, 1), 1, 48.0, 48.0)
    _poison("p-future", "X-future", AS_OF + timedelta(hours=5), 1, 48.0, 48.0)
    _poison("p-tiny", "X-tiny", AS_OF - timedelta(days=3), 3, 1e-320, 0.0)
    _poison("p-huge", "X-huge", AS_OF - timedelta(days=2), 1, 999_999_999_999.99, 999_999_999_999.99)
    _poison("p-swapped", "X-swapped", AS_OF - timedelta(days=9), 1, 48.0, 48.0)
    with db.session() as session:
        # Aggregates that contradict each other (a hand-edited row).
        session.execute(update(Customer).where(Customer.customer_id == "X-swapped").values(
            first_paid_at=AS_OF - timedelta(days=1), last_paid_at=AS_OF - timedelta(days=10)))

    run = retrain_now(config, as_of=AS_OF)

    assert run.status == "published", run.reason
    with db.session() as session:
        customers = session.query(Customer).count()
        scored = session.query(CustomerScore).filter(CustomerScore.run_id == run.run_id).count()
    assert scored == customers - 3  # all but the three quarantined customers
    sample = run.metrics["customer_models"].get("fitted_on_sample")
    fit_step = next(step for step in run.steps if step["name"] == "fit_customer_models")
    if fit_step["detail"]["peak_rss_mb"] is not None:  # None where /proc is missing (not Linux)
        assert fit_step["detail"]["peak_rss_mb"] > 0
    if fit_sample:
        assert sample["customers"] == customers and sample["limit"] == fit_sample
        assert 0 < sample["sampled"] < customers - 3
        assert fit_step["rows"] == sample["sampled"]
    else:
        assert sample is None
        assert fit_step["rows"] == customers - 3
    quarantine = run.metrics["quarantine"]
    assert quarantine["reasons"] == {
        "first_paid_at before MIN_PLAUSIBLE_DATE": 1,
        "last_paid_at after the run's as_of (negative recency)": 1,
        "first_paid_at after last_paid_at": 1,
        "placed_at before MIN_PLAUSIBLE_DATE": 1,
    }
    assert quarantine["count"] == 4
    assert sorted((entry.get("customer_id") or entry.get("order_id"), entry["reason"])
                  for entry in quarantine["sample"]) == [
        ("X-ancient", "first_paid_at before MIN_PLAUSIBLE_DATE"),
        ("X-future", "last_paid_at after the run's as_of (negative recency)"),
        ("X-swapped", "first_paid_at after last_paid_at"),
        ("p-ancient", "placed_at before MIN_PLAUSIBLE_DATE"),
    ]
    assert score_of(run.run_id, "X-future") is None and score_of(run.run_id, "X-ancient") is None
    # The tiny and the huge orders break no step's assumption: they are scored as they are.
    assert score_of(run.run_id, "X-tiny").monetary == 0.0
    assert score_of(run.run_id, "X-huge").monetary == pytest.approx(999_999_999_999.99)


# ---- (c) each edge rejection, per record ---------------------------------------------------------------


def good_order(order_id: str = "ok-1", **changes) -> dict:
    record = {"order_id": order_id, "customer_id": "c1", "placed_at": "2025-03-01T10:00:00Z",
              "lines": [{"sku": "tea-1", "quantity": 1, "unit_price": 30.0}]}
    record.update(changes)
    return record


ORDER_REJECTIONS = [
    (good_order("bad-1", placed_at="1700-01-01T00:00:00Z"), "placed_at", "is before 2000-01-01 (MIN_PLAUSIBLE_DATE)"),
    (good_order("bad-2", placed_at="1999-12-31T23:59:59"), "placed_at", "is before 2000-01-01 (MIN_PLAUSIBLE_DATE)"),
    (good_order("bad-3", placed_at="2999-01-01T00:00:00Z"), "placed_at", "is in the future"),
    (good_order("bad/4"), "order_id", 'must not contain "/"'),
    (good_order("bad-5", customer_id="c\x07"), "customer_id", "must not contain a control character (U+0007)"),
    (good_order("bad-6", lines=[{"sku": "tea-1", "quantity": 1, "unit_price": 1e-320}]), "lines", None),
    (good_order("bad-7", lines=[{"sku": "tea-1", "quantity": 1, "unit_price": 0.004}]), "lines", None),
    (good_order("bad-8", lines=[{"sku": "tea-1", "quantity": 1, "unit_price": 1e12}]), "lines", None),
    (None, "_record", "Field may not be null."),
]


def test_orders_outside_the_limits_are_rejected_one_by_one(segmentation_app, writer):
    client = segmentation_app.test_client()
    batch = [good_order("ok-1")] + [record for record, _field, _message in ORDER_REJECTIONS] + [good_order("ok-2")]
    response = client.post("/v1/orders", headers=writer, json={"records": batch})
    assert response.status_code == 200, response.json
    assert response.json["accepted"] == 2 and response.json["created"] == 2
    rejected = {item["index"]: item["errors"] for item in response.json["rejected"]}
    assert sorted(rejected) == list(range(1, len(ORDER_REJECTIONS) + 1))
    for index, (_record, field, message) in enumerate(ORDER_REJECTIONS, start=1):
        assert list(rejected[index]) == [field], rejected[index]
        if message is not None:
            assert rejected[index][field] == [message]
    assert rejected[6]["lines"]["0"]["unit_price"] == [
        "Must be greater than or equal to 0.01 and less than or equal to 10000000."]


def test_a_lone_surrogate_in_an_id_is_rejected_per_record(segmentation_app, writer):
    body = ('[{"order_id":"a\\ud800","customer_id":"c1","placed_at":"2025-03-01T10:00:00Z",'
            '"lines":[{"sku":"tea-1","quantity":1,"unit_price":5}]},'
            '{"order_id":"ok","customer_id":"c1","placed_at":"2025-03-01T10:00:00Z",'
            '"lines":[{"sku":"tea-1","quantity":1,"unit_price":5}]}]')
    response = segmentation_app.test_client().post(
        "/v1/orders", data=body, headers={**writer, "Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json["created"] == 1
    assert response.json["rejected"] == [{"index": 0, "id": "a\\ud800",
                                          "errors": {"order_id": ["must not contain a lone surrogate (U+D800)"]}}]


def test_customer_attributes_have_size_and_depth_limits(segmentation_app, writer):
    deep: dict = {"leaf": 1}
    for _level in range(5):
        deep = {"x": deep}  # six levels
    batch = [
        {"customer_id": "deep", "attributes": deep},
        {"customer_id": "big", "attributes": {"notes": "y" * 20_000}},
        {"customer_id": "fine", "attributes": {"a": {"b": {"c": {"d": {"e": 1}}}}}, "joined_at": "2024-05-01 09:00:00"},
    ]
    response = segmentation_app.test_client().post("/v1/customers", headers=writer, json=batch)
    assert response.json["accepted"] == 1, response.json
    assert {item["id"]: item["errors"] for item in response.json["rejected"]} == {
        "deep": {"attributes": ["is nested deeper than 5 levels"]},
        "big": {"attributes": ["is 20,012 bytes as JSON; at most 16,384"]},
    }
    with db.session() as session:
        assert session.get(Customer, "fine").joined_at == datetime(2024, 5, 1, 1, 0)  # Shanghai 09:00 is 01:00 UTC


def test_products_and_promotions_outside_the_limits_are_rejected(recommend_app, writer):
    client = recommend_app.test_client()
    products = [
        {"sku": "ok-1", "name": "Tea", "price": 10, "stock": 5},
        {"sku": "bad-stock", "name": "Tea", "price": 10, "stock": 1e30},
        {"sku": "bad-price", "name": "Tea", "price": 1e12},
        {"sku": "bad/sku", "name": "Tea", "price": 10},
    ]
    response = client.post("/v1/products", headers=writer, json=products)
    assert response.status_code == 200, response.json
    assert response.json["accepted"] == 1
    assert {item["id"]: sorted(item["errors"]) for item in response.json["rejected"]} == {
        "bad-stock": ["stock"], "bad-price": ["price"], "bad/sku": ["sku"]}
    promotion = {"promotion_id": "P1", "kind": "spend_threshold", "threshold": 200, "discount": 30,
                 "starts_at": "2025-01-01T00:00:00Z", "ends_at": "2025-12-31T00:00:00Z"}
    promotions = [
        promotion,
        {**promotion, "promotion_id": "P-old", "starts_at": "0165-01-01T00:00:00Z"},
        {**promotion, "promotion_id": "P-far", "ends_at": "2166-01-01T00:00:00Z"},
        {**promotion, "promotion_id": "P-rich", "threshold": 2e7, "discount": 1},
    ]
    response = client.post("/v1/promotions", headers=writer, json=promotions)
    assert response.json["accepted"] == 1, response.json
    assert {item["id"]: item["errors"] for item in response.json["rejected"]} == {
        "P-old": {"starts_at": ["is before 2000-01-01 (MIN_PLAUSIBLE_DATE)"]},
        "P-far": {"ends_at": ["is more than 3660 days ahead"]},
        "P-rich": {"threshold": ["Must be greater than 0 and less than or equal to 10000000."]},
    }


def test_csv_rows_outside_the_limits_are_rejected_and_the_rest_imported(database_url, tmp_path):
    rows = [
        ["ok-1", "c1", "2025-03-01T10:00:00Z", "tea-1", "1", "30", "paid"],
        ["bad-1", "c1", "1700-01-01T00:00:00Z", "tea-1", "1", "30", "paid"],
        ["bad-2", "c1", "2999-01-01T00:00:00", "tea-1", "1", "30", "paid"],
        ["bad/3", "c1", "2025-03-01T10:00:00Z", "tea-1", "1", "30", "paid"],
        ["bad-4", "c1", "2025-03-01T10:00:00Z", "tea-1", "1", "1e-320", "paid"],
        ["bad-5", "c\x01", "2025-03-01T10:00:00Z", "tea-1", "1", "30", "paid"],
        ["ok-2", "c1", "2025-03-01 18:00:00", "tea-1", "1", "30", "paid"],
    ]
    summary = import_csv("orders", write_csv(tmp_path / "o.csv", ORDER_HEADER, rows), db, progress=False)
    assert (summary.created, summary.rejected) == (2, 5)
    assert read_rejects(summary.rejects_path) == {
        "3": "placed_at is before 2000-01-01 (MIN_PLAUSIBLE_DATE) (got '1700-01-01T00:00:00Z')",
        "4": "placed_at is in the future (got '2999-01-01T00:00:00')",
        "5": 'order_id must not contain "/"',
        "6": "unit_price must be a number from 0.01 to 10,000,000 (got '1e-320')",
        "7": "customer_id must not contain a control character (U+0001)",
    }
    assert stored_placed_at("ok-2") == datetime(2025, 3, 1, 10, 0)  # Shanghai 18:00 is 10:00 UTC
    products = write_csv(tmp_path / "p.csv", ["sku", "name", "category", "price", "stock"], [
        ["ok", "Tea", "tea", "10", "5"],
        ["huge-stock", "Tea", "tea", "10", "1" + "0" * 30],
        ["huge-price", "Tea", "tea", "1e12", "5"],
    ])
    summary = import_csv("products", products, db, progress=False)
    assert (summary.created, summary.rejected) == (1, 2)
    with db.session() as session:
        assert session.execute(select(Product.sku).where(Product.placeholder.is_(False))).scalars().all() == ["ok"]

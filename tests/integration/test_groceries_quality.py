"""The quality bar on real data, through the service's own import, training and HTTP path.

Protocol of tests/data/README.md: baskets (member and date) sorted by date, train on the first
80 %, hide one item (seeded) in each later basket of two or more items, count a hit when the hidden
item is in the top 10 of POST /v1/cart/recommendations. The best public figure there is HR@10 = 0.390.
"""

from __future__ import annotations

import csv
from datetime import datetime, timedelta

import numpy as np
from click.testing import CliRunner

from services.admin.cli import main as segrec
from services.pipeline.retrain import retrain_now
from services.recommend.evaluation import leave_one_out_cases, time_ordered_split
from tests.conftest import TEST_DATA

GROCERIES = TEST_DATA / "groceries.csv"
BEST_PUBLIC_HIT_RATE = 0.390
# The bar the product promises on this protocol (issue 10): 1,212 of the 2,954 cases.
TARGET_HIT_RATE = 0.41


def sku_of(name: str) -> str:
    """The item's name as a sku: ids may not contain "/" (as in "fruit/vegetable juice")."""
    return name.replace("/", "|")


def write_import_files(data: dict, train_baskets: np.ndarray, folder) -> tuple:
    """products.csv (flat price 1) and orders.csv (one row per line) for the training baskets."""
    products = folder / "products.csv"
    with products.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "category", "price"])
        for name in data["item_names"]:
            writer.writerow([sku_of(name), name, "grocery", "1.00"])
    orders = folder / "orders.csv"
    epoch = datetime(1970, 1, 1)
    with orders.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "customer_id", "placed_at", "sku", "quantity", "unit_price"])
        for basket in train_baskets:
            member = int(data["customers"][basket])
            day = epoch + timedelta(days=float(data["times"][basket]), hours=12)
            order_id = f"m{member}-{day:%Y%m%d}"
            items = data["baskets"].indices[data["baskets"].indptr[basket]:data["baskets"].indptr[basket + 1]]
            for item in items:
                writer.writerow([order_id, f"m{member}", day.isoformat(sep=" "), sku_of(data["item_names"][item]), 1,
                                 "1.00"])
    return products, orders


def test_cart_cross_sell_beats_every_public_figure_on_groceries(
        segmentation_app, recommend_app, make_key, database_url, tmp_path, monkeypatch):
    from tests.perf.groceries_eval import load_groceries

    data = load_groceries(GROCERIES)
    train_index, test_index = time_ordered_split(data["times"], 0.8)
    cases = leave_one_out_cases(data["baskets"], test_index, seed=42)
    assert len(train_index) == 11_970 and len(cases) == 2_954

    products, orders = write_import_files(data, train_index, tmp_path)
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    for kind, path in (("products", products), ("orders", orders)):
        result = runner.invoke(segrec, ["import", kind, str(path), "--no-progress"])
        assert result.exit_code == 0, result.output

    as_of = datetime(1970, 1, 1) + timedelta(days=float(data["times"][train_index].max()) + 1)
    run = retrain_now(segmentation_app.config, as_of=as_of)
    assert run.status == "published", run.reason

    # 2,954 cart requests from one key within a minute or two: above the storefront's default per-key budget.
    recommend_app.config["RATE_LIMIT_RECS_READ"] = "10000/minute"
    client = recommend_app.test_client()
    storefront = make_key("recs:read")
    names = [sku_of(name) for name in data["item_names"]]
    hits = 0
    for case in cases:
        cart = [{"sku": names[item], "quantity": 1} for item in case.cart_items]
        body = client.post("/v1/cart/recommendations", json={"items": cart, "limit": 10}, headers=storefront).json
        assert body["fallback"] is None
        hits += names[case.hidden_item] in {item["sku"] for item in body["cross_sell"]}
    hit_rate = hits / len(cases)
    print(f"groceries HR@10 through HTTP: {hit_rate:.4f} ({hits}/{len(cases)})")
    assert hit_rate > BEST_PUBLIC_HIT_RATE
    assert hit_rate >= TARGET_HIT_RATE
    # The known answer of this deterministic protocol (seed 42): a change of score or ranking moves it.
    assert (hits, len(cases)) == (1216, 2954)
    # Per-shop selection keeps today's model on groceries (no candidate beats it beyond the noise).
    assert run.metrics["model_selection"]["chosen"]["params"] == {"beta": None}
    # The evaluation stored with the run measures the same model on its own split of the imported orders
    # (2,370 sampled held-out cases), next to popularity on the same cases. Orders of one day tie on time
    # and are ordered by a hash of their id (services/recommend/lines.py), so both databases give one answer.
    assert run.metrics["recommendations"]["evaluation"] == {
        "cases": 2370, "hr_at_10": 0.4004, "ndcg_at_10": 0.2127, "coverage_at_10": 0.1737,
        "popularity_hr_at_10": 0.3586, "popularity_ndcg_at_10": 0.1981, "hr_lift_over_popularity": 0.0418,
        "model": {"name": "co_purchase", "params": {"beta": None}},
    }

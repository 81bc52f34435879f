"""Small factories that build a shop through the same ingest functions the API uses."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from shared import ingest
from shared.extensions import db

AS_OF = datetime(2026, 11, 1, 12, 0, 0)

PRODUCTS = [
    # sku, name, category, price, cost, repeat_purchase
    ("PHN-1", "Phone X", "phones", 699.0, 520.0, False),
    ("CASE-1", "Phone X case", "accessories", 29.0, 8.0, False),
    ("CHG-1", "Fast charger", "accessories", 39.0, 12.0, False),
    ("TEA-1", "Oolong tea 100g", "tea", 48.0, 20.0, True),
    ("POT-1", "Clay teapot", "teaware", 128.0, 50.0, False),
    ("CUP-1", "Tea cups (4)", "teaware", 36.0, 14.0, False),
    ("MILK-1", "Milk 1L", "grocery", 12.0, 9.0, True),
    ("BREAD-1", "Bread", "grocery", 9.0, 5.0, True),
    ("SOCK-1", "Socks", "apparel", 15.0, 4.0, False),
    ("CAP-1", "Cap", "apparel", 59.0, 20.0, False),
]


def add_products(products=PRODUCTS, stock: int | None = 100) -> None:
    """Insert the catalogue."""
    records = [
        (index, {"sku": sku, "name": name, "category": category, "price": price, "cost": cost, "stock": stock,
                 "active": True, "repeat_purchase": repeat})
        for index, (sku, name, category, price, cost, repeat) in enumerate(products)
    ]
    with db.session() as session:
        ingest.upsert_products(session, records)


def add_promotion(promotion_id="P200", threshold=200.0, discount=30.0, category=None) -> None:
    """An active spend-threshold promotion."""
    with db.session() as session:
        ingest.upsert_promotions(session, [(0, {
            "promotion_id": promotion_id, "kind": "spend_threshold", "threshold": threshold, "discount": discount,
            "starts_at": AS_OF - timedelta(days=400), "ends_at": datetime(2100, 1, 1), "category": category,
        })])


def add_orders(orders: list[dict]) -> None:
    """Insert orders given as {order_id, customer_id, placed_at, skus, status?}."""
    prices = {sku: price for sku, _name, _category, price, _cost, _repeat in PRODUCTS}
    records = []
    for index, order in enumerate(orders):
        lines = [{"sku": sku, "quantity": 1, "unit_price": prices.get(sku, 10.0)} for sku in order["skus"]]
        records.append((index, {"order_id": order["order_id"], "customer_id": order["customer_id"],
                                "placed_at": order["placed_at"], "status": order.get("status", "paid"),
                                "lines": lines}))
    with db.session() as session:
        for start in range(0, len(records), 1000):
            ingest.upsert_orders(session, records[start:start + 1000])


def small_shop(customers: int = 120, seed: int = 3) -> list[dict]:
    """A shop with complements (phone+case+charger, tea+teapot), staples and dormant customers."""
    add_products()
    add_promotion()
    rng = np.random.default_rng(seed)
    orders = []
    for customer in range(customers):
        customer_id = f"c{customer:04d}"
        # Every fourth customer stopped buying about 10 months ago.
        dormant = customer % 4 == 0
        order_count = int(rng.integers(1, 7))
        for number in range(order_count):
            days_ago = int(rng.integers(300, 700)) if dormant else int(rng.integers(1, 360))
            kind = rng.random()
            if kind < 0.3:
                skus = ["PHN-1", "CASE-1"] + (["CHG-1"] if rng.random() < 0.6 else [])
            elif kind < 0.6:
                skus = ["TEA-1", "POT-1"] if rng.random() < 0.5 else ["TEA-1", "CUP-1"]
            else:
                skus = ["MILK-1", "BREAD-1"] if rng.random() < 0.7 else ["SOCK-1"]
            if rng.random() < 0.5:
                skus.append("MILK-1")
            orders.append({
                "order_id": f"{customer_id}-{number}",
                "customer_id": customer_id,
                "placed_at": AS_OF - timedelta(days=days_ago, hours=int(rng.integers(0, 12))),
                "skus": list(dict.fromkeys(skus)),
            })
    add_orders(orders)
    return orders

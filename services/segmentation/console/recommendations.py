"""The recommendation preview: the storefront's own serving code, run in this process.

services/recommend/serving.Recommender reads the published lists from Redis (the same REDIS_URL and
REDIS_PREFIX the segmentation service is bound to, falling back to the database copy when Redis is
down), so what the console shows is exactly what the storefront API answers for the same request.
It keeps its own caches, separate from the recommend service's process.
"""

from __future__ import annotations

from flask import render_template, request

from services.recommend.serving import Recommender, Request
from services.recommend.store import ListReader
from services.segmentation.console import data
from services.segmentation.console.access import console_page
from services.segmentation.console.blueprint import bp
from shared.extensions import db

recommender = Recommender(ListReader())
PREVIEW_LIMIT = 10
MAX_CART_LINES = 20


def parse_cart(text: str) -> list[dict]:
    """Cart lines typed as 'SKU' or 'SKU quantity', one per line (quantity 1 when missing or unreadable)."""
    lines = []
    for raw_line in (text or "").splitlines()[:MAX_CART_LINES]:
        parts = raw_line.split()
        if not parts:
            continue
        quantity = 1
        if len(parts) > 1 and parts[-1].isdigit():
            quantity = max(1, int(parts[-1]))
        lines.append({"sku": parts[0], "quantity": quantity})
    return lines


@bp.get("/recommendations")
@console_page("recs:read")
def recommendations():
    """Pick a sku or build a cart: bought-together, bundles, cross-sell and add-ons as the storefront answers."""
    sku = (request.args.get("sku") or "").strip()
    cart_text = request.args.get("cart") or ""
    customer_id = (request.args.get("customer_id") or "").strip() or None
    answers = {}
    if sku:
        answers["bought_together"] = recommender.bought_together(sku, Request(limit=PREVIEW_LIMIT))
        answers["bundles"] = recommender.bundles(sku, 5)
    cart = parse_cart(cart_text)
    if cart:
        answers["cart"] = recommender.cart(customer_id, cart, Request(limit=PREVIEW_LIMIT))
    with db.session() as session:
        products = data.product_choices(session)
    return render_template("console/recommendations.html", sku=sku, cart_text=cart_text, customer_id=customer_id,
                           answers=answers, products=products)

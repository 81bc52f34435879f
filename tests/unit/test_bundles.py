"""Unit tests for bundles and ABC classes."""

import numpy as np
import pytest

from services.recommend.abc import InvalidRevenueError, abc_classes
from services.recommend.bundles import (
    BundleCatalogue,
    BundleOptions,
    BundlePricing,
    InvalidBundleInputError,
    build_bundles,
    margin_safe_discount,
)
from services.recommend.cooccurrence import CoPurchaseModel
from services.recommend.evaluation import synthetic_priced_catalogue


@pytest.fixture(scope="module")
def catalogue():
    data = synthetic_priced_catalogue(n_baskets=5000, random_state=7)
    model = CoPurchaseModel().fit(data["baskets"])
    n = model.n_items_
    return data, model, np.ones(n, bool), np.ones(n, bool)


def test_abc_pareto_and_zero_revenue():
    classes = abc_classes(np.array([0.0, 50.0, 30.0, 10.0, 6.0, 4.0]))
    assert classes.tolist() == ["C", "A", "A", "B", "B", "C"]
    assert abc_classes(np.array([100.0, 0.0])).tolist() == ["A", "C"]
    assert abc_classes(np.zeros(3)).tolist() == ["C", "C", "C"]
    with pytest.raises(InvalidRevenueError):
        abc_classes(np.array([-1.0]))


def test_margin_safe_discount_never_negative_and_respects_floor():
    assert margin_safe_discount(100.0, 95.0, 0.10, 0.08) == 0.0
    discount = margin_safe_discount(100.0, 85.0, 0.10, 0.08)
    assert 0 < discount < 0.10
    assert (100 * (1 - discount) - 85.0) / (100 * (1 - discount)) == pytest.approx(0.08)
    assert margin_safe_discount(100.0, 50.0, 0.10, 0.08) == pytest.approx(0.10)


def test_bundles_are_complementary_margin_safe_and_explained(catalogue):
    data, model, active, in_stock = catalogue
    bundles = build_bundles(model, BundleCatalogue(data["price"], data["cost"], data["category"], active, in_stock))
    assert bundles
    for bundle in bundles:
        categories = data["category"][bundle["items"]]
        assert len(set(categories)) == len(categories)
        assert 2 <= len(bundle["items"]) <= 3
        assert bundle["margin_after_discount"] >= 0.08 - 1e-9
        assert 0 < bundle["discount"] <= 0.10 + 1e-9
        assert bundle["bundle_price"] <= bundle["list_price"]
        assert "bought together" in bundle["reason"]


def test_unknown_cost_uses_default_margin(catalogue):
    data, model, active, in_stock = catalogue
    cost = np.full(model.n_items_, np.nan)
    bundles = build_bundles(
        model, BundleCatalogue(data["price"], cost, data["category"], active, in_stock),
        BundleOptions(pricing=BundlePricing(default_margin=0.30)),
    )
    # 30 % assumed margin leaves room for the full 10 % target discount.
    assert all(b["discount"] == pytest.approx(0.10, abs=1e-3) for b in bundles)


def test_slow_movers_are_preferred_and_named(catalogue):
    data, model, active, in_stock = catalogue
    abc = np.full(model.n_items_, "A")
    abc[2::3] = "C"  # second accessories of every main are slow movers
    bundles = build_bundles(
        model,
        BundleCatalogue(data["price"], data["cost"], data["category"], active, in_stock, abc=abc,
                        names=[f"sku{i}" for i in range(model.n_items_)]),
        BundleOptions(max_items=2, bundles_per_anchor=1),
    )
    slow = [b for b in bundles if b["anchor"] % 3 == 0 and b["items"][1] % 3 == 2]
    assert slow and all("clears slow-moving" in b["reason"] for b in slow)


def test_out_of_stock_items_are_never_bundled(catalogue):
    data, model, active, in_stock = catalogue
    in_stock = in_stock.copy()
    in_stock[1::3] = False
    bundles = build_bundles(model, BundleCatalogue(data["price"], data["cost"], data["category"], active, in_stock))
    assert all(not any(i % 3 == 1 and i < 180 for i in b["items"]) for b in bundles)


def test_invalid_metadata_raises(catalogue):
    data, model, active, in_stock = catalogue
    with pytest.raises(InvalidBundleInputError):
        build_bundles(model, BundleCatalogue(data["price"][:3], data["cost"], data["category"], active, in_stock))

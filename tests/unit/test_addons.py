"""Unit tests for 湊單 add-ons."""

import time

import numpy as np
import pytest

from services.recommend.addons import AddOnOptions, InvalidPromotionError, best_threshold_gap, suggest_add_ons

PROMOTIONS = [
    {"promotion_id": "p200", "threshold": 200, "discount": 30},
    {"promotion_id": "p300", "threshold": 300, "discount": 50},
    {"promotion_id": "toys", "threshold": 100, "discount": 15, "category": 7},
]


def test_picks_best_saving_per_gap():
    best = best_threshold_gap(185.0, PROMOTIONS, {7: 20.0})
    assert best["promotion_id"] == "p200" and best["gap"] == 15.0 and best["saving"] == 30.0


def test_tiers_count_incremental_saving_and_category_scope():
    best = best_threshold_gap(250.0, PROMOTIONS, {7: 95.0})
    # p300 is worth only 50 - 30 = 20 more for a 50 gap; toys: 15 for a 5 gap.
    assert best["promotion_id"] == "toys" and best["gap"] == 5.0


def test_none_when_every_threshold_reached():
    assert best_threshold_gap(350.0, PROMOTIONS, {7: 120.0}) is None
    assert suggest_add_ons(0.0, [1], np.ones(3), [1.0], np.zeros(3)) is None


def test_inactive_and_invalid_promotions():
    assert best_threshold_gap(10.0, [{"promotion_id": 1, "threshold": 50, "discount": 5, "active": False}]) is None
    with pytest.raises(InvalidPromotionError):
        best_threshold_gap(10.0, [{"promotion_id": 1, "threshold": 0, "discount": 5}])


def test_single_and_pair_close_gap_with_least_overshoot():
    price = np.array([0.0, 16.0, 9.0, 7.0, 40.0, 15.5])
    margin = np.full(6, 0.3)
    candidates = np.arange(6)
    affinity = np.ones(6)
    out = suggest_add_ons(15.0, candidates, price, affinity, margin, saving=30.0, options=AddOnOptions(n=10))
    combos = [tuple(s["items"]) for s in out]
    assert combos[0] == (5,)  # 0.5 over, single item
    assert (2, 3) in combos or (3, 2) in combos  # 9 + 7 = 16
    assert all(s["total_price"] >= 15.0 and s["overshoot"] <= 7.5 for s in out)
    assert all(0 not in s["items"] for s in out)  # free item never counts
    assert all(4 not in s["items"] for s in out)  # 40 overshoots too much
    assert all(s["saving"] == 30.0 and "unlock" in s["reason"] for s in out)


def test_affinity_and_margin_shift_ranking():
    price = np.array([15.0, 15.0])
    out = suggest_add_ons(15.0, [0, 1], price, [0.1, 1.0], np.array([0.3, 0.3]), options=AddOnOptions(allow_pairs=False))
    assert out[0]["items"] == [1]
    out = suggest_add_ons(15.0, [0, 1], price, [1.0, 1.0], np.array([0.6, 0.1]), options=AddOnOptions(allow_pairs=False))
    assert out[0]["items"] == [0]


def test_pair_search_is_bounded_and_fast():
    rng = np.random.default_rng(0)
    n = 50_000
    price = np.round(rng.uniform(1, 60, n), 2)
    start = time.perf_counter()
    out = suggest_add_ons(37.0, np.arange(n), price, rng.random(n), rng.random(n), options=AddOnOptions(max_pair_candidates=300))
    assert time.perf_counter() - start < 1.0
    assert len(out) == 5
    counts = {}
    for s in out:
        for item in s["items"]:
            counts[item] = counts.get(item, 0) + 1
    assert max(counts.values()) <= 2

"""The served add-on search answers exactly as the reference (the implementation before its cost was cut)."""

import numpy as np
import pytest

from services.recommend.addons import AddOnOptions, suggest_add_ons
from tests.unit import addons_reference


def random_case(rng: np.random.Generator) -> tuple[tuple, dict]:
    """A catalogue, a cart's candidates and a gap, with the awkward cases drawn often: duplicate candidates,
    free or negative prices, equal prices and affinities, unknown or infinite margins, no candidate at all."""
    size = int(rng.integers(3, 300))
    price = np.round(rng.uniform(-2, 60, size), int(rng.integers(0, 3)))
    price[rng.random(size) < 0.05] = 0.0
    cost = price * rng.uniform(0.2, 1.3, size)
    margin = 1.0 - cost / np.where(price > 0, price, 1.0)
    margin[rng.random(size) < 0.15] = np.nan
    margin[rng.random(size) < 0.01] = np.inf
    count = int(rng.integers(0, min(size, 80) + 1))
    candidates = rng.choice(size, count, replace=bool(rng.random() < 0.3))
    affinity = np.round(rng.uniform(-0.1, 1.0, count), int(rng.integers(1, 4)))
    if rng.random() < 0.1:
        affinity[:] = 0.0
    gap = float(np.round(rng.uniform(0.5, 90), 2))
    if count and rng.random() < 0.3:  # a gap equal to a candidate's price (boundaries of the price windows)
        gap = float(abs(price[candidates[0]])) or gap
    options = AddOnOptions(
        max_overshoot_fraction=float(rng.choice([0.0, 0.2, 0.5, 1.0])),
        n=int(rng.integers(0, 9)),
        allow_pairs=bool(rng.random() < 0.85),
        max_pair_candidates=int(rng.integers(1, 45)),
        max_uses_per_item=int(rng.integers(1, 4)),
        currency=str(rng.choice(["", "$"])),
    )
    names = [f"item {index}" for index in range(size)] if rng.random() < 0.7 else None
    saving = float(np.round(rng.uniform(0, 40), 2))
    return (gap, candidates, price, affinity, margin), {"saving": saving, "item_names": names, "options": options}


@pytest.mark.parametrize("seed", range(6))
def test_the_served_search_answers_exactly_as_the_reference(seed):
    rng = np.random.default_rng(seed)
    answered = 0
    for _ in range(500):
        arguments, keywords = random_case(rng)
        expected = addons_reference.suggest_add_ons(*arguments, **keywords)
        assert suggest_add_ons(*arguments, **keywords) == expected
        answered += bool(expected)
    # The cases are not trivially empty: most of them propose something.
    assert answered > 250


def test_cart_sized_cases_with_many_pairs_match():
    rng = np.random.default_rng(99)
    price = np.round(rng.uniform(1, 30, 5000), 1)
    margin = rng.uniform(0.05, 0.6, 5000)
    margin[::7] = np.nan
    options = AddOnOptions(n=5, max_pair_candidates=30)
    for _ in range(300):
        candidates = rng.choice(5000, 60, replace=False)
        affinity = np.sort(rng.uniform(0, 1, 60))[::-1]
        gap = float(np.round(rng.uniform(5, 45), 2))
        expected = addons_reference.suggest_add_ons(gap, candidates, price, affinity, margin, saving=10.0,
                                                    options=options)
        assert suggest_add_ons(gap, candidates, price, affinity, margin, saving=10.0, options=options) == expected

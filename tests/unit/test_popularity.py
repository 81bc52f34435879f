"""Unit tests for the trend-adjusted popularity prior (popularity.trend_adjusted_popularity)."""

import numpy as np
import pytest
import scipy.sparse as sp

from services.recommend.candidates import CoPurchaseCandidate
from services.recommend.cooccurrence import CoPurchaseModel
from services.recommend import popularity
from services.recommend.popularity import InvalidPopularityInputError, item_popularity, trend_adjusted_popularity

DAYS = 365
ORDERS_PER_DAY = 200


def shop_with_shares(share_on_day, n_items):
    """One day of ORDERS_PER_DAY orders per day; item i is in the first round(share_on_day(i, day) x orders)."""
    rows, cols = [], []
    for day in range(DAYS):
        for item in range(n_items):
            holding = int(round(share_on_day(item, day) * ORDERS_PER_DAY))
            rows.extend(day * ORDERS_PER_DAY + order for order in range(holding))
            cols.extend([item] * holding)
    baskets = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(DAYS * ORDERS_PER_DAY, n_items))
    times = np.repeat(np.arange(DAYS, dtype=float), ORDERS_PER_DAY)
    return baskets, times


def test_a_steady_item_keeps_its_share_and_a_climbing_one_is_read_where_it_is_now():
    # Item 0 is in 35 % of orders all year; item 1 climbs from 10 % to 40 %, so it is at 40 % today.
    baskets, times = shop_with_shares(lambda item, day: 0.35 if item == 0 else 0.1 + 0.3 * day / (DAYS - 1), 2)
    decayed = item_popularity(baskets, times, half_life_days=120.0)
    adjusted = trend_adjusted_popularity(baskets, times, half_life_days=120.0)
    # The decayed mean still ranks the steady item first: it reads the climber as it was months ago.
    assert decayed[0] > decayed[1]
    assert adjusted[0] == pytest.approx(0.35, abs=0.002)
    assert adjusted[1] == pytest.approx(0.4, abs=0.005)


def test_a_fading_item_stays_above_zero_below_every_selling_item_and_in_order():
    # Items 1 and 2 stop selling halfway through the year; item 1 sold more than item 2 while it sold.
    def share(item, day):
        if item == 0:
            return 0.05
        return 0.0 if day >= DAYS // 2 else (0.6 if item == 1 else 0.4) * (1 - day / (DAYS // 2))

    baskets, times = shop_with_shares(share, 3)
    adjusted = trend_adjusted_popularity(baskets, times, half_life_days=120.0)
    level = item_popularity(baskets, times, half_life_days=120.0)
    np.testing.assert_allclose(adjusted[1:], level[1:] / 100.0)
    assert adjusted[0] > adjusted[1] > adjusted[2] > 0


@pytest.mark.parametrize("seed", range(3))
def test_on_a_small_steady_shop_noise_slopes_are_dropped(seed, monkeypatch):
    # 300 orders over 300 days, 20 items with steady shares: every slope the data shows is noise.
    rng = np.random.default_rng(seed)
    true_shares = np.linspace(0.05, 0.5, 20)
    baskets = sp.csr_matrix((rng.random((300, 20)) < true_shares).astype(float))
    times = np.sort(rng.uniform(0, 300, 300))
    shrunk_error = np.abs(trend_adjusted_popularity(baskets, times, 120.0) - true_shares).mean()
    monkeypatch.setattr(popularity, "TREND_SIGNIFICANCE", 0.0)
    whole_line_error = np.abs(trend_adjusted_popularity(baskets, times, 120.0) - true_shares).mean()
    decayed_error = np.abs(item_popularity(baskets, times, half_life_days=120.0) - true_shares).mean()
    # Extrapolating every noisy slope is half again as far off as the shrunk estimate or more, which stays
    # about as close as the decayed mean (0.021-0.023 against 0.021-0.023 on these seeds).
    assert shrunk_error < 0.8 * whole_line_error
    assert shrunk_error < 1.1 * decayed_error


def test_orders_of_one_day_give_the_plain_share():
    baskets = sp.csr_matrix(np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=float))
    np.testing.assert_allclose(trend_adjusted_popularity(baskets, np.zeros(4), 60.0), [0.75, 0.5])


def test_a_share_never_goes_above_one():
    baskets, times = shop_with_shares(lambda item, day: min(1.0, 0.2 + 1.6 * day / (DAYS - 1)), 1)
    assert trend_adjusted_popularity(baskets, times, half_life_days=120.0)[0] == 1.0


def test_times_must_match_the_orders():
    baskets = sp.csr_matrix(np.eye(3))
    with pytest.raises(InvalidPopularityInputError):
        trend_adjusted_popularity(baskets, np.zeros(2), 60.0)


def test_the_default_model_and_candidate_serve_the_trend_adjusted_prior():
    baskets, times = shop_with_shares(lambda item, day: 0.3 if item == 0 else 0.1 + 0.4 * day / (DAYS - 1), 2)
    model = CoPurchaseModel().fit(baskets, times)
    np.testing.assert_allclose(model.popularity_, trend_adjusted_popularity(baskets, times, 120.0))
    assert model.popular_items_[0] == 1
    candidate = CoPurchaseCandidate(beta=None).fit(baskets, times)
    np.testing.assert_allclose(candidate.popularity_, model.popularity_)
    assert candidate.popular_items_[0] == 1
    # With a beta the co-purchase candidate blends the shared prior, the decayed mean, like every candidate.
    blended = CoPurchaseCandidate(beta=1.0).fit(baskets, times)
    np.testing.assert_allclose(blended.popularity_, item_popularity(baskets, times, half_life_days=60.0))


def test_without_times_the_prior_is_the_plain_share():
    baskets = sp.csr_matrix(np.array([[1, 0], [1, 1], [0, 1], [1, 0]], dtype=float))
    np.testing.assert_allclose(CoPurchaseModel().fit(baskets).popularity_, [0.75, 0.5])

"""The for-you inputs train_models stages for its shards survive the trip through bytes unchanged."""

import numpy as np
import scipy.sparse as sp

from services.recommend.training import ForYouInputs


def test_for_you_inputs_round_trip_without_pickle():
    neighbours = sp.random(40, 40, density=0.1, random_state=1, format="csr")
    inputs = ForYouInputs(
        skus=np.array([f"sku-{n:03d}" for n in range(40)]), neighbours=neighbours,
        popularity=np.linspace(0, 1, 40), popularity_weight=0.37, repeat=np.arange(40) % 3 == 0,
        available=np.arange(40) % 7 != 0, tier_run="r20261101T000000-abcdef12",
    )
    back = ForYouInputs.from_bytes(inputs.to_bytes())
    assert back.skus.tolist() == inputs.skus.tolist()
    assert (back.neighbours != neighbours).nnz == 0 and back.neighbours.shape == (40, 40)
    np.testing.assert_array_equal(back.popularity, inputs.popularity)
    np.testing.assert_array_equal(back.repeat, inputs.repeat)
    np.testing.assert_array_equal(back.available, inputs.available)
    assert (back.popularity_weight, back.tier_run) == (0.37, inputs.tier_run)


def test_empty_inputs_have_no_neighbours_and_no_tier_run():
    empty = ForYouInputs.from_bytes(ForYouInputs.empty(np.array(["a", "b"])).to_bytes())
    assert empty.neighbours.shape == (2, 2) and empty.neighbours.nnz == 0
    assert empty.tier_run == "" and not empty.available.any()

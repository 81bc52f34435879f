"""Tests for services.segmentation.community."""

import numpy as np
import pandas as pd
import pytest

from services.segmentation.community import (
    COMMUNITY_LAYERS,
    LAYER_CONTENT,
    CommunityRules,
    InvalidInput,
    InvalidRules,
    assign_community_layer,
    window_start,
)


def test_constants():
    assert COMMUNITY_LAYERS == ("potential", "active", "high_value")
    assert LAYER_CONTENT == {"potential": "welfare", "active": "experience", "high_value": "exclusive"}
    rules = CommunityRules()
    assert (rules.active_min_interactions, rules.high_value_min_orders, rules.window_days) == (3, 2, 30)


def test_thresholds_and_precedence():
    layers = assign_community_layer(
        community_member=[True, True, True, True, True, True, False, False],
        interactions_in_window=[0, 2, 3, 10, 0, 5, 50, 0],
        orders_in_window=[0, 1, 1, 1, 2, 3, 9, 0],
    )
    assert list(layers) == ["potential", "potential", "active", "active", "high_value", "high_value", None, None]


def test_missing_values_are_non_member_and_zero_counts():
    layers = assign_community_layer(
        pd.Series([True, None, np.nan, True], dtype=object),
        [np.nan, 5, 5, 4],
        [None, 2, 2, np.nan],
    )
    assert list(layers) == ["potential", None, None, "active"]


def test_custom_rules():
    rules = CommunityRules(active_min_interactions=5, high_value_min_orders=4, window_days=60)
    layers = assign_community_layer([True, True, True], [4, 5, 5], [3, 3, 4], rules)
    assert list(layers) == ["potential", "active", "high_value"]
    assert window_start("2024-06-30", rules) == pd.Timestamp("2024-05-01")


def test_invalid_input_and_rules():
    with pytest.raises(InvalidInput):
        assign_community_layer([True], [-1], [0])
    with pytest.raises(InvalidInput):
        assign_community_layer([True, False], [1], [0])
    with pytest.raises(InvalidRules):
        CommunityRules(active_min_interactions=0)

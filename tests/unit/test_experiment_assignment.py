"""Experiment assignment: deterministic, sticky across processes, and split as the weights say."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from services.recommend.attribution import Totals, revenue_per_impression
from services.recommend.experiments import assign_variant
from shared.statistics import sample_size_per_group

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = [{"name": "current", "weight": 0.5}, {"name": "popular", "weight": 0.3}, {"name": "other", "weight": 0.2}]


def test_assignment_is_the_same_on_every_call():
    first = [assign_variant("x1", VARIANTS, f"c{index}") for index in range(500)]
    again = [assign_variant("x1", VARIANTS, f"c{index}") for index in range(500)]
    assert first == again


def test_assignment_is_the_same_in_another_process():
    here = [assign_variant("x1", VARIANTS, f"c{index}") for index in range(500)]
    script = ("import json; from services.recommend.experiments import assign_variant; "
              f"print(json.dumps([assign_variant('x1', {VARIANTS!r}, f'c{{index}}') for index in range(500)]))")
    output = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, check=True).stdout
    assert json.loads(output) == here


def test_split_over_10000_customers_is_within_3_sigma_of_the_weights():
    counts = {variant["name"]: 0 for variant in VARIANTS}
    for index in range(10_000):
        counts[assign_variant("x-split", VARIANTS, f"customer-{index}")] += 1
    for variant in VARIANTS:
        expected = 10_000 * variant["weight"]
        sigma = math.sqrt(10_000 * variant["weight"] * (1 - variant["weight"]))
        assert abs(counts[variant["name"]] - expected) <= 3 * sigma, counts


def test_experiments_split_independently():
    # The same customer may land in different variants of two experiments (the id is part of the hash).
    pairs = {(assign_variant("a", VARIANTS, f"c{index}"), assign_variant("b", VARIANTS, f"c{index}"))
             for index in range(2000)}
    assert len(pairs) == 9


def test_sample_size_for_a_one_point_lift_from_five_percent():
    # The classic two-proportion figure: 5 % -> 6 % at alpha 0.05 two-sided, 80 % power.
    assert sample_size_per_group(0.05, 0.01) == 8158
    assert sample_size_per_group(0.10, 0.02) == 3841


def test_revenue_per_impression_interval():
    totals = Totals()
    totals.impressions = 4
    totals.revenue = 40.0
    totals.revenue_by_answer["r1"] = 40.0
    figures = revenue_per_impression(totals)
    # Values 40, 0, 0, 0: mean 10, sample sd 20, half width 1.96 * 20 / 2.
    assert figures["value"] == 10.0
    assert figures["ci95_low"] == round(10 - 1.959963984540054 * 10, 6)
    assert figures["ci95_high"] == round(10 + 1.959963984540054 * 10, 6)

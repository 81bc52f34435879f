"""Pure pieces of campaigns: hashing assignment, member selection, uplift intervals, webhook address checks."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest

from services.recommend.store import CUSTOMER_TIERS, Catalogue, encode_customer_lists
from services.segmentation.campaigns import (
    Candidate,
    GroupTotals,
    PersonalLists,
    WebhookPolicy,
    check_webhook_url,
    forbidden_networks,
    holdout_group,
    in_global_control,
    newcombe_interval,
    request_hash,
    select_members,
    sign_body,
    unit_hash,
    uplift_summary,
    wilson_interval,
)
from shared.config import DEFAULTS
from shared.errors import InvalidRequest


def binomial_bound(trials: int, probability: float, sigmas: float = 4.0) -> float:
    """Half-width of a band a binomial count leaves with probability about 6e-5 (4 standard deviations)."""
    return sigmas * math.sqrt(trials * probability * (1 - probability))


def test_unit_hash_is_stable_and_uniform():
    assert unit_hash("a", "b") == unit_hash("a", "b")
    assert unit_hash("a", "b") != unit_hash("ab", "")  # parts are separated, not concatenated
    values = np.array([unit_hash("u", str(number)) for number in range(20_000)])
    assert values.min() >= 0 and values.max() < 1
    counts, _edges = np.histogram(values, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 2000) < binomial_bound(20_000, 0.1))


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_holdout_share_holds_within_sampling_error(fraction):
    customers = [f"c{number:06d}" for number in range(20_000)]
    control = sum(holdout_group("cmp-1", customer, fraction) == "control" for customer in customers)
    assert abs(control - fraction * len(customers)) <= binomial_bound(len(customers), fraction)


def test_holdout_is_deterministic_per_campaign_and_customer():
    customers = [f"c{number}" for number in range(2000)]
    first = [holdout_group("cmp-1", customer, 0.3) for customer in customers]
    assert first == [holdout_group("cmp-1", customer, 0.3) for customer in customers]
    other_campaign = [holdout_group("cmp-2", customer, 0.3) for customer in customers]
    # Another campaign draws its own control group (about 0.3 * 0.7 * 2 of customers differ).
    assert 0.3 < sum(a != b for a, b in zip(first, other_campaign)) / len(customers) < 0.54


def test_global_control_is_a_fixed_share_and_growing_it_only_adds():
    customers = [f"c{number}" for number in range(20_000)]
    small = {c for c in customers if in_global_control(c, 0.05, "salt")}
    large = {c for c in customers if in_global_control(c, 0.10, "salt")}
    assert small <= large
    assert abs(len(large) - 2000) <= binomial_bound(20_000, 0.1)
    assert not any(in_global_control(c, 0.0, "salt") for c in customers[:100])
    resalted = {c for c in customers if in_global_control(c, 0.10, "other-salt")}
    assert resalted != large


def test_select_members_skips_by_first_reason_and_keeps_rank_order():
    candidates = [
        Candidate("a", "gold", opted_out=True, frequency_capped=True),
        Candidate("b", "silver", opted_out=False, frequency_capped=True),
        Candidate("c", None, opted_out=False, frequency_capped=False),
        Candidate("d", "gold", opted_out=False, frequency_capped=False),
    ]
    selection = select_members(candidates, "cmp-1", holdout_fraction=0.0, global_control_fraction=0.0,
                               global_control_salt="s")
    assert selection.skipped == {"opted_out": 1, "global_control": 0, "frequency_capped": 1}
    assert selection.members == [("c", "treatment", None), ("d", "treatment", "gold")]
    assert selection.audience_size == 4
    everyone_global = select_members(candidates, "cmp-1", 0.0, global_control_fraction=1.0, global_control_salt="s")
    # Opting out comes first; the global control is checked before the frequency cap.
    assert everyone_global.skipped == {"opted_out": 1, "global_control": 3, "frequency_capped": 0}


def test_request_hash_ignores_key_order_only():
    assert request_hash({"a": 1, "b": {"c": [1, 2]}}) == request_hash({"b": {"c": [1, 2]}, "a": 1})
    assert request_hash({"a": 1}) != request_hash({"a": 2})
    assert request_hash({"b": {"c": [1, 2]}}) != request_hash({"b": {"c": [2, 1]}})


def test_wilson_interval_matches_newcombe_1998():
    # Newcombe (1998a), Statistics in Medicine 17:857, example 81/263, method 3 (score): 0.2553 to 0.3662.
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("counts, expected", [
    # Newcombe (1998b), Statistics in Medicine 17:873, Table II, method 10, examples (a) to (h).
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
])
def test_newcombe_interval_matches_the_published_table(counts, expected):
    low, high = newcombe_interval(*counts)
    assert low == pytest.approx(expected[0], abs=1e-4) and high == pytest.approx(expected[1], abs=1e-4)


def test_uplift_summary_verdicts():
    significant = uplift_summary(GroupTotals(5000, 600, 700, 30000.0), GroupTotals(5000, 450, 500, 20000.0), 30, 5)
    assert significant["verdict"] == "significant_positive"
    assert significant["conversion_uplift"] == pytest.approx(0.03)
    assert significant["relative_uplift"] == pytest.approx(0.03 / 0.09)
    assert significant["revenue_per_member_uplift"] == pytest.approx(2.0)
    assert significant["ci95_low"] > 0 and "better" in significant["conclusion"]

    unclear = uplift_summary(GroupTotals(400, 40, 40, 0.0), GroupTotals(400, 36, 36, 0.0), 30, 5)
    assert unclear["verdict"] == "not_significant" and unclear["ci95_low"] < 0 < unclear["ci95_high"]
    assert "includes zero" in unclear["conclusion"]

    worse = uplift_summary(GroupTotals(5000, 300, 300, 0.0), GroupTotals(5000, 450, 450, 0.0), 30, 5)
    assert worse["verdict"] == "significant_negative"

    small = uplift_summary(GroupTotals(20, 10, 10, 0.0), GroupTotals(500, 4, 4, 0.0), 30, 5)
    assert small["verdict"] == "insufficient_data"
    assert "treatment and control" in small["conclusion"]
    assert small["conversion_uplift"] is not None  # the figures are still shown, just not concluded on

    no_control = uplift_summary(GroupTotals(500, 40, 40, 0.0), GroupTotals(0, 0, 0, 0.0), 30, 5)
    assert no_control["verdict"] == "insufficient_data" and no_control["conversion_uplift"] is None
    assert "no control group" in no_control["conclusion"]


def resolver(*addresses):
    """A stand-in for socket.getaddrinfo answering with the given addresses."""

    def resolve(host, port, type=0):
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, type, 6, "", (address, port))
                for address in addresses]

    return resolve


DEFAULT_POLICY = WebhookPolicy.from_config(DEFAULTS)


@pytest.mark.parametrize("addresses", [
    ("127.0.0.1",), ("10.0.0.5",), ("172.20.1.1",), ("192.168.1.10",), ("169.254.169.254",), ("::1",),
    ("fd00::1",), ("::ffff:10.0.0.1",),
    # One bad address among good ones is enough to refuse (the client may connect to any of them).
    ("93.184.216.34", "10.0.0.5"),
])
def test_webhook_hosts_resolving_into_forbidden_ranges_are_refused(addresses):
    with pytest.raises(InvalidRequest) as refused:
        check_webhook_url("https://hooks.example.com/segrec", DEFAULT_POLICY, resolve=resolver(*addresses))
    assert "webhook_url" in refused.value.details


def test_webhook_url_scheme_host_and_resolution():
    public = resolver("93.184.216.34", "2606:2800:220:1::1")
    assert check_webhook_url("https://hooks.example.com/x", DEFAULT_POLICY, resolve=public)
    for url in ("ftp://hooks.example.com/x", "javascript:alert(1)", "http:///nohost", "https://u:p@example.com/",
                "http://example.com:99999/"):
        with pytest.raises(InvalidRequest):
            check_webhook_url(url, DEFAULT_POLICY, resolve=public)

    def unresolvable(host, port, type=0):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(InvalidRequest, match="does not resolve"):
        check_webhook_url("https://nowhere.invalid/x", DEFAULT_POLICY, resolve=unresolvable)
    # An operator who allows loopback (tests) says so in the settings.
    loopback_allowed = WebhookPolicy(forbidden=tuple(forbidden_networks("10.0.0.0/8")),
                                     allowed=tuple(forbidden_networks("127.0.0.1/32")))
    assert check_webhook_url("http://localhost:8080/x", loopback_allowed, resolve=resolver("127.0.0.1"))


def test_signature_is_hmac_sha256_of_the_body():
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    assert sign_body(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def small_catalogue() -> Catalogue:
    """Five items: A..E; C is out of stock; tier 'gold' favours E, everyone else favours popularity A, B, C, D."""
    payload = {
        "skus": ["A", "B", "C", "D", "E"], "names": list("ABCDE"), "categories": [""] * 5,
        "prices": [1.0] * 5, "costs": [None] * 5, "active": [True] * 5,
        "in_stock": [True, True, False, True, True], "repeat_purchase": [False] * 5, "abc": ["A"] * 5,
        "orders": [50, 40, 30, 20, 10], "informativeness": [1.0] * 5, "popularity_weight": 1.0,
        "max_cart_items": 20, "popular": [[0, 1.0], [1, 0.8], [2, 0.6], [3, 0.4], [4, 0.2]], "trending": [],
        "tier_popular": {"gold": [4, 2]},
    }
    return Catalogue.from_payload("v1", json.dumps(payload))


def packed_lists(for_you: list[int], bought: list[int], tier: str) -> bytes:
    """One customer's lists packed as training stores them."""
    items = np.array([for_you + [-1] * (4 - len(for_you))])
    scores = np.where(items >= 0, 1.0, 0.0)
    [payload] = encode_customer_lists(np.array([CUSTOMER_TIERS.index(tier)], dtype=np.uint8), items, scores,
                                      np.array([0, len(bought)]), np.array(bought))
    return payload


def test_personal_lists_prefer_the_model_then_tier_then_popular():
    lists = PersonalLists(small_catalogue(), limit=3)
    for_you = packed_lists([2, 3], bought=[0], tier="gold")
    # C is out of stock, A was bought: D from the model, then E (gold's favourite), then B (popular).
    assert lists.pick(for_you, "gold") == ["D", "E", "B"]
    assert lists.pick(None, "silver") == ["A", "B", "D"]
    assert lists.pick(None, None) == ["A", "B", "D"]
    # Without a tier from the scores, the model's own record of the tier is used.
    assert lists.pick(for_you, None) == ["D", "E", "B"]
    assert PersonalLists(small_catalogue(), limit=0).pick(for_you, "gold") == []
    assert PersonalLists(None, limit=3).pick(for_you, "gold") == []

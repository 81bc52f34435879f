"""Score customers: RFM, tier, lifecycle, community layer and lifetime value, from one row per customer.

`CustomerScorer.fit` learns what depends on the whole population (RFM quintile edges, BG/NBD and
Gamma-Gamma parameters); `transform` then scores any shard of customers on its own, so the nightly
job can score customer-id ranges in parallel and get what scoring everyone at once would give.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import numpy as np
import pandas as pd

from services.segmentation.clv import BetaGeoModel, ClvHorizon, FitFailed, GammaGammaModel, customer_lifetime_value
from services.segmentation.clv import InvalidInput as InvalidClvInput
from services.segmentation.community import CommunityRules, assign_community_layer
from services.segmentation.lifecycle import LifecycleRules, assign_lifecycle, estimate_typical_gap_days
from services.segmentation.rfm import RFMScorer
from services.segmentation.tiers import TierRules, apply_tier_transitions, candidate_tiers, spend_to_next_tier

DAY = np.timedelta64(1, "D")

# What the database hands the scorer, one row per customer.
INPUT_COLUMNS = (
    "customer_id", "joined_at", "community_member", "first_paid_at", "last_paid_at", "paid_orders",
    "net_spend", "purchase_days", "window_orders", "window_spend", "recent_orders", "recent_interactions",
)
# Input times (naive UTC) whose calendar day counts: read in the shop's time zone.
DATE_COLUMNS = ("joined_at", "first_paid_at", "last_paid_at")
# What a scoring run stores per customer (the customer_scores table).
SCORE_COLUMNS = (
    "customer_id", "recency_days", "frequency", "monetary", "r", "f", "m", "rfm_segment", "tier", "tier_since",
    "tier_pending_since", "spend_to_next_tier", "lifecycle", "community_layer", "p_alive", "expected_orders_90d",
    "expected_value_365d",
)


def _json_floats(values) -> list:
    """Floats for a JSON column: infinities and NaN (edges of an empty population) become null."""
    return [float(value) if np.isfinite(value) else None for value in np.asarray(values, dtype=float)]


class NotFitted(RuntimeError):
    """transform was called before fit."""


def buy_till_you_die_inputs(frame: pd.DataFrame, as_of: datetime, time_unit_days: float) -> pd.DataFrame:
    """BG/NBD's frequency (repeat purchase days), recency and age T, in model time units, per buyer.

    Customers without a paid order get NaN: the model says nothing about them.
    """
    # Purchases count by calendar day (as lifetimes' summaries do): two orders on one day are one purchase.
    as_of_day = np.datetime64(pd.Timestamp(as_of).normalize())
    first = frame["first_paid_at"].to_numpy(dtype="datetime64[D]")
    last = frame["last_paid_at"].to_numpy(dtype="datetime64[D]")
    unit = DAY * time_unit_days
    frequency = np.maximum(frame["purchase_days"].to_numpy(dtype=float) - 1.0, 0.0)
    recency = np.where(frequency > 0, (last - first) / unit, 0.0)
    age = (as_of_day - first) / unit
    # A purchase on the as_of day itself would give T == recency == 0; the model needs T > 0.
    age = np.maximum(age, recency + 1e-6)
    paid_orders = frame["paid_orders"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # The aggregates keep totals, not each order: average order value stands in for the
        # Gamma-Gamma's mean repeat-transaction value.
        monetary_value = np.where(paid_orders > 0, frame["net_spend"].to_numpy(dtype=float) / paid_orders, np.nan)
    buyer = paid_orders > 0
    return pd.DataFrame(
        {
            "frequency": np.where(buyer, frequency, np.nan),
            "recency": np.where(buyer, recency, np.nan),
            "T": np.where(buyer, age, np.nan),
            "monetary_value": monetary_value,
        },
        index=frame.index,
    )


class CustomerScorer:
    """Scores customers; fit on everyone, transform shard by shard.

    The CLV hyper-parameters (months ahead, monthly discount, the model's time unit) travel together in
    `clv_horizon` (a ClvHorizon; None: its defaults, 12 months at 1 % a month in weeks).
    """

    def __init__(
        self,
        window_days: int = 365,
        segment_map: str = "rf_grid_v1",
        tier_rules: TierRules | None = None,
        lifecycle_rules: LifecycleRules | None = None,
        community_rules: CommunityRules | None = None,
        clv_horizon: ClvHorizon | None = None,
        penalizer_coef: float = 0.0,
        shop_timezone: str = "UTC",
    ) -> None:
        self.window_days = window_days
        self.segment_map = segment_map
        self.tier_rules = tier_rules
        self.lifecycle_rules = lifecycle_rules
        self.community_rules = community_rules
        self.clv_horizon = clv_horizon
        self.penalizer_coef = penalizer_coef
        self.shop_timezone = shop_timezone

    @property
    def _horizon(self) -> ClvHorizon:
        return self.clv_horizon or ClvHorizon()

    def fit(self, frame: pd.DataFrame, as_of: datetime) -> CustomerScorer:
        """Learn the population's RFM edges and the BG/NBD and Gamma-Gamma parameters."""
        self.as_of_ = pd.Timestamp(as_of).to_pydatetime()
        local_frame, local_as_of = self._shop_local(frame)
        base_rules = self.lifecycle_rules or LifecycleRules()
        # One shop-wide gap for one-order customers, learned once so every shard judges them alike.
        self.lifecycle_rules_ = dataclasses.replace(
            base_rules, typical_gap_days=estimate_typical_gap_days(local_frame, base_rules.typical_gap_days)
        )
        self.rfm_ = RFMScorer(window_days=self.window_days, segment_map=self.segment_map).fit(
            self._rfm_inputs(frame)
        )
        inputs = buy_till_you_die_inputs(local_frame, local_as_of, self._horizon.time_unit_days).dropna(
            subset=["frequency"])
        self.bg_ = None
        self.gg_ = None
        self.clv_summary_ = {"buyers": int(len(inputs)), "repeat_buyers": int((inputs["frequency"] > 0).sum())}
        # BG/NBD needs some repeat buyers to say anything; Gamma-Gamma needs a few with spend.
        if len(inputs) >= 20 and self.clv_summary_["repeat_buyers"] >= 5:
            compressed = (
                inputs.assign(recency=inputs["recency"].round(3), T=inputs["T"].round(3))
                .groupby(["frequency", "recency", "T"], sort=False)
                .size()
                .reset_index(name="weight")
            )
            self.bg_ = self._fit_with_fallback_penalties(
                BetaGeoModel,
                compressed["frequency"].to_numpy(),
                compressed["recency"].to_numpy(),
                compressed["T"].to_numpy(),
                weights=compressed["weight"].to_numpy(),
            )
            repeat = inputs[inputs["frequency"] > 0]
            if self.bg_ is not None and len(repeat) >= 5 and repeat["monetary_value"].gt(0).all():
                self.gg_ = self._fit_with_fallback_penalties(
                    GammaGammaModel, repeat["frequency"].to_numpy(), repeat["monetary_value"].to_numpy()
                )
        return self

    def _fit_with_fallback_penalties(self, model_class, *arrays, **kwargs):
        """Fit; when the data is degenerate, retry with growing penalties, else go without the model.

        A shop's CLV model failing must not fail the night's segments: lifecycle then falls back to
        the customer's purchase rhythm alone, and the summary says why.
        """
        last_error = None
        for penalizer in (self.penalizer_coef, 0.001, 0.01, 0.1):
            try:
                return model_class(penalizer_coef=penalizer).fit(*arrays, **kwargs)
            except (FitFailed, InvalidClvInput) as error:
                last_error = error
        self.clv_summary_[f"{model_class.__name__}_failed"] = str(last_error)
        return None

    def _rfm_inputs(self, frame: pd.DataFrame) -> pd.DataFrame:
        as_of = np.datetime64(pd.Timestamp(self.as_of_))
        last = frame["last_paid_at"].to_numpy(dtype="datetime64[ns]")
        return pd.DataFrame(
            {
                "customer_id": frame["customer_id"].to_numpy(),
                "recency_days": (as_of - last) / DAY,
                "frequency": frame["window_orders"].to_numpy(dtype=np.int64),
                "monetary": frame["window_spend"].to_numpy(dtype=float),
            }
        )

    def transform(self, frame: pd.DataFrame, previous: pd.DataFrame | None = None) -> pd.DataFrame:
        """Score a shard; `previous` holds last run's tier, tier_since, tier_pending_since by customer_id."""
        if not hasattr(self, "rfm_"):
            raise NotFitted("call fit before transform")
        frame = frame.reset_index(drop=True)
        rfm = self.rfm_.transform(self._rfm_inputs(frame)).reset_index(drop=True)
        scores = pd.DataFrame({"customer_id": frame["customer_id"].to_numpy()})
        for column in ("recency_days", "frequency", "monetary", "r", "f", "m"):
            scores[column] = rfm[column].to_numpy()
        scores["rfm_segment"] = rfm["segment"].to_numpy()

        p_alive, expected_orders, expected_value = self._lifetime_value(frame)
        scores["p_alive"] = p_alive
        scores["expected_orders_90d"] = expected_orders
        scores["expected_value_365d"] = expected_value

        self._assign_tiers(scores, rfm, previous)
        local_frame, local_as_of = self._shop_local(frame)
        scores["lifecycle"] = assign_lifecycle(local_frame, p_alive, local_as_of, self.lifecycle_rules_)
        scores["community_layer"] = assign_community_layer(
            frame["community_member"].to_numpy(dtype=bool),
            frame["recent_interactions"].to_numpy(dtype=np.int64),
            frame["recent_orders"].to_numpy(dtype=np.int64),
            self.community_rules or CommunityRules(),
        )
        return scores[list(SCORE_COLUMNS)]

    def _shop_local(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, datetime]:
        """The frame's times and as_of as the shop's wall-clock time (naive): calendar days then begin at
        the shop's midnight, not at midnight UTC. Durations between them stay what they were."""
        as_of = pd.Timestamp(self.as_of_)
        if self.shop_timezone == "UTC":
            return frame, as_of.to_pydatetime()
        local = frame.copy()
        for column in DATE_COLUMNS:
            if column in local:
                local[column] = (pd.to_datetime(local[column]).dt.tz_localize("UTC").dt.tz_convert(self.shop_timezone)
                                 .dt.tz_localize(None))
        local_as_of = as_of.tz_localize("UTC").tz_convert(self.shop_timezone).tz_localize(None)
        return local, local_as_of.to_pydatetime()

    def _lifetime_value(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        horizon = self._horizon
        frame, local_as_of = self._shop_local(frame)
        inputs = buy_till_you_die_inputs(frame, local_as_of, horizon.time_unit_days)
        size = len(frame)
        p_alive = np.full(size, np.nan)
        expected_orders = np.zeros(size)
        expected_value = np.zeros(size)
        buyers = inputs["frequency"].notna().to_numpy()
        if self.bg_ is None or not buyers.any():
            return p_alive, expected_orders, expected_value
        frequency = inputs["frequency"].to_numpy()[buyers]
        recency = inputs["recency"].to_numpy()[buyers]
        age = inputs["T"].to_numpy()[buyers]
        p_alive[buyers] = self.bg_.conditional_probability_alive(frequency, recency, age)
        expected_orders[buyers] = self.bg_.conditional_expected_number_of_purchases_up_to_time(
            90.0 / horizon.time_unit_days, frequency, recency, age
        )
        if self.gg_ is not None:
            monetary_value = inputs["monetary_value"].to_numpy()[buyers]
            expected_value[buyers] = customer_lifetime_value(
                self.bg_, self.gg_, frequency, recency, age, monetary_value, horizon
            )
        return p_alive, expected_orders, expected_value

    def _assign_tiers(self, scores: pd.DataFrame, rfm: pd.DataFrame, previous: pd.DataFrame | None) -> None:
        rules = self.tier_rules or TierRules()
        candidate = candidate_tiers(rfm, rules)
        size = len(scores)
        previous_tier = np.full(size, None, dtype=object)
        previous_since = np.full(size, np.datetime64("NaT"), dtype="datetime64[ns]")
        pending_since = np.full(size, np.datetime64("NaT"), dtype="datetime64[ns]")
        if previous is not None and not previous.empty:
            aligned = previous.set_index("customer_id").reindex(scores["customer_id"])
            previous_tier = aligned["tier"].astype(object).where(aligned["tier"].notna(), None).to_numpy()
            previous_since = pd.to_datetime(aligned["tier_since"]).to_numpy(dtype="datetime64[ns]")
            pending_since = pd.to_datetime(aligned["tier_pending_since"]).to_numpy(dtype="datetime64[ns]")
        decided = apply_tier_transitions(previous_tier, previous_since, pending_since, candidate, self.as_of_, rules)
        scores["tier"] = np.asarray(decided["tier"], dtype=object)
        scores["tier_since"] = pd.to_datetime(decided["since"]).to_numpy()
        scores["tier_pending_since"] = pd.to_datetime(decided["pending_since"]).to_numpy()
        scores["spend_to_next_tier"] = spend_to_next_tier(rfm["monetary"].to_numpy(), scores["tier"].to_numpy(), rules)

    def model_summary(self) -> dict:
        """Fitted parameters and counts, stored with the run."""
        summary = dict(self.clv_summary_)
        summary["typical_gap_days"] = self.lifecycle_rules_.typical_gap_days
        summary["rfm_edges"] = {
            "recency": _json_floats(self.rfm_.recency_edges_),
            "frequency": _json_floats(self.rfm_.frequency_edges_),
            "monetary": _json_floats(self.rfm_.monetary_edges_),
        }
        if self.bg_ is not None:
            summary["bg_nbd"] = {**{k: float(v) for k, v in self.bg_.params_.items()},
                                 "log_likelihood": float(self.bg_.log_likelihood_)}
        if self.gg_ is not None:
            summary["gamma_gamma"] = {**{k: float(v) for k, v in self.gg_.params_.items()},
                                      "log_likelihood": float(self.gg_.log_likelihood_)}
        return summary

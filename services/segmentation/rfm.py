"""RFM scoring (Recency, Frequency, Monetary) and named RFM segments.

Glossary (users' definitions):

* Recency   = whole days since the customer's last *paid* order (NaN if none).
* Frequency = number of paid orders in the scoring window (default 365 days).
* Monetary  = net spend in the window: paid amounts minus refunds.

Each is scored 1-5 by quintile, 5 = best (most recent, most frequent, highest
spend), then (R, F, M) is mapped to a named segment by a versioned segment map.

Sharding: the nightly job scores customers in shards. :class:`RFMScorer` learns
the quintile edges once from the whole population (``fit``) and then scores any
shard with those edges (``transform``), which gives exactly the scores
:func:`score_quintiles` would give on the whole population at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "InvalidInput",
    "NotFittedError",
    "SegmentRule",
    "SegmentMap",
    "SEGMENT_MAPS",
    "DEFAULT_SEGMENT_MAP",
    "SEGMENT_NAMES",
    "NO_PAID_ORDER_SEGMENT",
    "quintile_edges",
    "scores_from_edges",
    "score_quintiles",
    "assign_segments",
    "build_rfm_frame",
    "RFMScorer",
]

N_SCORES = 5
WORST_SCORE = 1


class InvalidInput(ValueError):
    """Raised when RFM input data is malformed."""


class NotFittedError(RuntimeError):
    """Raised when an RFMScorer is used before ``fit``."""


# ---------------------------------------------------------------------------
# Segment maps
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRule:
    """A named box of R, F and M scores; bounds are inclusive (low, high)."""

    name: str
    recency: tuple[int, int] = (1, 5)
    frequency: tuple[int, int] = (1, 5)
    monetary: tuple[int, int] = (1, 5)


@dataclass(frozen=True)
class SegmentMap:
    """Ordered segment rules: the FIRST rule a customer matches names the segment."""

    version: str
    rules: tuple[SegmentRule, ...]
    fallback: str = "Others"
    description: str = ""


SEGMENT_NAMES = (
    "Champions",
    "Loyal",
    "Potential Loyalist",
    "New",
    "Promising",
    "Need Attention",
    "About to Sleep",
    "At Risk",
    "Can't Lose Them",
    "Hibernating",
    "Lost",
)

# Customers without any paid order (never paid, or everything refunded) are not
# ranked at all: they get R = F = M = 1 and this segment under every map.
NO_PAID_ORDER_SEGMENT = "Lost"

_RF_GRID_V1 = SegmentMap(
    version="rf_grid_v1",
    description=(
        "The R/F score grid copied by many blog posts and Putler (M ignored): "
        "R1-2 x F1-2 Hibernating, R1-2 x F3-4 At Risk, R1-2 x F5 Can't Lose Them, "
        "R3 x F1-2 About to Sleep, R3 x F3 Need Attention, R3-4 x F4-5 Loyal, "
        "R4 x F1 Promising, R5 x F1 New, R4-5 x F2-3 Potential Loyalist, "
        "R5 x F4-5 Champions. One addition: the corner R1 x F1 is 'Lost' (oldest "
        "and rarest buyers), which the plain grid folds into Hibernating."
    ),
    rules=(
        SegmentRule("Lost", recency=(1, 1), frequency=(1, 1)),
        SegmentRule("Hibernating", recency=(1, 2), frequency=(1, 2)),
        SegmentRule("At Risk", recency=(1, 2), frequency=(3, 4)),
        SegmentRule("Can't Lose Them", recency=(1, 2), frequency=(5, 5)),
        SegmentRule("About to Sleep", recency=(3, 3), frequency=(1, 2)),
        SegmentRule("Need Attention", recency=(3, 3), frequency=(3, 3)),
        SegmentRule("Loyal", recency=(3, 4), frequency=(4, 5)),
        SegmentRule("Promising", recency=(4, 4), frequency=(1, 1)),
        SegmentRule("New", recency=(5, 5), frequency=(1, 1)),
        SegmentRule("Potential Loyalist", recency=(4, 5), frequency=(2, 3)),
        SegmentRule("Champions", recency=(5, 5), frequency=(4, 5)),
    ),
    # The grid covers all 25 (R, F) cells, so the fallback is never used.
    fallback="Others",
)

_RFM_PACKAGE_V1 = SegmentMap(
    version="rfm_package_v1",
    description=(
        "R package 'rfm' (rsquaredacademy), rfm_segment() documented rules "
        "(rfm 0.2.x): (R, F, M) lower/upper bounds, first match wins, anything "
        "unmatched is 'Others'. Names shortened: Loyal Customers -> Loyal, "
        "New Customers -> New, About To Sleep -> About to Sleep."
    ),
    rules=(
        SegmentRule("Champions", recency=(4, 5), frequency=(4, 5), monetary=(4, 5)),
        SegmentRule("Loyal", recency=(2, 5), frequency=(3, 5), monetary=(3, 5)),
        SegmentRule("Potential Loyalist", recency=(3, 5), frequency=(1, 3), monetary=(1, 3)),
        SegmentRule("New", recency=(4, 5), frequency=(1, 1), monetary=(1, 1)),
        SegmentRule("Promising", recency=(3, 4), frequency=(1, 1), monetary=(1, 1)),
        SegmentRule("Need Attention", recency=(2, 3), frequency=(2, 3), monetary=(2, 3)),
        SegmentRule("About to Sleep", recency=(2, 3), frequency=(1, 2), monetary=(1, 2)),
        SegmentRule("At Risk", recency=(1, 2), frequency=(2, 5), monetary=(2, 5)),
        SegmentRule("Can't Lose Them", recency=(1, 1), frequency=(4, 5), monetary=(4, 5)),
        SegmentRule("Lost", recency=(1, 2), frequency=(1, 2), monetary=(1, 2)),
    ),
    fallback="Others",
)

_RFM_PACKAGE_V2 = SegmentMap(
    version="rfm_package_v2",
    description=(
        "R package 'rfm' current documentation example (rfm 0.3.x), same "
        "first-match semantics and 'Others' fallback as rfm_package_v1."
    ),
    rules=(
        SegmentRule("Champions", recency=(5, 5), frequency=(5, 5), monetary=(5, 5)),
        SegmentRule("Potential Loyalist", recency=(3, 5), frequency=(3, 5), monetary=(2, 5)),
        SegmentRule("Loyal", recency=(2, 4), frequency=(2, 4), monetary=(2, 4)),
        SegmentRule("Promising", recency=(3, 4), frequency=(1, 3), monetary=(3, 5)),
        SegmentRule("New", recency=(4, 5), frequency=(1, 3), monetary=(1, 5)),
        SegmentRule("Can't Lose Them", recency=(1, 2), frequency=(3, 4), monetary=(4, 5)),
        SegmentRule("At Risk", recency=(1, 2), frequency=(2, 5), monetary=(4, 5)),
        SegmentRule("Need Attention", recency=(1, 3), frequency=(3, 5), monetary=(3, 5)),
        SegmentRule("About to Sleep", recency=(2, 3), frequency=(1, 3), monetary=(1, 4)),
        SegmentRule("Lost", recency=(1, 1), frequency=(1, 5), monetary=(1, 5)),
    ),
    fallback="Others",
)

SEGMENT_MAPS: dict[str, SegmentMap] = {
    segment_map.version: segment_map for segment_map in (_RF_GRID_V1, _RFM_PACKAGE_V1, _RFM_PACKAGE_V2)
}
DEFAULT_SEGMENT_MAP = "rf_grid_v1"


def _resolve_segment_map(segment_map) -> SegmentMap:
    """Accept a map version name or a SegmentMap instance."""
    if isinstance(segment_map, SegmentMap):
        return segment_map
    if segment_map in SEGMENT_MAPS:
        return SEGMENT_MAPS[segment_map]
    raise InvalidInput(f"unknown segment map {segment_map!r}; known: {sorted(SEGMENT_MAPS)}")


def assign_segments(r, f, m, segment_map=DEFAULT_SEGMENT_MAP) -> np.ndarray:
    """Name the segment of each (r, f, m) score triple; first matching rule wins."""
    resolved = _resolve_segment_map(segment_map)
    recency_score = np.asarray(r)
    frequency_score = np.asarray(f)
    monetary_score = np.asarray(m)
    segments = np.full(recency_score.shape, resolved.fallback, dtype=object)
    unassigned = np.ones(recency_score.shape, dtype=bool)
    for rule in resolved.rules:
        matches = (
            unassigned
            & (recency_score >= rule.recency[0])
            & (recency_score <= rule.recency[1])
            & (frequency_score >= rule.frequency[0])
            & (frequency_score <= rule.frequency[1])
            & (monetary_score >= rule.monetary[0])
            & (monetary_score <= rule.monetary[1])
        )
        segments[matches] = rule.name
        unassigned &= ~matches
    return segments


# ---------------------------------------------------------------------------
# Quintile scoring
# ---------------------------------------------------------------------------


def _oriented(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Flip the sign when lower is better so that 'larger' always means 'better'."""
    return values if higher_is_better else -values


def quintile_edges(values, higher_is_better=True) -> np.ndarray:
    """The 4 cut points of :func:`score_quintiles`, in the units of ``values`` (NaN ignored).

    A value scores 1 + (number of edges it beats), where "beats" is ``>`` when
    higher is better and ``<`` when lower is better.
    """
    array = np.asarray(values, dtype=float).reshape(-1)
    ranked = np.sort(_oriented(array[~np.isnan(array)], higher_is_better))
    count = ranked.size
    if count == 0:
        # Nobody to rank: every value scores 1 (no edge can be beaten).
        return np.full(N_SCORES - 1, np.inf if higher_is_better else -np.inf)
    edges = np.empty(N_SCORES - 1)
    for boundary in range(1, N_SCORES):
        # Score >= boundary + 1 needs at least ceil(boundary * n / 5) customers
        # strictly worse, i.e. beating the value at that sorted position.
        customers_to_beat = (boundary * count + N_SCORES - 1) // N_SCORES
        edges[boundary - 1] = ranked[customers_to_beat - 1]
    return _oriented(edges, higher_is_better)


def scores_from_edges(values, edges, higher_is_better=True) -> np.ndarray:
    """Score values 1-5 against learned quintile edges; NaN scores 1."""
    array = np.asarray(values, dtype=float).reshape(-1)
    oriented_values = _oriented(array, higher_is_better)[:, None]
    oriented_edges = _oriented(np.asarray(edges, dtype=float), higher_is_better)[None, :]
    # NaN compares False with everything, so it beats no edge and scores 1.
    edges_beaten = np.sum(oriented_values > oriented_edges, axis=1)
    return (WORST_SCORE + edges_beaten).astype(np.int8)


def score_quintiles(values, higher_is_better=True) -> np.ndarray:
    """Score each value 1-5 by quintile of the population given (5 = best), ties equal.

    Rule: score = 1 + floor(5 * s), where s is the share of customers who are
    *strictly worse* (lower value, or higher when ``higher_is_better=False``).
    Consequences:

    * equal values always get equal scores (they have the same s); the result
      does not depend on the order of the input;
    * with n distinct values the scores are the usual quintiles
      (10 customers -> 1,1,2,2,3,3,4,4,5,5);
    * a tie block gets the score of its *lowest* position: if 80% of customers
      have frequency 1, they all get F = 1 (nobody is strictly worse) and every
      repeat buyer gets F = 5 (80% are strictly worse). One-order customers are
      thus never promoted by a tie, which is how ops read "F = 1";
    * the worst value always scores 1, so a single customer, or a population
      where everybody is equal, scores 1;
    * NaN (e.g. recency of a customer with no paid order) scores 1 and is not
      counted in the population.
    """
    edges = quintile_edges(values, higher_is_better)
    return scores_from_edges(values, edges, higher_is_better)


# ---------------------------------------------------------------------------
# Features and scorer
# ---------------------------------------------------------------------------

RFM_INPUT_COLUMNS = ("customer_id", "recency_days", "frequency", "monetary")
RFM_OUTPUT_COLUMNS = ("recency_days", "frequency", "monetary", "r", "f", "m", "segment")


def build_rfm_frame(orders: pd.DataFrame, as_of, window_days=365) -> pd.DataFrame:
    """Per-customer recency_days, frequency and monetary from order rows.

    ``orders`` columns: ``customer_id``, ``paid_at`` (datetime, NaT if never
    paid), ``amount`` (paid amount) and ``refunded_amount`` (0 if none).
    A *paid order* has a ``paid_at`` on or before ``as_of`` and was not fully
    refunded. Refunds count against the order's own date (that is what the
    order table stores). Recency is whole calendar days; the window is the
    ``window_days`` days up to and including ``as_of``. Customers whose orders
    were all refunded keep a row: recency NaN, frequency 0.
    """
    missing = {"customer_id", "paid_at", "amount", "refunded_amount"} - set(orders.columns)
    if missing:
        raise InvalidInput(f"orders is missing columns {sorted(missing)}")
    if window_days <= 0:
        raise InvalidInput("window_days must be positive")
    as_of_day = pd.Timestamp(as_of).normalize()
    paid_day = pd.to_datetime(orders["paid_at"]).dt.normalize()
    amount = orders["amount"].astype(float)
    refunded = orders["refunded_amount"].fillna(0.0).astype(float)
    if (refunded < 0).any():
        raise InvalidInput("refunded_amount must be >= 0")

    happened = paid_day.notna() & (paid_day <= as_of_day)
    is_paid_order = happened & (refunded < amount)
    in_window = happened & (paid_day > as_of_day - pd.Timedelta(days=window_days))
    rows = pd.DataFrame(
        {
            "customer_id": orders["customer_id"].to_numpy(),
            "last_paid_day": paid_day.where(is_paid_order),
            "paid_in_window": (is_paid_order & in_window).astype(int),
            "net_in_window": (amount - refunded).where(in_window, 0.0),
        }
    )
    per_customer = rows.groupby("customer_id", sort=True).agg(
        last_paid_day=("last_paid_day", "max"),
        frequency=("paid_in_window", "sum"),
        monetary=("net_in_window", "sum"),
    )
    recency_days = (as_of_day - per_customer["last_paid_day"]).dt.days.astype(float)
    return pd.DataFrame(
        {
            "customer_id": per_customer.index.to_numpy(),
            "recency_days": recency_days.to_numpy(),
            "frequency": per_customer["frequency"].to_numpy().astype(int),
            "monetary": per_customer["monetary"].to_numpy().astype(float),
        }
    )


def _validate_rfm_frame(frame: pd.DataFrame) -> None:
    """Check the scorer's input columns and values."""
    missing = set(RFM_INPUT_COLUMNS) - set(frame.columns)
    if missing:
        raise InvalidInput(f"RFM frame is missing columns {sorted(missing)}")
    recency = frame["recency_days"].astype(float)
    if (recency < 0).any():
        raise InvalidInput("recency_days must be >= 0 (or NaN when there is no paid order)")
    if frame["frequency"].isna().any() or (frame["frequency"] < 0).any():
        raise InvalidInput("frequency must be a non-negative count")
    if frame["monetary"].isna().any():
        raise InvalidInput("monetary must not be missing (use 0 for no spend)")


class RFMScorer:
    """Learns RFM quintile edges on the whole population and scores any shard with them."""

    def __init__(self, window_days=365, segment_map=DEFAULT_SEGMENT_MAP):
        self.window_days = window_days
        self.segment_map = segment_map

    def features_from_orders(self, orders: pd.DataFrame, as_of) -> pd.DataFrame:
        """Build the scorer's input frame from order rows with this scorer's window."""
        return build_rfm_frame(orders, as_of, window_days=self.window_days)

    def fit(self, frame: pd.DataFrame):
        """Learn recency/frequency/monetary quintile edges from customers with a paid order."""
        _validate_rfm_frame(frame)
        _resolve_segment_map(self.segment_map)
        has_paid_order = frame["recency_days"].notna().to_numpy()
        paying = frame.loc[has_paid_order]
        self.recency_edges_ = quintile_edges(paying["recency_days"], higher_is_better=False)
        # F and M rank the customers who bought in the window. Customers whose last order is older
        # than the window have F = M = 0 and score 1; ranking them too would make every recent
        # one-order customer an F = 3 (and leave "New" and "Promising" empty) in any shop where
        # many customers have lapsed.
        bought_in_window = paying.loc[paying["frequency"].to_numpy() > 0]
        self.frequency_edges_ = quintile_edges(bought_in_window["frequency"], higher_is_better=True)
        self.monetary_edges_ = quintile_edges(bought_in_window["monetary"], higher_is_better=True)
        self.n_customers_ = int(has_paid_order.sum())
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Score customers with the learned edges; columns recency_days..segment (+ customer_id).

        Customers with no paid order at all (recency_days NaN: never paid or all
        refunded) get r = f = m = 1 and segment "Lost", whatever their window
        figures say.
        """
        if not hasattr(self, "recency_edges_"):
            raise NotFittedError("RFMScorer is not fitted yet; call fit() first")
        _validate_rfm_frame(frame)
        has_paid_order = frame["recency_days"].notna().to_numpy()
        recency_score = scores_from_edges(frame["recency_days"], self.recency_edges_, higher_is_better=False)
        frequency_score = scores_from_edges(frame["frequency"], self.frequency_edges_, higher_is_better=True)
        monetary_score = scores_from_edges(frame["monetary"], self.monetary_edges_, higher_is_better=True)
        # Not ranked at all: F and M of non-payers may be 0 or even negative
        # (refunds), but they must not look like (or crowd out) real buyers.
        recency_score[~has_paid_order] = WORST_SCORE
        frequency_score[~has_paid_order] = WORST_SCORE
        monetary_score[~has_paid_order] = WORST_SCORE

        segments = assign_segments(recency_score, frequency_score, monetary_score, self.segment_map)
        segments[~has_paid_order] = NO_PAID_ORDER_SEGMENT
        return pd.DataFrame(
            {
                "customer_id": frame["customer_id"].to_numpy(),
                "recency_days": frame["recency_days"].astype(float).to_numpy(),
                "frequency": frame["frequency"].to_numpy(),
                "monetary": frame["monetary"].astype(float).to_numpy(),
                "r": recency_score,
                "f": frequency_score,
                "m": monetary_score,
                "segment": segments,
            },
            index=frame.index,
        )

    def fit_transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Fit on ``frame`` and score it."""
        return self.fit(frame).transform(frame)

"""Customer lifetime value: BG/NBD (purchase count, P(alive)) and Gamma-Gamma (spend).

Pure numpy/pandas/scipy implementation of

* Fader, Hardie and Lee (2005), "Counting Your Customers the Easy Way: An
  Alternative to the Pareto/NBD Model" (BG/NBD), and
* Fader, Hardie and Lee (2005), "RFM and CLV: Using Iso-value Curves for
  Customer Base Analysis" / Hardie's note 025 (Gamma-Gamma spend model),

following the conventions of the ``lifetimes`` package (0.11.x) so numbers can be
compared one for one, but written for millions of customers:

* the log-likelihoods are computed in log space with ``gammaln``/``betaln`` and
  ``logaddexp`` (no products of huge/tiny numbers),
* parameters are optimised on the log scale (they must be positive) with
  L-BFGS-B and the *analytic* gradient,
* ``fit`` accepts ``weights`` so that identical (frequency, recency, T) rows can
  be collapsed first with :func:`compress_customers` (a million customers
  observed on a daily grid shrink to a few tens of thousands of rows).

Time units: ``recency`` and ``T`` must be in the same unit the model was fitted
with (``time_unit_days`` days per unit; 7 = weeks, as in the CDNOW papers).
``frequency`` is the number of *repeat* purchase days (first purchase excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

__all__ = [
    "InvalidInput",
    "FitFailed",
    "NotFittedError",
    "BetaGeoModel",
    "ClvHorizon",
    "GammaGammaModel",
    "compress_customers",
    "customer_lifetime_value",
    "summary_from_transactions",
]

# lifetimes' customer_lifetime_value uses these "periods per month" factors for its
# freq codes ("D" -> 30, "W" -> 4.345). Reusing them keeps our CLV identical to
# lifetimes for daily and weekly models; other units use the calendar average.
_LIFETIMES_PERIODS_PER_MONTH = {1.0: 30.0, 7.0: 4.345}
AVERAGE_DAYS_PER_MONTH = 365.25 / 12.0

# An optimiser that stops with a "line search" warning is still accepted when the
# gradient of the (per-customer mean) negative log-likelihood is this flat.
_ACCEPTABLE_GRADIENT_NORM = 1e-4
# Log-parameters are boxed so exp() stays finite (e^25 ~ 7e10) during the search.
_LOG_PARAM_BOUND = 25.0
# Fitted (time-rescaled) parameters beyond 1e6 or below 1e-6 mean the likelihood
# has no interior maximum for this data (e.g. nobody ever drops out): the optimiser
# is walking off to infinity, so the estimate must not be used.
_DIVERGED_LOG_PARAM = np.log(1e6)


class InvalidInput(ValueError):
    """Raised when customer summary data violates the model's assumptions."""


class FitFailed(RuntimeError):
    """Raised when maximum likelihood estimation does not converge."""


class NotFittedError(RuntimeError):
    """Raised when a model is used for prediction before ``fit``."""


# ---------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------


def _as_float_array(values, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float array, rejecting NaN/inf."""
    array = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"{name} contains NaN or infinite values")
    return array


def _validate_bg_inputs(frequency, recency, T):
    """Convert and check (frequency, recency, T) as lifetimes' _check_inputs does."""
    frequency = _as_float_array(frequency, "frequency")
    recency = _as_float_array(recency, "recency")
    T = _as_float_array(T, "T")
    if not (frequency.shape == recency.shape == T.shape):
        raise InvalidInput("frequency, recency and T must have the same length")
    if frequency.size == 0:
        raise InvalidInput("no customers given")
    if np.any(frequency < 0) or np.any(frequency != np.round(frequency)):
        raise InvalidInput("frequency must be a non-negative whole number of repeat purchases")
    if np.any(recency < 0):
        raise InvalidInput("recency must be >= 0")
    # A small tolerance: recency and T are often computed from rounded dates.
    if np.any(recency > T + 1e-9):
        raise InvalidInput("recency must not exceed T (customer age)")
    if np.any(recency[frequency == 0] != 0):
        raise InvalidInput("recency must be 0 for customers without repeat purchases")
    return frequency, recency, T


def _validate_weights(weights, size: int) -> np.ndarray:
    """Return weights as floats (ones when None), rejecting negative weights."""
    if weights is None:
        return np.ones(size)
    weights = _as_float_array(weights, "weights")
    if weights.shape != (size,):
        raise InvalidInput("weights must have one entry per row")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise InvalidInput("weights must be non-negative and not all zero")
    return weights


def compress_customers(frequency, recency, T):
    """Collapse identical (frequency, recency, T) rows; return the unique rows and their counts.

    Fitting on the result with ``weights=counts`` gives exactly the same
    likelihood as fitting on all rows, at a fraction of the cost.
    """
    frequency, recency, T = _validate_bg_inputs(frequency, recency, T)
    # A hash group-by is ~10x faster than np.unique(axis=0) on millions of rows.
    counts = (
        pd.DataFrame({"frequency": frequency, "recency": recency, "T": T})
        .groupby(["frequency", "recency", "T"], sort=True)
        .size()
    )
    return (
        counts.index.get_level_values("frequency").to_numpy(dtype=float),
        counts.index.get_level_values("recency").to_numpy(dtype=float),
        counts.index.get_level_values("T").to_numpy(dtype=float),
        counts.to_numpy(dtype=float),
    )


def _minimize_negative_log_likelihood(objective, initial_log_params, args, tol, max_iter):
    """Run L-BFGS-B on log-parameters with the analytic gradient; raise FitFailed if it diverges."""
    bounds = [(-_LOG_PARAM_BOUND, _LOG_PARAM_BOUND)] * len(initial_log_params)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        result = minimize(
            objective,
            initial_log_params,
            args=args,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "gtol": tol, "ftol": tol * 1e-3},
        )
    gradient_norm = float(np.max(np.abs(result.jac))) if result.jac is not None else np.inf
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        raise FitFailed(f"optimizer produced non-finite parameters: {result.message}")
    if np.any(np.abs(result.x) > _DIVERGED_LOG_PARAM):
        raise FitFailed(
            "a parameter diverged to 0 or infinity (too little or degenerate data); "
            "use a small penalizer_coef (e.g. 0.001-0.1)"
        )
    if not result.success and gradient_norm > _ACCEPTABLE_GRADIENT_NORM:
        raise FitFailed(
            f"maximum likelihood did not converge ({result.message}); "
            "try a small penalizer_coef or other initial_params"
        )
    return result


# ---------------------------------------------------------------------------
# BG/NBD
# ---------------------------------------------------------------------------


def _bg_log_likelihood_terms(params, frequency, recency, T):
    """Per-customer BG/NBD log-likelihood and its parts (needed by the gradient).

    log L = ln Gamma(r+x) - ln Gamma(r) + r ln(alpha) + ln B(a, b+x) - ln B(a, b)
            + log( (alpha+T)^-(r+x) + [x>0] a/(b+x-1) (alpha+t_x)^-(r+x) )
    """
    r, alpha, a, b = params
    has_repeat = frequency > 0
    shared = gammaln(r + frequency) - gammaln(r) + r * np.log(alpha)
    beta_part = betaln(a, b + frequency) - betaln(a, b)
    still_alive_term = -(r + frequency) * np.log(alpha + T)
    # For x == 0 the "dropped out after the last purchase" term does not exist;
    # b + x - 1 is replaced by a safe value before the log to avoid warnings.
    safe_b_plus_x_minus_1 = np.where(has_repeat, b + frequency - 1.0, 1.0)
    dropped_out_term = np.where(
        has_repeat,
        np.log(a) - np.log(safe_b_plus_x_minus_1) - (r + frequency) * np.log(alpha + recency),
        -np.inf,
    )
    mixture = np.logaddexp(still_alive_term, dropped_out_term)
    log_likelihood = shared + beta_part + mixture
    # Share of the likelihood coming from the "dropped out" branch.
    dropped_out_share = np.exp(dropped_out_term - mixture)
    return log_likelihood, dropped_out_share, safe_b_plus_x_minus_1


def _bg_negative_log_likelihood(log_params, frequency, recency, T, weights, penalizer_coef):
    """Weighted mean negative log-likelihood (+ L2 penalty) and its gradient in log-parameters."""
    params = np.exp(log_params)
    r, alpha, a, b = params
    log_likelihood, dropped_out_share, b_plus_x_minus_1 = _bg_log_likelihood_terms(
        params, frequency, recency, T
    )
    still_alive_share = 1.0 - dropped_out_share
    has_repeat = frequency > 0

    d_r = (
        digamma(r + frequency)
        - digamma(r)
        + np.log(alpha)
        - still_alive_share * np.log(alpha + T)
        - dropped_out_share * np.log(alpha + recency)
    )
    d_alpha = (
        r / alpha
        - still_alive_share * (r + frequency) / (alpha + T)
        - dropped_out_share * (r + frequency) / (alpha + recency)
    )
    d_a = digamma(a + b) - digamma(a + b + frequency) + dropped_out_share / a
    d_b = (
        digamma(b + frequency)
        - digamma(a + b + frequency)
        - digamma(b)
        + digamma(a + b)
        - np.where(has_repeat, dropped_out_share / b_plus_x_minus_1, 0.0)
    )

    total_weight = weights.sum()
    mean_log_likelihood = np.dot(weights, log_likelihood) / total_weight
    gradient_params = np.array(
        [np.dot(weights, d_r), np.dot(weights, d_alpha), np.dot(weights, d_a), np.dot(weights, d_b)]
    ) / total_weight
    penalty = penalizer_coef * np.sum(params**2)
    # Chain rule: d/d(log p) = p * d/dp.
    objective = -mean_log_likelihood + penalty
    gradient = -gradient_params * params + 2.0 * penalizer_coef * params**2
    return objective, gradient


class BetaGeoModel:
    """BG/NBD model of repeat purchasing, fitted by maximum likelihood."""

    def __init__(self, penalizer_coef=0.0, initial_params=None, tol=1e-8, max_iter=1000):
        self.penalizer_coef = penalizer_coef
        self.initial_params = initial_params
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, frequency, recency, T, weights=None):
        """Estimate r, alpha, a, b from (frequency, recency, T); ``weights`` counts identical rows.

        Like lifetimes, time is rescaled so that max(T) == 1 during optimisation
        (better conditioning); the penalty therefore acts on the rescaled alpha.
        ``log_likelihood_`` is the total (weighted) log-likelihood in the
        original time unit, without the penalty.
        """
        frequency, recency, T = _validate_bg_inputs(frequency, recency, T)
        weights = _validate_weights(weights, frequency.size)
        if self.penalizer_coef < 0:
            raise InvalidInput("penalizer_coef must be >= 0")

        time_scale = 1.0 / T.max()
        if self.initial_params is None:
            initial_scaled = np.ones(4)
        else:
            initial_scaled = np.asarray(self.initial_params, dtype=float).copy()
            if initial_scaled.shape != (4,) or np.any(initial_scaled <= 0):
                raise InvalidInput("initial_params must be 4 positive numbers (r, alpha, a, b)")
            initial_scaled[1] *= time_scale

        result = _minimize_negative_log_likelihood(
            _bg_negative_log_likelihood,
            np.log(initial_scaled),
            (frequency, recency * time_scale, T * time_scale, weights, self.penalizer_coef),
            self.tol,
            self.max_iter,
        )
        r, scaled_alpha, a, b = np.exp(result.x)
        self.params_ = {"r": float(r), "alpha": float(scaled_alpha / time_scale), "a": float(a), "b": float(b)}
        per_customer, _, _ = _bg_log_likelihood_terms(self._param_tuple(), frequency, recency, T)
        self.log_likelihood_ = float(np.dot(weights, per_customer))
        self.n_iter_ = int(result.nit)
        self.n_customers_ = float(weights.sum())
        return self

    def _param_tuple(self):
        """Return (r, alpha, a, b) or raise if the model is not fitted."""
        if not hasattr(self, "params_"):
            raise NotFittedError("BetaGeoModel is not fitted yet; call fit() first")
        return (self.params_["r"], self.params_["alpha"], self.params_["a"], self.params_["b"])

    def log_likelihood(self, frequency, recency, T):
        """Per-customer log-likelihood under the fitted parameters."""
        frequency, recency, T = _validate_bg_inputs(frequency, recency, T)
        per_customer, _, _ = _bg_log_likelihood_terms(self._param_tuple(), frequency, recency, T)
        return per_customer

    def _log_odds_dropped_out(self, frequency, recency, T):
        """log( P(dropped out) / P(alive) ) given the history; -inf when x == 0."""
        r, alpha, a, b = self._param_tuple()
        has_repeat = frequency > 0
        safe_b_plus_x_minus_1 = np.where(has_repeat, b + frequency - 1.0, 1.0)
        log_odds = (
            np.log(a)
            - np.log(safe_b_plus_x_minus_1)
            + (r + frequency) * (np.log(alpha + T) - np.log(alpha + recency))
        )
        # BG/NBD customers can only drop out right after a repeat purchase, so a
        # customer without one is alive with certainty.
        return np.where(has_repeat, log_odds, -np.inf)

    def conditional_probability_alive(self, frequency, recency, T):
        """P(customer still alive at T | x, t_x, T); exactly 1 when frequency == 0."""
        frequency, recency, T = _validate_bg_inputs(frequency, recency, T)
        return expit(-self._log_odds_dropped_out(frequency, recency, T))

    def conditional_expected_number_of_purchases_up_to_time(self, t, frequency, recency, T):
        """Expected repeat purchases in (T, T + t] given the customer's history (t in model units).

        E = (a+b+x-1)/(a-1) * [1 - (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z)] * P(alive),
        z = t / (alpha + T + t). The hypergeometric term is evaluated through
        Euler's transformation, (1-z)^(r+x) 2F1(r+x, b+x; c; z)
        = (1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z), whose first two parameters do not
        grow with x, so it stays accurate for very frequent buyers.
        """
        frequency, recency, T = _validate_bg_inputs(frequency, recency, T)
        return self._expected_purchases(t, frequency, recency, T)

    def _expected_purchases(self, t, frequency, recency, T):
        """Unvalidated core of conditional_expected_number_of_purchases_up_to_time."""
        r, alpha, a, b = self._param_tuple()
        t, frequency, recency, T = np.broadcast_arrays(np.asarray(t, dtype=float), frequency, recency, T)
        z = t / (alpha + T + t)
        c = a + b + frequency - 1.0

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            euler_hyp = hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)
            log_discounted_hyp = (a - 1.0) * np.log1p(-z) + np.log(euler_hyp)
            # Fall back to the untransformed series only where the transformed one fails.
            failed = ~np.isfinite(log_discounted_hyp)
            if np.any(failed):
                direct_hyp = hyp2f1(r + frequency[failed], b + frequency[failed], c[failed], z[failed])
                log_discounted_hyp[failed] = (r + frequency[failed]) * np.log1p(-z[failed]) + np.log(direct_hyp)
        # 1 - exp(.) computed with expm1 keeps precision when t is small.
        not_yet_bought_complement = -np.expm1(log_discounted_hyp)
        expected_if_alive = (a + b + frequency - 1.0) / (a - 1.0) * not_yet_bought_complement
        probability_alive = expit(-self._log_odds_dropped_out(frequency, recency, T))
        expected = expected_if_alive * probability_alive
        return np.where(t == 0, 0.0, expected)

    def expected_number_of_purchases_up_to_time(self, t):
        """Unconditional expected repeat purchases of a new customer in (0, t]."""
        r, alpha, a, b = self._param_tuple()
        t = np.asarray(t, dtype=float)
        z = t / (alpha + t)
        hyp = hyp2f1(r, b, a + b - 1.0, z)
        return (a + b - 1.0) / (a - 1.0) * (1.0 - (alpha / (alpha + t)) ** r * hyp)


# ---------------------------------------------------------------------------
# Gamma-Gamma
# ---------------------------------------------------------------------------


def _gg_log_likelihood(params, frequency, monetary_value):
    """Per-customer Gamma-Gamma log-likelihood of the mean repeat spend (Hardie note 025)."""
    p, q, v = params
    px = p * frequency
    return (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(v)
        + (px - 1.0) * np.log(monetary_value)
        + px * np.log(frequency)
        - (px + q) * np.log(frequency * monetary_value + v)
    )


def _gg_negative_log_likelihood(log_params, frequency, monetary_value, weights, penalizer_coef):
    """Weighted mean negative log-likelihood (+ L2 penalty) and its gradient in log-parameters."""
    params = np.exp(log_params)
    p, q, v = params
    px = p * frequency
    log_spend_total = np.log(frequency * monetary_value + v)
    log_likelihood = _gg_log_likelihood(params, frequency, monetary_value)
    d_p = frequency * (
        digamma(px + q) - digamma(px) + np.log(monetary_value) + np.log(frequency) - log_spend_total
    )
    d_q = digamma(px + q) - digamma(q) + np.log(v) - log_spend_total
    d_v = q / v - (px + q) / (frequency * monetary_value + v)

    total_weight = weights.sum()
    mean_log_likelihood = np.dot(weights, log_likelihood) / total_weight
    gradient_params = np.array([np.dot(weights, d_p), np.dot(weights, d_q), np.dot(weights, d_v)]) / total_weight
    objective = -mean_log_likelihood + penalizer_coef * np.sum(params**2)
    gradient = -gradient_params * params + 2.0 * penalizer_coef * params**2
    return objective, gradient


class GammaGammaModel:
    """Gamma-Gamma model of the average spend per repeat purchase."""

    def __init__(self, penalizer_coef=0.0, initial_params=None, tol=1e-8, max_iter=1000):
        self.penalizer_coef = penalizer_coef
        self.initial_params = initial_params
        self.tol = tol
        self.max_iter = max_iter

    @staticmethod
    def _repeat_buyers(frequency, monetary_value, weights=None):
        """Keep customers with frequency > 0 and check their spend is positive."""
        frequency = _as_float_array(frequency, "frequency")
        monetary_value = _as_float_array(monetary_value, "monetary_value")
        if frequency.shape != monetary_value.shape:
            raise InvalidInput("frequency and monetary_value must have the same length")
        weights = _validate_weights(weights, frequency.size)
        repeat = frequency > 0
        if not np.any(repeat):
            raise InvalidInput("Gamma-Gamma needs at least one customer with frequency > 0")
        non_positive = int(np.sum(monetary_value[repeat] <= 0))
        if non_positive:
            raise InvalidInput(
                f"{non_positive} repeat customers have monetary_value <= 0; "
                "Gamma-Gamma needs positive average spend (filter them out first)"
            )
        return frequency[repeat], monetary_value[repeat], weights[repeat]

    def fit(self, frequency, monetary_value, weights=None):
        """Estimate p, q, v from repeat buyers; customers with frequency == 0 are ignored.

        ``monetary_value`` is the mean spend of the repeat purchases (lifetimes
        convention). ``log_likelihood_`` is the total log-likelihood.
        """
        frequency, monetary_value, weights = self._repeat_buyers(frequency, monetary_value, weights)
        if self.penalizer_coef < 0:
            raise InvalidInput("penalizer_coef must be >= 0")
        # v carries the currency scale (15 for dollars, 1e5 for rupiah): spend is
        # divided by its average during optimisation so the search is the same for
        # every currency; v is scaled back afterwards (the penalty sees scaled v).
        spend_scale = 1.0 / float(np.average(monetary_value, weights=weights))
        if self.initial_params is None:
            initial_scaled = np.ones(3)
        else:
            initial_scaled = np.asarray(self.initial_params, dtype=float).copy()
            if initial_scaled.shape != (3,) or np.any(initial_scaled <= 0):
                raise InvalidInput("initial_params must be 3 positive numbers (p, q, v)")
            initial_scaled[2] *= spend_scale
        result = _minimize_negative_log_likelihood(
            _gg_negative_log_likelihood,
            np.log(initial_scaled),
            (frequency, monetary_value * spend_scale, weights, self.penalizer_coef),
            self.tol,
            self.max_iter,
        )
        p, q, scaled_v = np.exp(result.x)
        v = scaled_v / spend_scale
        self.params_ = {"p": float(p), "q": float(q), "v": float(v)}
        self.log_likelihood_ = float(np.dot(weights, _gg_log_likelihood((p, q, v), frequency, monetary_value)))
        self.n_iter_ = int(result.nit)
        return self

    def conditional_expected_average_profit(self, frequency, monetary_value):
        """E[spend per purchase | x, m] = p (v + x m) / (p x + q - 1); the population mean when x == 0."""
        if not hasattr(self, "params_"):
            raise NotFittedError("GammaGammaModel is not fitted yet; call fit() first")
        frequency = _as_float_array(frequency, "frequency")
        monetary_value = _as_float_array(monetary_value, "monetary_value")
        p, q, v = self.params_["p"], self.params_["q"], self.params_["v"]
        # Customers without repeat purchases carry no spend information; their
        # monetary_value (0 by convention) must not enter the weighted mean.
        observed_spend = np.where(frequency > 0, monetary_value, 0.0)
        return p * (v + frequency * observed_spend) / (p * frequency + q - 1.0)


# ---------------------------------------------------------------------------
# CLV and data preparation
# ---------------------------------------------------------------------------


def _periods_per_month(time_unit_days: float) -> float:
    """Model time units per month, using lifetimes' factors for days and weeks."""
    if time_unit_days <= 0:
        raise InvalidInput("time_unit_days must be positive")
    if float(time_unit_days) in _LIFETIMES_PERIODS_PER_MONTH:
        return _LIFETIMES_PERIODS_PER_MONTH[float(time_unit_days)]
    return AVERAGE_DAYS_PER_MONTH / time_unit_days


@dataclass(frozen=True)
class ClvHorizon:
    """How far ahead CLV looks and how it discounts: ``months`` ahead, ``discount_rate`` per month.

    ``time_unit_days`` is the time unit the BG/NBD model was fitted with (7 for weeks, 1 for days).
    """

    months: int = 12
    discount_rate: float = 0.01
    time_unit_days: float = 7


def customer_lifetime_value(bg_model, gg_model, frequency, recency, T, monetary_value, horizon=ClvHorizon()):
    """Discounted expected spend over the next ``horizon.months`` months (lifetimes' definition).

    CLV = sum_{k=1..months} (E[purchases up to month k] - E[purchases up to month k-1])
          * E[spend per purchase] / (1 + discount_rate) ** k

    ``recency`` and ``T`` are in the time unit the BG/NBD model was fitted with
    (``horizon.time_unit_days`` days each). A month is 4.345 weeks or 30 days,
    exactly as lifetimes (``freq="W"``/``"D"``); other units use 365.25/12 days.
    """
    months, discount_rate, time_unit_days = horizon.months, horizon.discount_rate, horizon.time_unit_days
    if months < 0 or int(months) != months:
        raise InvalidInput("months must be a non-negative whole number")
    if discount_rate <= -1:
        raise InvalidInput("discount_rate must be greater than -1")
    periods_per_month = _periods_per_month(time_unit_days)
    frequency, recency, T = _validate_bg_inputs(frequency, recency, T)
    spend_per_purchase = gg_model.conditional_expected_average_profit(frequency, monetary_value)

    clv = np.zeros(frequency.shape)
    purchases_so_far = np.zeros(frequency.shape)
    for month in range(1, int(months) + 1):
        purchases_up_to_month = bg_model.conditional_expected_number_of_purchases_up_to_time(
            month * periods_per_month, frequency, recency, T
        )
        purchases_this_month = purchases_up_to_month - purchases_so_far
        clv += purchases_this_month * spend_per_purchase / (1.0 + discount_rate) ** month
        purchases_so_far = purchases_up_to_month
    return clv


def _to_day(timestamp_like) -> pd.Timestamp:
    """Parse a date-like scalar and floor it to the calendar day."""
    timestamp = pd.Timestamp(timestamp_like)
    if pd.isna(timestamp):
        raise InvalidInput("dates must not be missing")
    return timestamp.floor("D")


def _summarise_purchase_days(daily: pd.DataFrame, cutoff: pd.Timestamp, time_unit_days: float) -> pd.DataFrame:
    """frequency/recency/T/monetary_value from one row per (customer, purchase day)."""
    grouped = daily.groupby("customer_id", sort=True)
    first_day = grouped["day"].min()
    last_day = grouped["day"].max()
    purchase_days = grouped["day"].size()
    one_unit = pd.Timedelta(days=time_unit_days)

    # lifetimes' convention: the first purchase day starts the clock and is not
    # counted; monetary_value is the mean daily spend of the *repeat* days.
    is_first_day = daily["day"].to_numpy() == first_day.reindex(daily["customer_id"]).to_numpy()
    repeat_amounts = daily.loc[~is_first_day].groupby("customer_id", sort=True)["amount"].mean()

    summary = pd.DataFrame(
        {
            "frequency": (purchase_days - 1).astype(float),
            "recency": (last_day - first_day) / one_unit,
            "T": (cutoff - first_day) / one_unit,
        }
    )
    summary["monetary_value"] = repeat_amounts.reindex(summary.index).fillna(0.0)
    return summary


def summary_from_transactions(
    customer_ids,
    dates,
    amounts,
    observation_end,
    time_unit_days=7,
    calibration_end=None,
):
    """Per-customer frequency, recency, T, monetary_value as lifetimes' summary_data_from_transaction_data.

    Matches lifetimes called with ``freq="D", freq_multiplier=time_unit_days``:
    transactions are grouped per calendar day (amounts of the same day are
    summed), ``frequency`` = number of purchase days after the first one,
    ``recency`` = last - first purchase day, ``T`` = cutoff - first purchase day,
    both in units of ``time_unit_days`` days (fractional, e.g. 213 days = 30.43
    weeks, like the published CDNOW summary). Note lifetimes' ``freq="W"``
    instead snaps dates to calendar weeks and gives whole-week values; that is
    not what the CDNOW papers used.

    Without ``calibration_end`` the cutoff is ``observation_end``. With it, the
    columns describe the calibration period (transactions up to and including
    ``calibration_end``; only customers whose first purchase falls in it) and
    ``frequency_holdout`` / ``monetary_value_holdout`` / ``duration_holdout``
    describe (calibration_end, observation_end], as in lifetimes'
    calibration_and_holdout_data. Index: customer id, sorted.
    """
    if time_unit_days <= 0:
        raise InvalidInput("time_unit_days must be positive")
    transactions = pd.DataFrame(
        {
            "customer_id": np.asarray(customer_ids),
            "day": pd.to_datetime(np.asarray(dates)),
            "amount": np.asarray(amounts, dtype=float),
        }
    )
    if transactions["day"].isna().any():
        raise InvalidInput("dates must not be missing")
    transactions["day"] = transactions["day"].dt.floor("D")
    observation_day = _to_day(observation_end)
    transactions = transactions.loc[transactions["day"] <= observation_day]
    daily = transactions.groupby(["customer_id", "day"], as_index=False, sort=True)["amount"].sum()

    if calibration_end is None:
        return _summarise_purchase_days(daily, observation_day, time_unit_days)

    calibration_day = _to_day(calibration_end)
    if calibration_day > observation_day:
        raise InvalidInput("calibration_end must not be after observation_end")
    in_calibration = daily["day"] <= calibration_day
    summary = _summarise_purchase_days(daily.loc[in_calibration], calibration_day, time_unit_days)
    holdout = daily.loc[~in_calibration & daily["customer_id"].isin(summary.index)]
    holdout_by_customer = holdout.groupby("customer_id", sort=True)["amount"]
    summary["frequency_holdout"] = holdout_by_customer.size().reindex(summary.index).fillna(0).astype(float)
    summary["monetary_value_holdout"] = holdout_by_customer.mean().reindex(summary.index).fillna(0.0)
    summary["duration_holdout"] = (observation_day - calibration_day) / pd.Timedelta(days=time_unit_days)
    return summary

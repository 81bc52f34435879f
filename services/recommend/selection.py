"""Choose each shop's cart model by measurement, on a validation split of its own training window.

Protocol: the training window's baskets sorted by time; the first (1 - validation_fraction) fit the
candidates, the last validation_fraction (20 %) are validation baskets; each validation basket of two
or more items gives one leave-one-out case (one item hidden, seeded), sampled to at most max_cases.
Every candidate structure (a model and its hyper-parameters) is fitted once; every beta is then
scored on the same cases. HR@10 first, NDCG@10 breaks ties, then the order of the grid (simpler
first). The caller refits the winner on the whole training window. The evaluation holdout is never
passed in: callers hand over the training part only.

Scoring is vectorised and exactly what serving computes: a cart's candidates are the items of its
anchors' stored lists plus the stored popular list; the hidden item's rank is the number of those
(cart items excluded) scoring higher, or equal with a lower index (the merge's order). So 20,000
carts cost a sparse product and a few passes over the candidate entries per beta, not a sort.

Pure module: numpy / scipy.sparse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone

from services.recommend.candidates import (
    CoPurchaseCandidate,
    ConditionalProbabilityCandidate,
    TIE_BREAK_WEIGHT,
    BlendCandidate,
    EASECandidate,
    EASEShared,
    ImplicitKNNCandidate,
    NaiveBayesCandidate,
    SoftmaxCandidate,
    binary_baskets,
    candidate_from_spec,
    candidate_spec,
    default_candidate,
)
from services.recommend.evaluation import (
    basket_rows,
    cases_from_entries,
    every_item_case_entries,
    rows_in_order,
    sample_cases,
    time_ordered_split,
)

K = 10


@dataclass(frozen=True)
class SelectionSettings:
    """What selection compares and on how many cases."""

    enabled: bool = True
    max_cases: int = 20_000
    min_cases: int = 200
    validation_fraction: float = 0.2
    seed: int = 42
    betas: tuple = (0.0, 0.1, 0.3, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    # Naive Bayes and softmax carry their own prior in the unit of their lists: beta = 1 is the model itself,
    # so their grid stays near it. A large beta would make them a plain ranking by their prior, which on
    # groceries won the validation weeks and lost the later ones (HTTP HR@10 0.356 against 0.409).
    own_prior_betas: tuple = (0.5, 0.75, 1.0, 1.5, 2.0)
    ease_l2_ratios: tuple = (0.03, 0.3, 3.0)
    # A candidate must beat today's model by more than this many standard errors of HR@10 to replace it.
    default_margin_se: float = 1.0
    ease_max_items: int = 4000
    # Multinomial logistic regression (cart -> missing item) on catalogues up to softmax_max_items skus. A fit
    # costs cases x items x iterations: on a quiet machine about 3 s at 100 skus and 28,000 cases, 11-15 s at
    # the cap (200 skus, 50,000 cases). C = 10 won on a dense accessory catalogue, 0.3 on a café (with its
    # negative weights). No cap above 200: on the 300-sku repeat-purchase shape sampled cases left it 17 %
    # below naive Bayes for twice the time.
    softmax_cs: tuple = (0.3, 10.0)
    softmax_max_items: int = 200
    # Blends of the best blend_members single models (one per family), weights searched on a seeded
    # sample of blend_search_cases cases; kept only if better than the best single model by more than
    # blend_margin_se standard errors of HR@10 (a blend has more knobs to fit the validation noise).
    blend_members: int = 3
    blend_mixes: tuple = (0.25, 0.5, 0.75)
    blend_search_cases: int = 5000
    blend_margin_se: float = 1.0
    n_neighbours: int = 50
    n_popular: int = 200
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict, **overrides) -> SelectionSettings:
        """Settings from the service configuration (SELECTION_*, EASE_MAX_ITEMS)."""
        values = {
            "enabled": bool(config.get("MODEL_SELECTION", cls.enabled)),
            "max_cases": int(config.get("SELECTION_MAX_CASES", cls.max_cases)),
            "min_cases": int(config.get("SELECTION_MIN_CASES", cls.min_cases)),
            "ease_max_items": int(config.get("EASE_MAX_ITEMS", cls.ease_max_items)),
            "softmax_max_items": int(config.get("SELECTION_SOFTMAX_MAX_ITEMS", cls.softmax_max_items)),
        }
        if config.get("SELECTION_BETAS"):
            values["betas"] = _floats(config["SELECTION_BETAS"])
        if config.get("SELECTION_EASE_L2_RATIOS"):
            values["ease_l2_ratios"] = _floats(config["SELECTION_EASE_L2_RATIOS"])
        values.update(overrides)
        return cls(**values)


def _floats(value) -> tuple:
    """A tuple of floats from "0,0.1,1" or a sequence."""
    parts = value.split(",") if isinstance(value, str) else value
    return tuple(float(part) for part in parts)


def candidate_structures(settings: SelectionSettings) -> list:
    """The unfitted models compared (beta is varied afterwards on each fitted structure)."""
    common = {"n_neighbours": settings.n_neighbours, "n_popular": settings.n_popular}
    structures = [
        CoPurchaseCandidate(beta=0.0, **common),
        ConditionalProbabilityCandidate(**common),
        ImplicitKNNCandidate(weighting="cosine", **common),
        ImplicitKNNCandidate(weighting="bm25", **common),
        NaiveBayesCandidate(**common),
    ]
    structures += [SoftmaxCandidate(C=inverse_l2, **common) for inverse_l2 in settings.softmax_cs]
    structures += [EASECandidate(l2_ratio=ratio, max_items=settings.ease_max_items, **common)
                   for ratio in settings.ease_l2_ratios]
    return structures


def validation_split(basket_times, validation_fraction: float = 0.2):
    """(fit_idx, validation_idx): the training window by time, its last fraction for validation."""
    return time_ordered_split(basket_times, 1.0 - validation_fraction)


def sampled_cases(baskets, basket_indices, max_cases: int, seed: int = 42) -> list:
    """Every leave-one-out case of the given baskets (2+ items), a seeded sample of at most max_cases.

    Each item of a validation basket is hidden once (not one random item per basket): more cases
    from the same baskets make the comparison of close candidates less noisy.
    """
    basket_indices = np.asarray(basket_indices).reshape(-1)
    rows = basket_rows(baskets, basket_indices)
    case_rows, case_entries = every_item_case_entries(rows, max_cases, seed)
    return cases_from_entries(rows, case_rows, case_entries, basket_indices)


def cases_as_matrix(cases, n_items: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """(carts as a cases x items CSR, hidden item per case)."""
    lengths = np.array([case.cart_items.size for case in cases], dtype=np.int64)
    indices = np.concatenate([case.cart_items for case in cases]).astype(np.int64) if cases else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    carts = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(cases), n_items))
    return carts, np.array([case.hidden_item for case in cases], dtype=np.int64)


def unique_of_sorted_runs(first_run: np.ndarray, second_run: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(concatenated runs, return_inverse=True) of two ascending int64 runs, in linear time.

    A stable sort of two concatenated sorted runs is one merge (timsort), where np.unique sorts afresh.
    """
    all_keys = np.concatenate([first_run, second_run])
    order = np.argsort(all_keys, kind="stable")
    sorted_keys = all_keys[order]
    first = np.ones(sorted_keys.size, dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    inverse = np.empty(all_keys.size, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return sorted_keys[first], inverse


class CandidateTable:
    """A fitted candidate's cart candidates for many cases, ready to rank the hidden items per beta."""

    def __init__(self, model, carts: sp.csr_matrix, hidden: np.ndarray) -> None:
        n_cases, n_items = carts.shape
        evidence = sp.csr_matrix(model.cart_evidence(carts), copy=True)
        evidence.sum_duplicates()
        evidence_keys = (np.repeat(np.arange(n_cases, dtype=np.int64), np.diff(evidence.indptr)) * n_items
                         + evidence.indices)
        by_item = np.argsort(model.popular_items_, kind="stable")
        popular_items = model.popular_items_[by_item].astype(np.int64)
        popular_keys = (np.arange(n_cases, dtype=np.int64)[:, None] * n_items + popular_items).ravel()
        keys, inverse = unique_of_sorted_runs(evidence_keys, popular_keys)
        self.evidence = np.zeros(keys.size)
        self.evidence[inverse[:evidence.nnz]] = evidence.data
        self.popular = np.zeros(keys.size)
        self.popular[inverse[evidence.nnz:]] = np.tile(model.popular_scores_[by_item], n_cases)
        cart = sp.coo_matrix(carts)
        cart_keys = cart.row.astype(np.int64) * n_items + cart.col
        cart_positions = np.minimum(np.searchsorted(keys, cart_keys), max(keys.size - 1, 0))
        in_cart = np.zeros(keys.size, dtype=bool)
        if keys.size:
            in_cart[cart_positions[keys[cart_positions] == cart_keys]] = True
        self.rows = keys // n_items
        self.cols = keys % n_items
        self.keep = ~in_cart
        hidden_keys = np.arange(n_cases, dtype=np.int64) * n_items + hidden
        position = np.minimum(np.searchsorted(keys, hidden_keys), max(keys.size - 1, 0))
        self.found = (keys.size > 0) & (keys[position] == hidden_keys) if keys.size else np.zeros(n_cases, bool)
        self.hidden_position = position
        self.hidden = hidden
        self.n_cases = n_cases

    def case_results(self, weight: float) -> tuple[np.ndarray, np.ndarray]:
        """(hit, gain) per case with the popular list blended at this weight (gain: 1 / log2(rank + 2))."""
        scores = self.evidence + weight * self.popular
        hidden_score = np.where(self.found, scores[self.hidden_position], -np.inf)
        row_hidden_score = hidden_score[self.rows]
        ahead = (scores > row_hidden_score) | ((scores == row_hidden_score) & (self.cols < self.hidden[self.rows]))
        rank = np.bincount(self.rows[ahead & self.keep], minlength=self.n_cases)
        hit = self.found & (rank < K)
        return hit, np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)

    def metrics(self, weight: float) -> tuple[float, float]:
        """(HR@10, NDCG@10) with the popular list blended at this weight."""
        if self.n_cases == 0:
            return 0.0, 0.0
        hit, gain = self.case_results(weight)
        return float(hit.mean()), float(gain.mean())


# Cases scored at once: a batch's candidate table holds about (20 anchors x 50 neighbours + 200
# popular) entries per case, so 2,000 cases stay near 100 MB whatever the catalogue size.
CASES_PER_BATCH = 2000


def case_hits(model, cases, weights) -> tuple[np.ndarray, np.ndarray]:
    """(hits, gains): per blend weight (rows) and case (columns), whether and how well the hidden item ranks."""
    hits = np.zeros((len(weights), len(cases)), dtype=bool)
    gains = np.zeros((len(weights), len(cases)))
    for start in range(0, len(cases), CASES_PER_BATCH):
        batch = cases[start:start + CASES_PER_BATCH]
        carts, hidden = cases_as_matrix(batch, model.n_items_)
        table = CandidateTable(model, carts, hidden)
        for position, weight in enumerate(weights):
            hits[position, start:start + len(batch)], gains[position, start:start + len(batch)] = \
                table.case_results(weight)
    return hits, gains


def evaluate_fitted(model, cases, weights=None) -> list[tuple[float, float, float]]:
    """[(beta, HR@10, NDCG@10)] of a fitted candidate on cases, for each blend weight (default: its own)."""
    if weights is None:
        weights = [model.popularity_weight_]
    if not cases:
        return [(weight, 0.0, 0.0) for weight in weights]
    hits, gains = case_hits(model, cases, weights)
    return [(weight, float(hit.mean()), float(gain.mean())) for weight, hit, gain in zip(weights, hits, gains)]


def select_model(baskets, basket_times, settings: SelectionSettings | None = None):
    """(unfitted winner, report): compare every candidate on the window's own validation split."""
    settings = settings or SelectionSettings()
    report = {"candidates": [], "cases": 0, "validation_fraction": settings.validation_fraction}
    if not settings.enabled:
        return _keep_default(report, "model selection is disabled (MODEL_SELECTION)")
    # Checked before the matrix is built: a shop with no orders yet has an empty basket matrix.
    if baskets.shape[0] < 2:
        return _keep_default(report, "fewer than two orders in the training window")
    matrix = binary_baskets(baskets)
    times = np.asarray(basket_times, dtype=float)
    fit_idx, validation_idx = validation_split(times, settings.validation_fraction)
    cases = sampled_cases(matrix, validation_idx, settings.max_cases, settings.seed)
    report["cases"] = len(cases)
    report["fit_orders"] = int(fit_idx.size)
    if len(cases) < settings.min_cases:
        return _keep_default(report, f"{len(cases)} validation cases, fewer than the {settings.min_cases} "
                                     "a comparison needs")
    # One fit part for every candidate and the blends (a view when the window is sorted by time).
    fit_matrix, fit_times = rows_in_order(matrix, fit_idx), times[fit_idx]
    del matrix
    scored, best_fits = _score_candidates(fit_matrix, fit_times, cases, settings, report)
    scored += _blend_rows(fit_matrix, fit_times, cases, settings, best_fits, report)
    default = scored[0]
    best = _best_eligible(scored, len(cases), settings, report)
    # The binomial standard error of the best HR@10, not the paired one of the per-case difference: the
    # paired one only measures case noise, and on groceries it let a validation window that favours
    # popularity a little more than the next weeks do switch the model (HTTP HR@10 0.4089 -> 0.4056).
    margin = settings.default_margin_se * float(np.sqrt(best[1] * (1.0 - best[1]) / len(cases)))
    if best is not default and round(best[1], 4) - default[3]["hr_at_10"] <= margin:
        # Within one standard error of today's model: not worth a change of model on noise.
        report["chosen"] = default[3]
        report["reason"] = (f"kept the default model: the best candidate ({best[3]['name']} {best[3]['params']}, "
                            f"HR@10 {best[1]:.4f}) beats it by no more than one standard error ({margin:.4f}) "
                            f"on {len(cases)} validation cases")
        return default_candidate(), report
    report["chosen"] = best[3]
    report["reason"] = (f"highest HR@10 ({best[1]:.4f}, NDCG@10 {best[2]:.4f}) of {len(report['candidates'])} "
                        f"candidates on {len(cases)} validation cases, {best[1] - default[1]:+.4f} over the "
                        f"default (standard error {margin / max(settings.default_margin_se, 1e-12):.4f})")
    return best[0], report


def _best_eligible(scored: list, n_cases: int, settings: SelectionSettings, report: dict):
    """The best entry; a blend only if it beats the best single model by more than blend_margin_se SE."""
    singles = [entry for entry in scored if not isinstance(entry[0], BlendCandidate)]
    best_single = max(singles, key=lambda entry: (entry[1], entry[2]))
    best = max(scored, key=lambda entry: (entry[1], entry[2]))
    if best is best_single:
        if report["blend"]["searched"]:
            report["blend"].update(kept=False, why="no blend scored above the best single model")
        return best
    margin = settings.blend_margin_se * float(np.sqrt(best[1] * (1.0 - best[1]) / n_cases))
    if best[1] - best_single[1] > margin:
        report["blend"]["kept"] = True
        return best
    report["blend"]["kept"] = False
    report["blend"]["why"] = (f"the best blend (HR@10 {best[1]:.4f}) beats the best single model "
                              f"({best_single[1]:.4f}) by no more than {settings.blend_margin_se:g} standard "
                              f"error ({margin:.4f})")
    return best_single


def _score_candidates(fit_matrix, fit_times, cases, settings: SelectionSettings, report: dict) -> tuple:
    """([(unfitted candidate, HR@10, NDCG@10, report row, per-case hits)], today's default first;
    {family: (HR@10, NDCG@10, fitted model)} the best fit of each model family, for the blends)."""
    scored, best_fits = [], {}
    report["seconds"] = {}
    ease_shared = None
    for structure in candidate_structures(settings):
        if isinstance(structure, SoftmaxCandidate) and fit_matrix.shape[1] > settings.softmax_max_items:
            report.setdefault("skipped", []).append({**structure.describe(), "why": (
                f"{fit_matrix.shape[1]} items, above SELECTION_SOFTMAX_MAX_ITEMS ({settings.softmax_max_items})")})
            continue
        started = time.perf_counter()
        if isinstance(structure, EASECandidate):
            # Every l2 of the grid shares the covered items' X'X and the cosine lists beyond them.
            ease_shared = ease_shared or EASEShared.of(binary_baskets(fit_matrix), structure.max_items,
                                                       structure.n_neighbours, structure.num_threads)
            fitted = clone(structure).fit(fit_matrix, fit_times, shared=ease_shared)
        else:
            fitted = clone(structure).fit(fit_matrix, fit_times)
        fit_seconds = time.perf_counter() - started
        betas = list(settings.own_prior_betas if structure.prior_in_own_unit else settings.betas)
        weights = [max(beta, TIE_BREAK_WEIGHT) for beta in betas]
        if isinstance(structure, CoPurchaseCandidate):
            # Today's default (its own prior, beta=None) is the same fit at one more weight.
            betas.insert(0, None)
            weights.insert(0, float(fitted.popularity_.max()) / fitted.scale_)
        hits, gains = case_hits(fitted, cases, weights)
        entries = _beta_entries(structure, betas, hits, gains, report)
        scored += entries
        _candidate, hit_rate, ndcg, _row, _hit = max(entries, key=lambda entry: (entry[1], entry[2]))
        if (hit_rate, ndcg) > best_fits.get(fitted.name, (-1.0, -1.0, None))[:2]:
            best_fits[fitted.name] = (hit_rate, ndcg, fitted)
        params = fitted.describe()["params"]
        label = f"{fitted.name} {params.get('l2_ratio', params.get('C', ''))}".strip()
        report["seconds"][label] = {"fit": round(fit_seconds, 2),
                                    "score": round(time.perf_counter() - started - fit_seconds, 2)}
    del ease_shared
    return scored, best_fits


def _beta_entries(structure, betas, hits, gains, report: dict) -> list:
    """(unfitted candidate, HR@10, NDCG@10, report row, per-case hits) of `structure` at each beta; rows reported."""
    entries = []
    for beta, hit, gain in zip(betas, hits, gains):
        candidate = clone(structure).set_params(beta=beta)
        hit_rate, ndcg = float(hit.mean()), float(gain.mean())
        row = {**candidate.describe(), "hr_at_10": round(hit_rate, 4), "ndcg_at_10": round(ndcg, 4)}
        report["candidates"].append(row)
        entries.append((candidate, hit_rate, ndcg, row, hit))
    return entries


def _blend_rows(fit_matrix, fit_times, cases, settings: SelectionSettings, best_fits: dict, report: dict) -> list:
    """Scored rows (one per beta) of the best blend of the best single models, its weights searched first."""
    ranked = sorted(best_fits.values(), key=lambda entry: (entry[0], entry[1]), reverse=True)
    members = [entry[2] for entry in ranked[: settings.blend_members]]
    report["blend"] = {"members": [member.name for member in members], "searched": []}
    if len(members) < 2:
        return []
    started = time.perf_counter()
    search_cases = cases
    if len(cases) > settings.blend_search_cases:
        search_cases = [cases[index] for index in sample_cases(len(cases), settings.blend_search_cases, settings.seed)]
    weights = [max(beta, TIE_BREAK_WEIGHT) for beta in settings.betas]
    best = None
    for mix in blend_grid(len(members), settings.blend_mixes):
        blend = _fitted_blend(members, mix, fit_matrix, fit_times, settings)
        hits, gains = case_hits(blend, search_cases, weights)
        hit_rates, ndcgs = hits.mean(axis=1), gains.mean(axis=1)
        top = int(np.lexsort((-ndcgs, -hit_rates))[0])
        report["blend"]["searched"].append({"weights": [round(w, 4) for w in mix],
                                            "hr_at_10": round(float(hit_rates[top]), 4)})
        if best is None or (hit_rates[top], ndcgs[top]) > best[:2]:
            best = (hit_rates[top], ndcgs[top], blend)
    blend = best[2]
    hits, gains = case_hits(blend, cases, weights)
    scored = _beta_entries(blend, settings.betas, hits, gains, report)
    report["seconds"]["blend"] = {"fit": 0.0, "score": round(time.perf_counter() - started, 2)}
    return scored


def blend_grid(n_members: int, mixes) -> list:
    """Weight vectors searched: every pair of members at each mix (1 - t, t), and equal thirds of three."""
    grid = []
    for first in range(n_members):
        for second in range(first + 1, n_members):
            for mix in mixes:
                weights = [0.0] * n_members
                weights[first], weights[second] = 1.0 - mix, mix
                grid.append(weights)
    if n_members >= 3:
        grid.append([1.0 / 3] * 3 + [0.0] * (n_members - 3))
    return grid


def _fitted_blend(members, mix, fit_matrix, fit_times, settings: SelectionSettings) -> BlendCandidate:
    """A blend of the members with non-zero weight, fitted from their fits."""
    used = [(member, weight) for member, weight in zip(members, mix) if weight > 0]
    blend = BlendCandidate(members=[candidate_spec(member) for member, _weight in used],
                           weights=[round(float(weight), 4) for _member, weight in used],
                           n_neighbours=settings.n_neighbours, n_popular=settings.n_popular)
    return blend.fit_members([member for member, _weight in used], fit_matrix, fit_times)


def _keep_default(report: dict, why: str):
    """The default model and a report that says why no comparison was made."""
    model = default_candidate()
    report["chosen"] = {**model.describe(), "hr_at_10": None, "ndcg_at_10": None}
    report["reason"] = f"kept the default model: {why}"
    return model, report


def candidate_from_row(row: dict):
    """The unfitted candidate a report row names ({"name", "params"}), e.g. a previous run's choice."""
    return candidate_from_spec(row["name"], row.get("params") or {})

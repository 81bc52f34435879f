"""A/B tests between recommenders on one surface: creation, sticky assignment, and the report.

A variant is `current` (the published model), `popular`, or a candidate family of the nightly model
selection (e.g. `knn_cosine`: tonight's best row of that family, which training fits and stages for
bought-together and cart while an experiment names it).

Assignment hashes (experiment id, customer id or session id) with shared/statistics.py's unit_hash, so
a shopper gets the same variant on every call, in every process, on every machine, with no state
stored. The report compares each variant with the control: CTR (impressions clicked) with Wilson
intervals and the Newcombe interval of the difference (the campaign report's statistics), revenue per
impression with a normal interval, the sample still needed for the minimum detectable effect, a verdict.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from services.recommend.attribution import Period, aggregate, rate, revenue_per_impression
from services.recommend.model_families import CANDIDATE_FAMILIES, best_rows_by_family
from services.recommend.online_metrics import load_events, load_paid_lines
from shared import runs
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.extensions import db
from shared.ingest import utcnow
from shared.models import Experiment
from shared.statistics import GroupTotals, sample_size_per_group, unit_hash, uplift_summary, weighted_choice

# What a variant may serve: the published model as it is, the popular list, or a candidate family of the
# nightly model selection (CANDIDATE_FAMILIES: tonight's best row of that family, fitted and staged by training).
SERVABLE_VARIANTS = ("current", "popular")
# Candidates are item-neighbour models: they serve the surfaces built from the chosen model's item lists.
# Bundles keep their count evidence, and for-you lists are per customer, precomputed for the chosen model only.
CANDIDATE_SURFACES = ("bought_together", "cart")
# Below these per-variant counts the report says the sample is too small to conclude anything.
MIN_IMPRESSIONS = 100
MIN_CLICKED_IMPRESSIONS = 5


def assign_variant(experiment_id: str, variants: list[dict], unit: str) -> str:
    """The variant of a customer or session: deterministic and sticky, split by the traffic weights."""
    position = unit_hash("experiment", experiment_id, unit)
    return weighted_choice(position, [variant["name"] for variant in variants],
                           [float(variant["weight"]) for variant in variants])


def experiment_status(row: Experiment, now: datetime) -> str:
    if row.stopped_at is not None:
        return "stopped"
    if now < row.starts_at:
        return "scheduled"
    if now >= row.ends_at:
        return "ended"
    return "running"


def describe(row: Experiment, now: datetime | None = None) -> dict:
    """An experiment as the API answers it."""
    return {
        "experiment_id": row.experiment_id,
        "name": row.name,
        "surface": row.surface,
        "variants": row.variants,
        "control": row.control,
        "starts_at": row.starts_at.replace(tzinfo=timezone.utc),
        "ends_at": row.ends_at.replace(tzinfo=timezone.utc),
        "min_detectable_effect": row.min_detectable_effect,
        "status": experiment_status(row, now or utcnow()),
    }


def _naive(value: datetime) -> datetime:
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def check_variants(surface: str, names: list[str], available: list[str]) -> None:
    """422 unless every variant is current, popular, or a candidate family the published selection scored.

    available: the families with a row in the published run's model_selection; candidate variants are
    accepted on CANDIDATE_SURFACES only.
    """
    offered = ", ".join(available) if available else "none (the published run compared no candidates)"
    unknown = [name for name in names if name not in SERVABLE_VARIANTS and name not in CANDIDATE_FAMILIES]
    if unknown:
        raise InvalidRequest(
            f"a variant is current, popular or a candidate family; not {', '.join(unknown)}",
            {"variants": [f"unknown variant {name}; candidate families in the published model selection: "
                          f"{offered}" for name in unknown]})
    candidates = [name for name in names if name in CANDIDATE_FAMILIES]
    if candidates and surface not in CANDIDATE_SURFACES:
        raise InvalidRequest(
            f"candidate variants do not serve {surface}",
            {"variants": [f"candidate variants ({', '.join(candidates)}) serve {' and '.join(CANDIDATE_SURFACES)} "
                          f"only; on {surface} use current or popular"]})
    missing = [name for name in candidates if name not in available]
    if missing:
        raise InvalidRequest(
            f"the published model selection has no row of {', '.join(missing)}",
            {"variants": [f"no {name} row in the published run's model selection; candidate families "
                          f"available: {offered}" for name in missing]})


def published_families() -> list[str]:
    """Candidate families with a row in the published run's model_selection (read as GET /v1/runs/{id} does)."""
    run_id = runs.current_run_id()
    if run_id is None:
        return []
    metrics = runs.get_run(run_id).metrics or {}
    return sorted(best_rows_by_family(metrics.get("model_selection")))


def create_experiment(data: dict, config) -> dict:
    """Store a new experiment; 422 for a variant it cannot serve, 409 when another one on the surface overlaps."""
    names = [variant["name"] for variant in data["variants"]]
    check_variants(data["surface"], names, published_families() if set(names) - set(SERVABLE_VARIANTS) else [])
    starts_at, ends_at = _naive(data["starts_at"]), _naive(data["ends_at"])
    with db.session() as session:
        overlapping = session.execute(select(Experiment).where(
            Experiment.surface == data["surface"], Experiment.stopped_at.is_(None),
            Experiment.starts_at < ends_at, Experiment.ends_at > starts_at)).scalars().first()
        if overlapping is not None:
            raise Conflict(f"experiment {overlapping.experiment_id} already runs on {data['surface']} then",
                           {"experiment_id": overlapping.experiment_id})
        row = Experiment(
            experiment_id=f"x{utcnow():%Y%m%d}-{uuid.uuid4().hex[:8]}",
            name=data["name"],
            surface=data["surface"],
            variants=[{"name": variant["name"], "weight": variant["weight"]} for variant in data["variants"]],
            control=data.get("control") or data["variants"][0]["name"],
            starts_at=starts_at,
            ends_at=ends_at,
            min_detectable_effect=data.get("min_detectable_effect") or config["EXPERIMENT_DEFAULT_MDE"],
            created_at=utcnow(),
        )
        session.add(row)
        session.flush()
        return describe(row)


def candidate_families_in_use(now: datetime | None = None) -> set[str]:
    """Candidate families named by experiments running or scheduled (not stopped, not ended): training stages them."""
    moment = now or utcnow()
    with db.session() as session:
        rows = session.execute(select(Experiment.variants).where(
            Experiment.stopped_at.is_(None), Experiment.ends_at > moment)).scalars().all()
    return {variant["name"] for variants in rows for variant in variants if variant["name"] in CANDIDATE_FAMILIES}


def get_experiment(experiment_id: str) -> Experiment:
    with db.session() as session:
        row = session.get(Experiment, experiment_id)
        if row is None:
            raise NotFound(f"no experiment {experiment_id}")
        session.expunge(row)
        return row


class RunningExperiments:
    """The running experiment of each surface, reloaded every few seconds (kept when the database is down)."""

    def __init__(self) -> None:
        self._by_surface: dict[str, dict] = {}
        self._loaded = float("-inf")
        self._lock = threading.Lock()

    def reset(self) -> None:
        self._by_surface = {}
        self._loaded = float("-inf")

    def running(self, surface: str, cache_seconds: float) -> dict | None:
        """The experiment running on `surface` now, or None."""
        now = time.monotonic()
        if now - self._loaded >= cache_seconds:
            with self._lock:
                if now - self._loaded >= cache_seconds:
                    self._reload()
                    self._loaded = now
        return self._by_surface.get(surface)

    def _reload(self) -> None:
        moment = utcnow()
        try:
            with db.session() as session:
                rows = session.execute(select(Experiment).where(
                    Experiment.stopped_at.is_(None), Experiment.starts_at <= moment,
                    Experiment.ends_at > moment)).scalars().all()
                self._by_surface = {row.surface: {"experiment_id": row.experiment_id, "variants": row.variants}
                                    for row in rows}
        except Exception:  # keep the last experiments we knew; serving never fails on this
            pass


def experiment_report(experiment_id: str, config) -> dict:
    """Per variant CTR and revenue per impression, uplift against the control, sample still needed, a verdict."""
    row = get_experiment(experiment_id)
    end = min(row.ends_at, utcnow() + timedelta(seconds=1))
    window = timedelta(hours=config["ATTRIBUTION_WINDOW_HOURS"])
    period = Period(row.starts_at, end + window, timezone.utc, window)
    with db.session() as session:
        events = load_events(session, row.starts_at, end + window, experiment_id)
        lines = load_paid_lines(session, row.starts_at, end + window)
    totals = aggregate(events, lines, period, ["variant"])["totals"]
    by_variant = {key[3]: value for key, value in totals.items()}
    variants = [variant_figures(variant["name"], by_variant.get(variant["name"])) for variant in row.variants]
    control = next(figures for figures in variants if figures["variant"] == row.control)
    comparisons = [compare(figures, control, row.min_detectable_effect)
                   for figures in variants if figures["variant"] != row.control]
    verdict, conclusion = overall_verdict(comparisons)
    return {"experiment": describe(row), "variants": variants, "comparisons": comparisons, "verdict": verdict,
            "conclusion": conclusion}


def variant_figures(name: str, totals) -> dict:
    """One variant's counts, CTR and revenue per impression with intervals."""
    if totals is None:
        return {"variant": name, "impressions": 0, "clicked_impressions": 0, "attributed_orders": 0,
                "attributed_revenue": 0.0, "ctr": rate(0, 0), "revenue_per_impression": revenue_per_impression_empty()}
    return {
        "variant": name,
        "impressions": totals.impressions,
        "clicked_impressions": totals.clicked_impressions,
        "attributed_orders": len(totals.orders),
        "attributed_revenue": round(totals.revenue, 2),
        "ctr": rate(totals.clicked_impressions, totals.impressions),
        "revenue_per_impression": revenue_per_impression(totals),
    }


def revenue_per_impression_empty() -> dict:
    return {"value": None, "ci95_low": None, "ci95_high": None}


def compare(figures: dict, control: dict, minimum_detectable_effect: float) -> dict:
    """CTR uplift of a variant over the control with its Newcombe interval, and the sample still needed."""
    summary = uplift_summary(
        GroupTotals(figures["impressions"], figures["clicked_impressions"], figures["attributed_orders"],
                    figures["attributed_revenue"]),
        GroupTotals(control["impressions"], control["clicked_impressions"], control["attributed_orders"],
                    control["attributed_revenue"]),
        MIN_IMPRESSIONS, MIN_CLICKED_IMPRESSIONS)
    baseline = control["ctr"]["value"] or 0.0
    needed = sample_size_per_group(baseline, minimum_detectable_effect)
    have = min(figures["impressions"], control["impressions"])
    return {
        "variant": figures["variant"],
        "control": control["variant"],
        "ctr_uplift": summary["conversion_uplift"],
        "ci95_low": summary["ci95_low"],
        "ci95_high": summary["ci95_high"],
        "ci_method": summary["ci_method"],
        "relative_uplift": summary["relative_uplift"],
        "revenue_per_impression_uplift": summary["revenue_per_member_uplift"],
        "impressions_needed_per_variant": needed,
        "impressions_still_needed": max(0, needed - have),
        "verdict": summary["verdict"],
    }


def overall_verdict(comparisons: list[dict]) -> tuple[str, str]:
    """One plain sentence over every comparison with the control."""
    winners = [item["variant"] for item in comparisons if item["verdict"] == "significant_positive"]
    losers = [item["variant"] for item in comparisons if item["verdict"] == "significant_negative"]
    waiting = [item for item in comparisons if item["verdict"] == "insufficient_data"]
    if winners:
        best = max((item for item in comparisons if item["variant"] in winners), key=lambda item: item["ctr_uplift"])
        return "variant_wins", (f"{best['variant']} gets more clicks than {best['control']}: "
                                f"+{best['ctr_uplift']:.2%} CTR (95 % CI {best['ci95_low']:.2%} to "
                                f"{best['ci95_high']:.2%}).")
    if losers and len(losers) == len(comparisons):
        return "control_wins", f"The control gets more clicks than {', '.join(losers)}."
    if waiting:
        still = max(item["impressions_still_needed"] for item in waiting)
        return "insufficient_data", f"Too few impressions or clicks to conclude; about {still} more per variant."
    still = max((item["impressions_still_needed"] for item in comparisons), default=0)
    return "no_difference_yet", (f"No significant difference in CTR yet; about {still} more impressions per "
                                 "variant would detect the configured minimum effect.")

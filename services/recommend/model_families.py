"""The candidate model families of the nightly selection, by name, and tonight's best row of each.

Light on purpose (no numpy, no scikit-learn): the web tier validates experiment variants with it.
"""

from __future__ import annotations

# The single-model families a model_selection row (and an experiment variant) may name; a blend mixes them.
CANDIDATE_FAMILIES = (
    "co_purchase", "conditional_probability", "knn_cosine", "knn_bm25", "naive_bayes", "softmax", "ease",
)


def best_rows_by_family(report: dict | None) -> dict[str, dict]:
    """{family: its best-scoring row} of a model_selection report (HR@10, then NDCG@10, then grid order).

    Blends are left out (a mix, not a family); a report that compared nothing gives {}.
    """
    best: dict[str, dict] = {}
    for row in (report or {}).get("candidates") or []:
        if row.get("name") not in CANDIDATE_FAMILIES or row.get("hr_at_10") is None:
            continue
        kept = best.get(row["name"])
        if kept is None or _row_score(row) > _row_score(kept):
            best[row["name"]] = row
    return best


def _row_score(row: dict) -> tuple[float, float]:
    return row["hr_at_10"], row.get("ndcg_at_10") or 0.0

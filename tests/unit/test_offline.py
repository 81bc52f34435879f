"""Unit tests for `segrec evaluate`'s report: the candidate table, blends named by their members."""

from services.recommend import evaluation
from services.recommend.offline import evaluate_baskets, format_report, params_label


def test_a_blend_row_reads_as_its_weighted_members():
    row = {"name": "blend", "params": {"beta": 0.3, "weights": [0.75, 0.25], "members": [
        {"name": "ease", "params": {"l2_ratio": 0.3, "max_items": 4000}},
        {"name": "knn_cosine", "params": {"weighting": "cosine", "bm25_k1": 1.2, "bm25_b": 0.75}}]}}
    assert params_label(row) == "beta 0.3: 0.75 ease(l2_ratio=0.3) + 0.25 knn_cosine"
    assert params_label({"name": "ease", "params": {"beta": 1.0, "l2_ratio": 0.3}}) == "{'beta': 1.0, 'l2_ratio': 0.3}"


def test_the_report_lists_every_candidate_and_the_choice():
    data = evaluation.synthetic_strong_pairs(n_baskets=2000, random_state=3)
    result = evaluate_baskets(data["baskets"], data["times"], with_peers=False)
    text = format_report(result)
    selection = result["model_selection"]
    assert len(selection["candidates"]) > 20
    for name in ("co_purchase", "conditional_probability", "knn_cosine", "knn_bm25", "ease", "blend"):
        assert f"\n{name} " in text
    assert f"chosen: {selection['chosen']['name']} " in text
    assert result["table"][0]["method"].startswith(f"segrec ({selection['chosen']['name']} ")

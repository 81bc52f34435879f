"""Model selection alone on a large synthetic catalogue: seconds per candidate and peak memory.

    PYTHONPATH=$PWD .venv/bin/python -m tests.perf.bench_selection [--orders 40000] [--skus 8000]

EASE runs at its EASE_MAX_ITEMS cap (4,000) with cosine lists for the skus beyond it, so the l2 grid's
fits, the blend search and the scoring of 20,000 validation cases are all measured; no database.
"""

from __future__ import annotations

import argparse
import resource
import time

from services.recommend import evaluation
from services.recommend.selection import SelectionSettings, select_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=40_000)
    parser.add_argument("--skus", type=int, default=8000)
    args = parser.parse_args()
    data = evaluation.synthetic_large_sparse(n_baskets=args.orders, n_items=args.skus)
    started = time.perf_counter()
    _model, report = select_model(data["baskets"], data["times"], SelectionSettings())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"select_model {seconds:.1f} s, peak {peak:,.0f} MB, {report['cases']:,} cases, chosen "
          f"{report['chosen']['name']} {report['chosen']['params']}")
    for label, figures in report["seconds"].items():
        print(f"  {label:<28} fit {figures['fit']:>7.2f} s, score {figures['score']:>7.2f} s")


if __name__ == "__main__":
    main()

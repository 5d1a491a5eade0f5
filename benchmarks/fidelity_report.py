"""perfgate's worker against llama-bench, same build, same models, same machine: ratio per model and metric.

python benchmarks/fidelity_report.py --db STORE --perfgate-build good --llama-bench-build llama-bench-good
"""

from __future__ import annotations

import argparse

import pandas as pd

from bench.analysis.compare import compare_frames, resolve_side
from bench.store.db import open_store
from bench.store.queries import results_frame


def fidelity_table(db: str, perfgate_build: str, llama_bench_build: str) -> pd.DataFrame:
    with open_store(db) as store, store.session() as session:
        ours = resolve_side(session, perfgate_build)
        ref = resolve_side(session, llama_bench_build, machine_fingerprint=ours.machine_fingerprint)
        frame = results_frame(session, sorted({*ours.run_ids, *ref.run_ids}))
    table = compare_frames(
        frame[frame["result_id"].isin(ref.result_ids)],
        frame[frame["result_id"].isin(ours.result_ids)],
        metrics=("pp_ts", "tg_ts"),
    )
    table = table.rename(columns={"baseline": "llama_bench", "candidate": "perfgate"})
    table["within_3pct"] = (table["ratio"] - 1).abs() <= 0.03
    return table[["model", "metric", "perfgate", "llama_bench", "ratio", "ci_low", "ci_high", "within_3pct"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--perfgate-build", default="good")
    parser.add_argument("--llama-bench-build", default="llama-bench-good")
    args = parser.parse_args()
    table = fidelity_table(args.db, args.perfgate_build, args.llama_bench_build)
    with pd.option_context("display.width", 160, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()

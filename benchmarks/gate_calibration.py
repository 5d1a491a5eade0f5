"""Benchmark (not a test): how often does the gate fail an A/A comparison, and how often does it catch a
5% tg drop, with the default repetitions and thresholds?

Measures real samples first: one build under two names, interleaved for many rounds (so the pools hold
process-to-process variation, not only repetition-to-repetition), then resamples the default number of
repetitions per side from each pool and runs the gate's own code on every resample.

    .venv/bin/python benchmarks/gate_calibration.py [--rounds 12] [--resamples 500] [--drop 0.05]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.compare import Comparison, Side, compare_frames
from bench.config import GateConfig, Thresholds
from bench.gate import evaluate
from bench.store.db import open_store
from bench.store.queries import results_frame
from bench.synth import SynthSpec, synthesize


def measure_pools(tmp: Path, rounds: int, reps_per_round: int, threads: int) -> pd.DataFrame:
    model = tmp / "tiny-Q4_0.gguf"
    synthesize(SynthSpec("tiny", "Q4_0"), model)
    cfg = tmp / "aa.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": [{"name": "tiny-q4", "path": str(model)}],
                "builds": [{"name": "A", "python": sys.executable}, {"name": "B", "python": sys.executable}],
                "suite": {"n_prompt": 512, "n_gen": 128, "repetitions": rounds * reps_per_round, "threads": threads},
            }
        )
    )
    db = f"sqlite:///{tmp}/aa.sqlite"
    subprocess.run(
        [
            str(Path(sys.executable).with_name("bench")),
            "run",
            "--config",
            str(cfg),
            "--db",
            db,
            "--interleave",
            "--rounds",
            str(rounds),
            "--quiet",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open_store(db) as store, store.session() as session:
        return results_frame(session)


def _one(row: pd.Series, pp: np.ndarray, tg: np.ndarray) -> pd.DataFrame:
    r = row.copy()
    r["samples_pp_ns"], r["samples_tg_ns"] = [int(x) for x in pp], [int(x) for x in tg]
    return pd.DataFrame([r])


def gate_fails(
    base_row: pd.Series,
    cand_row: pd.Series,
    rng: np.random.Generator,
    reps: int,
    drop: float,
    thresholds: Thresholds,
) -> dict[str, bool]:
    picks = {}
    for side, row in (("base", base_row), ("cand", cand_row)):
        picks[side] = [
            rng.choice(np.array(row[c]), size=reps, replace=False) for c in ("samples_pp_ns", "samples_tg_ns")
        ]
    # a slower candidate: each generation repetition takes 1/(1-drop) as long
    cand_tg = picks["cand"][1] / (1.0 - drop)
    table = compare_frames(
        _one(base_row, *picks["base"]), _one(cand_row, picks["cand"][0], cand_tg), metrics=("pp_ts", "tg_ts"), ci=False
    )
    side = Side("x", (0,), (0,), "m", "m")
    verdict = evaluate(Comparison(side, side, False, table), GateConfig(thresholds=thresholds))
    return {c.metric: not c.passed for c in verdict.checks if c.metric in ("pp_ts", "tg_ts")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--reps-per-round", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--drop", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    reps = 5  # suite.repetitions' default: what a user's gate sees
    thresholds = GateConfig().thresholds
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        frame = measure_pools(Path(tmp), args.rounds, args.reps_per_round, args.threads).set_index("build")
    a, b = frame.loc["A"], frame.loc["B"]
    rng = np.random.default_rng(0)
    aa = [gate_fails(a, b, rng, reps, 0.0, thresholds) for _ in range(args.resamples)]
    drop = [gate_fails(a, b, rng, reps, args.drop, thresholds) for _ in range(args.resamples)]
    false_fail = np.mean([any(x.values()) for x in aa])
    detect = np.mean([x["tg_ts"] for x in drop])
    cv = {
        m: float(np.std(np.array(s)) / np.mean(np.array(s)))
        for m, s in (("pp", a["samples_pp_ns"]), ("tg", a["samples_tg_ns"]))
    }
    print(
        f"pools: {len(a['samples_tg_ns'])} samples per build ({args.rounds} interleaved rounds × "
        f"{args.reps_per_round}), tiny Q4_0 on CPU, {args.threads} thread(s); CV pp {cv['pp']:.2%}, tg {cv['tg']:.2%}"
    )
    print(
        f"gate thresholds {thresholds.model_dump(exclude_none=True)}, {reps} repetitions per side, "
        f"{args.resamples} resamples each"
    )
    print(f"A/A false-fail rate (pp or tg fails): {false_fail:.2%}   (goal ≤ 1%)")
    print(f"detection rate, {args.drop:.0%} tg drop (tg fails):  {detect:.2%}   (goal ≥ 95%)")


if __name__ == "__main__":
    main()

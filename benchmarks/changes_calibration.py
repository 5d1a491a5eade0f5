"""Benchmark (not a test): how often does `bench changes` report a change in a series that has none, and how
often does it find a 5 % step within 3 runs of where it starts?

Series are built from REAL sample pools, never from invented noise: each nightly run's point is made of
`--reps` repetitions as `bench changes` makes it (bench.analysis.changes.run_point, the middle values' mean),
repetition j taken from the j-th sample of a real run picked at random (so a pool keeps its warm-up-slow
first repetition and its run-to-run spread). The pools:

- gpu: the committed H100 ladder (benchmarks/results/gpu_ladder.json): per model (7B…70B) and test (pp,
  tg), the runs of the same sm_90 libllama (perfgate `good`, `fixed`, and llama-bench).
- committed CPU pools (benchmarks/results/gate_pools_cpu.json, measured for the gate's calibration): the
  tiny Q4_0 model on this kind of shared 2-core machine, 1 and 2 threads, 120 fresh worker processes of
  one build (A and B), 3 repetitions each; and B's round figure over A's in the same round (`-ref`, what
  `--reference` divides by), drawn whole.
- cpu (`--cpu-rounds N`): the tiny Q4_0 model measured here and now, N rounds of fresh worker processes.

The committed CPU pools are also read in the order they were measured (B and A alternated, round by
round): each build's own sequence of 60 rounds, and B's figures as ratios to A's of the same round (what
`--reference` does), show what the machine's drift does to a real A/A series, with no resampling at all.

A step multiplies every figure from its start on by (1 − step). "Found" means a slowdown reported within
3 runs of the true start, once in the whole series and once when only 3 runs after the start exist (what
a nightly job would know three nights later).

    .venv/bin/python benchmarks/changes_calibration.py [--series 1000] [--length 30] [--step 0.05] [--cpu-rounds 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.analysis.changes import DetectorSettings, find_shifts, run_point
from bench.metrics import tokens_per_s
from bench.store.db import open_store
from bench.store.queries import results_frame
from bench.synth import SynthSpec, synthesize

LADDER = Path(__file__).with_name("results") / "gpu_ladder.json"
GATE_POOLS = Path(__file__).with_name("results") / "gate_pools_cpu.json"
TOLERANCE_RUNS = 3


@dataclass(frozen=True)
class Pool:
    """Real runs of one build × model × test: t/s per repetition, one row per run."""

    name: str
    runs: np.ndarray  # shape (runs, repetitions)

    def figures(self, rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
        """`n` nightly figures: repetition j of each comes from the j-th sample of a random real run."""
        picks = rng.integers(0, len(self.runs), size=(n, reps))
        return run_point(self.runs[picks, np.arange(reps) % self.runs.shape[1]])


def gpu_pools() -> list[Pool]:
    results = json.loads(LADDER.read_text())
    pools = []
    for model in sorted({r["model"] for r in results}):
        for test, n_key in (("pp", "n_prompt"), ("tg", "n_gen")):
            runs = [
                tokens_per_s(r[f"samples_{test}_ns"], r[n_key])
                for r in results
                if r["model"] == model and r["status"] == "ok" and r["build"] in ("good", "fixed", "llama-bench-good")
            ]
            pools.append(Pool(f"H100 {model} {test}", np.array(runs)))
    return pools


def committed_cpu_pools() -> list[Pool]:
    pools = []
    for key, doc in json.loads(GATE_POOLS.read_text()).items():
        reps = int(doc["reps_per_round"])
        for test, n_tokens in (("pp", int(doc["n_prompt"])), ("tg", int(doc["n_gen"]))):
            runs = [np.array(tokens_per_s(doc[b][test], n_tokens)).reshape(-1, reps) for b in ("A", "B")]
            pools.append(Pool(f"CPU-{key} tiny-Q4_0 {test}", np.concatenate(runs)))
            # B relative to A in the same round, as `--reference` sees a line: one figure per round
            ratios = run_point(runs[1]) / run_point(runs[0])
            pools.append(Pool(f"CPU-{key}-ref tiny-Q4_0 {test}", ratios.reshape(-1, 1)))
    return pools


def cpu_pools(rounds: int, reps: int) -> list[Pool]:
    """The tiny model measured here: `rounds` fresh workers of one build, `reps` repetitions each."""
    with tempfile.TemporaryDirectory(prefix="changes-calibration-") as tmp:
        model = Path(tmp) / "tiny-Q4_0.gguf"
        synthesize(SynthSpec("tiny", "Q4_0"), model)
        cfg = Path(tmp) / "pool.yaml"
        suite = {"n_prompt": 512, "n_gen": 128, "repetitions": rounds * reps, "threads": 1}
        doc = {"models": [{"name": "tiny-q4", "path": str(model)}], "builds": [{"name": "A", "python": sys.executable}]}
        cfg.write_text(yaml.safe_dump({**doc, "suite": suite}))
        db = f"sqlite:///{tmp}/pool.sqlite"
        bench = str(Path(sys.executable).with_name("bench"))
        args = [bench, "run", "--config", str(cfg), "--db", db, "--interleave", "--rounds", str(rounds), "--quiet"]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        with open_store(db) as store, store.session() as session:
            row = results_frame(session).iloc[0]
    pools = []
    for test, n_tokens in (("pp", int(row["n_prompt"])), ("tg", int(row["n_gen"]))):
        # round k's repetitions are stored as samples k·reps … (k+1)·reps − 1
        ts = np.array(tokens_per_s(list(row[f"samples_{test}_ns"]), n_tokens))
        pools.append(Pool(f"CPU-here tiny-Q4_0 {test}", ts[: rounds * reps].reshape(rounds, reps)))
    return pools


def time_ordered_a_a(settings: DetectorSettings) -> None:
    """The committed CPU pools in measured order: A/A as it happened, own figures and B relative to A."""
    for key, doc in json.loads(GATE_POOLS.read_text()).items():
        reps = int(doc["reps_per_round"])
        for test, n_tokens in (("pp", int(doc["n_prompt"])), ("tg", int(doc["n_gen"]))):
            own = {b: run_point(np.array(tokens_per_s(doc[b][test], n_tokens)).reshape(-1, reps)) for b in "AB"}
            found = {b: len(find_shifts(own[b].tolist(), settings)) for b in "AB"}
            relative = len(find_shifts((own["B"] / own["A"]).tolist(), settings))
            print(
                f"  {key} {test}: {len(own['A'])} rounds in measured order: changes in A's own figures "
                f"{found['A']}, B's {found['B']}; in B relative to A (--reference): {relative}"
            )


@dataclass
class Rates:
    series: int = 0
    false_changes: int = 0  # A/A series with any change reported
    found: int = 0  # step series with a slowdown within TOLERANCE_RUNS of the start
    found_early: int = 0  # … when only TOLERANCE_RUNS runs after the start exist
    extra: int = 0  # step series with a change reported elsewhere as well


def _slowdown_near(figures: np.ndarray, start: int, settings: DetectorSettings) -> tuple[bool, bool]:
    shifts = find_shifts(figures.tolist(), settings)
    near = [s for s in shifts if abs(s.index - start) <= TOLERANCE_RUNS and s.shift_pct < 0]
    return bool(near), len(shifts) > len(near)


def calibrate(
    pool: Pool, rng: np.random.Generator, series: int, length: int, reps: int, step: float, settings: DetectorSettings
) -> Rates:
    rates = Rates(series=series)
    lo, hi = settings.min_size, length - settings.min_size
    for _ in range(series):
        if find_shifts(pool.figures(rng, length, reps).tolist(), settings):
            rates.false_changes += 1
        figures = pool.figures(rng, length, reps)
        start = int(rng.integers(lo, hi + 1))
        figures[start:] *= 1 - step
        found, extra = _slowdown_near(figures, start, settings)
        rates.found += found
        rates.extra += extra
        early, _ = _slowdown_near(figures[: start + TOLERANCE_RUNS], start, settings)
        rates.found_early += early
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=1000, help="A/A series and step series per pool")
    parser.add_argument("--length", type=int, default=30, help="nightly runs per series")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per run (suite.repetitions)")
    parser.add_argument("--step", type=float, default=0.05)
    parser.add_argument("--cpu-rounds", type=int, default=0, help="also measure a CPU pool here (0: GPU pools only)")
    parser.add_argument("--penalty", type=float, default=DetectorSettings.penalty_per_log_n)
    parser.add_argument("--min-size", type=int, default=DetectorSettings.min_size)
    parser.add_argument("--min-shift-pct", type=float, default=DetectorSettings.min_shift_pct)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = DetectorSettings(args.min_size, args.penalty, args.min_shift_pct)
    pools = gpu_pools() + committed_cpu_pools() + (cpu_pools(args.cpu_rounds, args.reps) if args.cpu_rounds else [])
    rng = np.random.default_rng(args.seed)
    print(
        f"detector: PELT, penalty {settings.penalty_per_log_n:g}·ln(n)·σ², min {settings.min_size} runs a side, "
        f"min shift {settings.min_shift_pct:g} %; series of {args.length} runs × {args.reps} repetitions; "
        f"step {args.step:.0%}, found = slowdown within {TOLERANCE_RUNS} runs of its start"
    )
    header = f"{'pool':<28} {'runs':>4} {'run CV':>7} {'A/A false':>10} {'step found':>11} {'3 runs on':>10}"
    print(header)
    totals: dict[str, Rates] = {}
    for pool in pools:
        r = calibrate(pool, rng, args.series, args.length, args.reps, args.step, settings)
        figures = pool.figures(rng, 2000, args.reps)
        cv = figures.std() / figures.mean()
        print(
            f"{pool.name:<28} {len(pool.runs):>4} {cv:>7.2%} {r.false_changes / r.series:>10.2%} "
            f"{r.found / r.series:>11.1%} {r.found_early / r.series:>10.1%}"
        )
        total = totals.setdefault(pool.name.split()[0], Rates())
        for field in ("series", "false_changes", "found", "found_early", "extra"):
            setattr(total, field, getattr(total, field) + getattr(r, field))
    print("real A/A sequences, no resampling (each change reported here is a false one):")
    time_ordered_a_a(settings)
    for family, t in totals.items():
        print(
            f"{family}: false changes in {t.false_changes} of {t.series} A/A series ({t.false_changes / t.series:.2%}, "
            f"goal ≤ 1 %); {args.step:.0%} steps found within {TOLERANCE_RUNS} runs of the start: "
            f"{t.found / t.series:.1%} (goal ≥ 95 %), with only {TOLERANCE_RUNS} runs after it: "
            f"{t.found_early / t.series:.1%}; a change reported elsewhere too: {t.extra / t.series:.1%}"
        )


if __name__ == "__main__":
    main()

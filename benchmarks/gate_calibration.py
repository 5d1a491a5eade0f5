"""Benchmark (not a test): how the gate's verdicts behave on real sample pools, with and without sampling until
sure — through the gate's own code at every look: bench.analysis.compare.process_values reduces each worker process to
one value, the processes pair as the gate pairs them, and bench.analysis.sequential.decide (what every gate check calls)
judges pp and tg against the default thresholds.

Pools (collected once, then resampled; every number below comes from them):
- CPU, 1 and 2 threads: one build under two names (A, B), `--interleave` for many rounds of a few repetitions,
  on this shared 2-core machine (others' jobs land on the same cores: the pools carry their contention bursts).
  A simulated look takes one real ABBA round: two (A, B) process pairs measured side by side, drawn at random.
- GPU: the committed H100 ladder (benchmarks/results/gpu_ladder.json): per model, the good, fixed and
  llama-bench-good processes (the same libllama) form one pool; a simulated process takes its j-th repetition
  from a random real process's j-th (so the slow first pp repetition stays first).

Scenarios: A/A (a true 0% change) and a true `--drop` tg drop (each candidate tg repetition takes 1/(1-drop) as
long). Each simulated gate starts from one round of `--reps` repetitions a side (what `bench run` gives) and,
sampling until sure, adds ABBA rounds for as long as a pp or tg check is inconclusive, up to `--max-rounds`.

    .venv/bin/python benchmarks/gate_calibration.py collect --threads 1 --rounds 60 --reps-per-round 3
    .venv/bin/python benchmarks/gate_calibration.py simulate [--sims 400] [--drop 0.05] [--max-rounds 120] [--pools ...]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.analysis.compare import process_values
from bench.analysis.sequential import Outcome, decide, first_bounded, predicted_halfwidth
from bench.config import GateConfig
from bench.metrics import METRICS as SPECS
from bench.store.db import open_store
from bench.store.queries import results_frame
from bench.synth import SynthSpec, synthesize

RESULTS = Path(__file__).with_name("results")
POOLS = RESULTS / "gate_pools_cpu.json"
GPU_LADDER = RESULTS / "gpu_ladder.json"
METRICS = ("pp_ts", "tg_ts")


@dataclass(frozen=True)
class Pool:
    """Real processes of one build measured against itself: blocks[i] = (pp ns, tg ns) of one process."""

    name: str
    n_prompt: int
    n_gen: int
    # per round: (baseline process, candidate process), measured side by side; or per model for the GPU pool
    rounds: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]
    seconds_per_look: float
    positionwise: bool  # GPU: compose processes repetition by repetition from the pool


def collect(threads: int, rounds: int, reps_per_round: int) -> None:
    """Measure a pool (A/A, interleaved) and append it to benchmarks/results/gate_pools_cpu.json."""
    with tempfile.TemporaryDirectory(prefix="calibration-") as tmp:
        model = Path(tmp) / "tiny-Q4_0.gguf"
        synthesize(SynthSpec("tiny", "Q4_0"), model)
        cfg = Path(tmp) / "aa.yaml"
        suite = {"n_prompt": 512, "n_gen": 128, "repetitions": rounds * reps_per_round, "threads": threads}
        cfg.write_text(
            yaml.safe_dump(
                {
                    "models": [{"name": "tiny-q4", "path": str(model)}],
                    "builds": [{"name": "A", "python": sys.executable}, {"name": "B", "python": sys.executable}],
                    "suite": suite,
                }
            )
        )
        db = f"sqlite:///{tmp}/aa.sqlite"
        bench = str(Path(sys.executable).with_name("bench"))
        run = [bench, "run", "--config", str(cfg), "--db", db, "--interleave", "--rounds", str(rounds), "--quiet"]
        subprocess.run(run, check=True, stdout=subprocess.DEVNULL)
        export_pool(db, f"cpu-t{threads}", reps_per_round)


def export_pool(db: str, name: str, reps_per_round: int) -> None:
    with open_store(db) as store, store.session() as session:
        frame = results_frame(session).set_index("build")
    runs = pd.to_datetime(frame["finished_at"]) - pd.to_datetime(frame["started_at"])
    a, b = frame.loc["A"], frame.loc["B"]
    n_rounds = min(len(a["samples_tg_ns"]), len(b["samples_tg_ns"])) // reps_per_round
    pools = json.loads(POOLS.read_text()) if POOLS.exists() else {}
    pools[name] = {
        "n_prompt": int(a["n_prompt"]),
        "n_gen": int(a["n_gen"]),
        "reps_per_round": reps_per_round,
        "rounds": n_rounds,
        # both results span the whole interleaved run: one AB round is the run's time over its rounds
        "seconds_per_ab_round": float(runs.max().total_seconds()) / n_rounds,
        "A": {"pp": list(a["samples_pp_ns"]), "tg": list(a["samples_tg_ns"])},
        "B": {"pp": list(b["samples_pp_ns"]), "tg": list(b["samples_tg_ns"])},
    }
    POOLS.write_text(json.dumps(pools, indent=0) + "\n")
    print(f"{name}: {n_rounds} rounds of {reps_per_round} a side → {POOLS}")


def cpu_pools() -> list[Pool]:
    out = []
    for name, p in json.loads(POOLS.read_text()).items():
        k = p["reps_per_round"]

        def block(side: str, r: int, p: dict = p, k: int = k) -> tuple[list[int], list[int]]:
            return p[side]["pp"][r * k : (r + 1) * k], p[side]["tg"][r * k : (r + 1) * k]

        rounds = [(block("A", r), block("B", r)) for r in range(p["rounds"])]
        out.append(Pool(name, p["n_prompt"], p["n_gen"], rounds, 2 * p["seconds_per_ab_round"], False))
    return out


def gpu_pools() -> list[Pool]:
    rows = [r for r in json.loads(GPU_LADDER.read_text()) if r["status"] == "ok" and r["samples_tg_ns"]]
    out = []
    for model in sorted({r["model"] for r in rows}):
        procs = [r for r in rows if r["model"] == model]
        seconds = [
            (pd.Timestamp(r["finished_at"]) - pd.Timestamp(r["started_at"])).total_seconds() + (r["load_s"] or 0)
            for r in procs
            if r["load_s"] is not None
        ]
        blocks = [(r["samples_pp_ns"], r["samples_tg_ns"]) for r in procs]
        out.append(
            Pool(
                f"H100 {model}",
                procs[0]["n_prompt"],
                procs[0]["n_gen"],
                [(x, x) for x in blocks],
                4 * float(np.mean(seconds)),
                True,
            )
        )
    return out


class Simulation:
    """One simulated gate: rounds drawn from a pool, judged after each by the gate's own decision code."""

    def __init__(self, pool: Pool, rng: np.random.Generator, drop: float, reps: int, gate: GateConfig) -> None:
        self.pool, self.rng, self.drop, self.reps, self.gate = pool, rng, drop, reps, gate
        self.diffs: dict[str, list[float]] = {m: [] for m in METRICS}

    def _process(self) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
        pool = self.pool
        if pool.positionwise:
            blocks = [b for pair in pool.rounds for b in pair]

            def compose() -> tuple[list[int], list[int]]:
                picks = self.rng.integers(0, len(blocks), size=self.reps)
                return [blocks[i][0][j] for j, i in enumerate(picks)], [blocks[i][1][j] for j, i in enumerate(picks)]

            return compose(), compose()
        return pool.rounds[int(self.rng.integers(0, len(pool.rounds)))]

    def _values(self, pp: list[int], tg: list[int], metric: str) -> float:
        # the gate's own reduction of one process to one value (median of its repetitions)
        row = {"n_prompt": self.pool.n_prompt, "n_gen": self.pool.n_gen, "samples_pp_ns": pp, "samples_tg_ns": tg}
        return process_values(row, metric)[0]

    def add_round(self, processes: int) -> None:
        """`processes` (A, B) process pairs measured side by side; the gate pairs them the same way."""
        for _ in range(processes):
            (a_pp, a_tg), (b_pp, b_tg) = self._process()
            b_tg = [int(ns / (1.0 - self.drop)) for ns in b_tg]  # the candidate's tg, slower by `drop`
            for m in METRICS:
                self.diffs[m].append(math.log(self._values(b_pp, b_tg, m) / self._values(a_pp, a_tg, m)))

    def judge(self) -> dict[str, Outcome]:
        limits = self.gate.limits("m")
        return {
            m: decide(np.array(self.diffs[m]), limits[m], SPECS[m].higher_is_better, self.gate.alpha).outcome
            for m in METRICS
        }


def simulate(pool: Pool, gate: GateConfig, drop: float, sims: int, reps: int, max_rounds: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    fixed, final, rounds_used = [], [], []
    for _ in range(sims):
        sim = Simulation(pool, rng, drop, reps, gate)
        # what one `bench run` gives: one process a side (the CPU pools' rounds hold 3 repetitions: take 2)
        sim.add_round(1 if pool.positionwise else 2)
        verdict = sim.judge()
        fixed.append(verdict)
        used = 0
        while Outcome.INCONCLUSIVE in verdict.values() and used < max_rounds:
            sim.add_round(2)  # an ABBA round: two process pairs
            used += 1
            verdict = sim.judge()
        final.append(verdict)
        rounds_used.append(np.nan if Outcome.INCONCLUSIVE in verdict.values() else used)
    return {"fixed": fixed, "final": final, "rounds": np.array(rounds_used, dtype=float)}


def pair_noise(pool: Pool) -> tuple[float, float]:
    """sd and robust sd (IQR / 1.349) of the tg log ratio of two processes measured side by side."""
    row = {"n_prompt": pool.n_prompt, "n_gen": pool.n_gen}
    values = [
        [process_values({**row, "samples_pp_ns": pp, "samples_tg_ns": tg}, "tg_ts")[0] for pp, tg in pair]
        for pair in pool.rounds
    ]
    if pool.positionwise:  # one pool of processes: every two distinct ones
        flat = [v[0] for v in values]
        diffs = np.array([math.log(b / a) for i, a in enumerate(flat) for b in flat[i + 1 :]])
    else:
        diffs = np.array([math.log(b / a) for a, b in values])
    q75, q25 = np.percentile(diffs, [75, 25])
    return float(np.std(diffs, ddof=1)), float(q75 - q25) / 1.349


def rounds_for(halfwidth: float, sd: float, robust: float, alpha: float) -> int:
    """ABBA rounds (two process pairs each) until the gate's sequence is ±halfwidth wide at this noise."""
    n = first_bounded(alpha)
    while predicted_halfwidth(n, sd, robust, alpha) >= math.log1p(halfwidth) and n < 100_000:
        n += 1
    return math.ceil(n / 2)


def rate(results: list[dict[str, Outcome]], metric: str | None, outcome: Outcome) -> float:
    if metric is None:
        return float(np.mean([any(o is outcome for o in r.values()) for r in results]))
    return float(np.mean([r[metric] is outcome for r in results]))


def report(args: argparse.Namespace) -> None:
    gate = GateConfig()
    thresholds = gate.thresholds.model_dump(exclude_none=True)
    print(
        f"gate thresholds pp {thresholds['pp_ts']:+g}%, tg {thresholds['tg_ts']:+g}%, alpha {gate.alpha}; "
        f"{args.sims} simulated gates per cell; sampling until sure adds ≤ {args.max_rounds} ABBA rounds\n"
    )
    pools = cpu_pools() + gpu_pools() if POOLS.exists() else gpu_pools()
    if args.pools:
        pools = [p for p in pools if any(p.name.startswith(prefix) for prefix in args.pools)]
    for i, pool in enumerate(pools):
        aa = simulate(pool, gate, 0.0, args.sims, args.reps, args.max_rounds, seed=2 * i)
        dr = simulate(pool, gate, args.drop, args.sims, args.reps, args.max_rounds, seed=2 * i + 1)
        conclusive = aa["rounds"][~np.isnan(aa["rounds"])]
        conclusive_drop = dr["rounds"][~np.isnan(dr["rounds"])]
        med = float(np.median(conclusive)) if len(conclusive) else float("nan")
        med_drop = float(np.median(conclusive_drop)) if len(conclusive_drop) else float("nan")
        sd, robust = pair_noise(pool)
        needed = rounds_for(abs(thresholds["tg_ts"]) / 100, sd, robust, gate.alpha)
        print(
            f"{pool.name}: {len(pool.rounds)} pooled {'processes' if pool.positionwise else 'rounds'}; tg noise per "
            f"process pair: sd {sd:.1%}, robust sd {robust:.1%}; ±{abs(thresholds['tg_ts']):g}% needs ~{needed} rounds "
            f"for a true 0% change"
        )
        print(
            f"  A/A false-fail (pp or tg): {rate(aa['final'], None, Outcome.FAIL):.1%} (goal ≤ 1%); "
            f"declared pass (both): {np.mean([all(o is Outcome.PASS for o in r.values()) for r in aa['final']]):.1%} "
            f"(goal ≥ 90%), median {med:g} rounds ≈ {med * pool.seconds_per_look:.0f} s"
        )
        print(
            f"  {args.drop:.0%} tg drop failed: {rate(dr['final'], 'tg_ts', Outcome.FAIL):.1%} sampling until sure "
            f"(goal ≥ 95%), {rate(dr['fixed'], 'tg_ts', Outcome.FAIL):.1%} with the first round alone; "
            f"declared pass: {rate(dr['final'], 'tg_ts', Outcome.PASS):.1%} (goal ≤ 5%); "
            f"median {med_drop:g} rounds ≈ {med_drop * pool.seconds_per_look:.0f} s"
        )
        print(
            f"  first round alone, A/A: {rate(aa['fixed'], None, Outcome.FAIL):.1%} fail, "
            f"{np.mean([all(o is Outcome.PASS for o in r.values()) for r in aa['fixed']]):.1%} pass\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="measure an A/A pool on this machine")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--rounds", type=int, default=60)
    c.add_argument("--reps-per-round", type=int, default=3)
    e = sub.add_parser("export", help="turn an existing A/A interleaved store into a pool")
    e.add_argument("--db", required=True)
    e.add_argument("--name", required=True)
    e.add_argument("--reps-per-round", type=int, default=3)
    s = sub.add_parser("simulate", help="resample the pools through the gate")
    s.add_argument("--sims", type=int, default=400)
    s.add_argument("--drop", type=float, default=0.05)
    s.add_argument("--reps", type=int, default=5, help="repetitions a process for the GPU pools")
    s.add_argument("--max-rounds", type=int, default=120)
    s.add_argument("--pools", nargs="*", help="only pools whose name starts so (cpu-t1, cpu-t2, H100)")
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.threads, args.rounds, args.reps_per_round)
    elif args.command == "export":
        export_pool(args.db, args.name, args.reps_per_round)
    else:
        report(args)


if __name__ == "__main__":
    main()

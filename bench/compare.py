"""Two builds side by side: ratios with bootstrap confidence intervals and Mann-Whitney U tests.

The statistics come from scipy; the tables are pandas. The dashboard and the gate both call here,
so a number means the same thing everywhere it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy.orm import Session

from bench.errors import StoreError
from bench.metrics import METRICS, tokens_per_s
from bench.store.queries import results_frame
from bench.store.standing import standing_frame

BOOTSTRAP_RESAMPLES = 2000
COMPARE_COLUMNS = [
    "model",
    "metric",
    "baseline",
    "candidate",
    "ratio",
    "median_ratio",
    "ci_low",
    "ci_high",
    "p_value",
    "n_baseline",
    "n_candidate",
    "baseline_status",
    "candidate_status",
    "candidate_reason",
]


@dataclass(frozen=True)
class Side:
    """One build's results: from one run (BUILD@RUN), or the latest result per model on one machine."""

    build: str
    result_ids: tuple[int, ...]
    run_ids: tuple[int, ...]
    machine_fingerprint: str
    machine: str

    @property
    def run_id(self) -> int:
        return max(self.run_ids)

    @property
    def label(self) -> str:
        return f"{self.build}@{','.join(map(str, self.run_ids))}"


@dataclass(frozen=True)
class Comparison:
    baseline: Side
    candidate: Side
    cross_machine: bool
    table: pd.DataFrame


def parse_ref(ref: str) -> tuple[str, int | None]:
    """ "BUILD" or "BUILD@RUN"."""
    name, _, run = ref.partition("@")
    if not name:
        raise StoreError(f"{ref!r}: expected BUILD or BUILD@RUN")
    if run and not run.isdigit():
        raise StoreError(f"{ref!r}: the run after '@' must be a number")
    return name, int(run) if run else None


def resolve_side(session: Session, ref: str, *, machine_fingerprint: str | None = None) -> Side:
    """BUILD@RUN: the results of that run. BUILD: the results that stand for the build (bench.store.standing:
    the newest by finish time per model) on one machine: the given one when the build ran there, else the
    machine of its newest result; a ladder measured size by size compares whole."""
    name, run_id = parse_ref(ref)
    keys = standing_frame(session, name, machine_fingerprint=machine_fingerprint, run_id=run_id)
    return Side(
        name,
        tuple(int(r) for r in keys["result_id"]),
        tuple(sorted({int(r) for r in keys["run_id"]})),
        str(keys["machine_fingerprint"].iloc[0]),
        str(keys["machine"].iloc[-1]),
    )


def ratio_ci(base: np.ndarray, cand: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap CI of mean(cand)/mean(base), resampling each side independently."""
    if len(base) < 2 or len(cand) < 2:
        return float("nan"), float("nan")
    res = stats.bootstrap(
        (cand, base),
        lambda c, b, axis: np.mean(c, axis=axis) / np.mean(b, axis=axis),
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        paired=False,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mann_whitney_p(base: np.ndarray, cand: np.ndarray) -> float:
    if len(base) < 2 or len(cand) < 2:
        return float("nan")
    if np.ptp(np.concatenate([base, cand])) == 0:
        return 1.0
    return float(stats.mannwhitneyu(cand, base, alternative="two-sided").pvalue)


def metric_values(row: pd.Series, metric: str) -> np.ndarray:
    samples_col = METRICS[metric].samples_column
    if samples_col is not None:
        n_tokens = row["n_prompt"] if metric == "pp_ts" else row["n_gen"]
        return np.array(tokens_per_s(list(row[samples_col] or []), int(n_tokens)))
    value = row[metric]
    return np.array([] if value is None or pd.isna(value) else [float(value)])


def compare_frames(
    base: pd.DataFrame, cand: pd.DataFrame, metrics: tuple[str, ...] = tuple(METRICS), ci: bool = True
) -> pd.DataFrame:
    """Per model × metric: baseline/candidate means, ratio, CI and p-value."""
    rows = []
    b_by_model, c_by_model = base.set_index("model"), cand.set_index("model")
    for model in list(dict.fromkeys([*base["model"], *cand["model"]])):
        b = b_by_model.loc[model] if model in b_by_model.index else None
        c = c_by_model.loc[model] if model in c_by_model.index else None
        for metric in metrics:
            bv = metric_values(b, metric) if b is not None and b["status"] == "ok" else np.array([])
            cv = metric_values(c, metric) if c is not None and c["status"] == "ok" else np.array([])
            bm, cm = (float(np.mean(bv)) if len(bv) else np.nan), (float(np.mean(cv)) if len(cv) else np.nan)
            low, high = ratio_ci(bv, cv) if ci and len(bv) and len(cv) else (np.nan, np.nan)
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "baseline": bm,
                    "candidate": cm,
                    "ratio": cm / bm if bm and not np.isnan(bm) and not np.isnan(cm) else np.nan,
                    # robust to a single disturbed repetition; the gate judges on this one
                    "median_ratio": float(np.median(cv) / np.median(bv)) if len(bv) and len(cv) else np.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "p_value": mann_whitney_p(bv, cv),
                    "n_baseline": len(bv),
                    "n_candidate": len(cv),
                    "baseline_status": None if b is None else b["status"],
                    "candidate_status": "missing" if c is None else c["status"],
                    "candidate_reason": None if c is None else c["reason"],
                }
            )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def compare(
    session: Session, baseline_ref: str, candidate_ref: str, *, allow_cross_machine: bool = False, ci: bool = True
) -> Comparison:
    candidate = resolve_side(session, candidate_ref)
    baseline = resolve_side(session, baseline_ref, machine_fingerprint=candidate.machine_fingerprint)
    cross = baseline.machine_fingerprint != candidate.machine_fingerprint
    if cross and not allow_cross_machine:
        raise StoreError(
            f"baseline {baseline.label} ran on {baseline.machine} "
            f"({baseline.machine_fingerprint}) but candidate {candidate.label} ran on "
            f"{candidate.machine} ({candidate.machine_fingerprint}); pass --allow-cross-machine to compare anyway"
        )
    frames = results_frame(session, sorted({*baseline.run_ids, *candidate.run_ids}))
    base = frames[frames["result_id"].isin(baseline.result_ids)]
    cand = frames[frames["result_id"].isin(candidate.result_ids)]
    return Comparison(baseline, candidate, cross, compare_frames(base, cand, ci=ci))

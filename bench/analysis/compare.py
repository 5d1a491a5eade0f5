"""Two builds side by side: ratios with bootstrap confidence intervals, Mann-Whitney U tests, and the paired
log ratios the gate's sequential test reads.

The statistics come from scipy; the tables are pandas. The dashboard and the gate both call here,
so a number means the same thing everywhere it is shown. Samples of several runs of one (build, model)
are pooled only when those runs measured with equal suite settings; two sides measured with different
settings are not compared unless the caller asks for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy.orm import Session

from bench.errors import ConfigError, StoreError
from bench.metrics import METRICS, Status, tokens_per_s
from bench.store.annotations import engines_of
from bench.store.queries import results_frame, runs_frame
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
    "n_pairs",
    "log_ratios",
    "n_baseline",
    "n_candidate",
    "baseline_status",
    "candidate_status",
    "candidate_reason",
]
# the suite settings that change what a number means: results measured under different ones are not comparable
SETTINGS_COMPARED = ("n_prompt", "n_gen", "threads", "n_batch", "n_ubatch", "flash_attn", "n_gpu_layers", "n_ctx")


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
    # settings that differ between the sides ("threads 1 → 2"), compared anyway on request
    mixed_settings: tuple[str, ...] = ()
    # every run whose samples were pooled into each side (its own runs plus equal-settings repeats)
    pooled_runs: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())
    # the engine(s) behind each side: one GGUF through llama-bench, llama-cpp-python and KoboldCPP shows
    # each wrapper's overhead, and such a comparison is labelled as one
    engines: tuple[str, str] = ("", "")
    # `bench metal-check --record`'s standing prediction per model of each side's build (bench.store.predictions),
    # read when the sides are measured results; and whether the candidate was measured on a Mac
    predicted: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    measured_on_metal: bool = False

    @property
    def cross_engine(self) -> bool:
        return self.engines[0] != self.engines[1]


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


def metric_values(row: Any, metric: str) -> np.ndarray:
    spec = METRICS[metric]
    samples = list(row.get(spec.samples_column) or []) if spec.samples_column is not None else []
    if samples and spec.per_process:
        return np.array(samples, dtype=float) / 1e9
    if spec.samples_column is not None and not spec.per_process:
        n_tokens = row["n_prompt"] if metric == "pp_ts" else row["n_gen"]
        return np.array(tokens_per_s(samples, int(n_tokens)))
    value = row[metric]  # a single figure: older results and imports have no load samples
    return np.array([] if value is None or pd.isna(value) else [float(value)])


def process_values(row: Any, metric: str) -> list[float]:
    """One value per worker process of a result: the median of that process's repetitions. An interleaved run
    stores all its rounds' repetitions in one result, split across rounds as the runner planned them (the first
    `repetitions % rounds` rounds take one more). A process is the unit of independence: a contention burst or
    a slow first repetition moves all of one process's repetitions together."""
    rounds = int(row.get("rounds") or 1) if hasattr(row, "get") else 1
    return _per_process(metric_values(row, metric), metric, rounds)


def _per_process(values: np.ndarray, metric: str, rounds: int) -> list[float]:
    values = values[values > 0]
    if METRICS[metric].per_process:
        return [float(v) for v in values]
    chunks = [c for c in np.array_split(values, min(max(rounds, 1), max(len(values), 1))) if len(c)]
    return [float(np.median(c)) for c in chunks]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A side's rows as plain dicts, oldest result first: walking dicts costs microseconds where iterrows
    costs a Series per row."""
    return frame.sort_values("result_id", kind="stable").to_dict("records")


def paired_log_ratios(base: pd.DataFrame, cand: pd.DataFrame, metric: str) -> np.ndarray:
    """log(candidate / baseline), one per pair of worker processes. Processes of one run pair by position (an
    interleaved run's round r of A with its round r of B, measured side by side, so drift cancels); processes
    left over pair across runs in order. Pairing independent processes arbitrarily is still valid: each
    difference estimates the same change."""
    b, c = ([(int(r["run_id"]), process_values(r, metric)) for r in _records(frame)] for frame in (base, cand))
    return _paired(b, c)


def _paired(base: list[tuple[int, list[float]]], cand: list[tuple[int, list[float]]]) -> np.ndarray:
    """The pairing rule of paired_log_ratios, over each side's (run id, process values) in result order."""
    by_run: list[dict[int, list[float]]] = []
    for side in (base, cand):
        runs: dict[int, list[float]] = {}
        for run_id, values in side:
            runs.setdefault(run_id, []).extend(values)
        by_run.append(runs)
    diffs: list[float] = []
    left: tuple[list[float], list[float]] = ([], [])
    for run in sorted({*by_run[0], *by_run[1]}):
        b, c = by_run[0].get(run, []), by_run[1].get(run, [])
        k = min(len(b), len(c))
        diffs += [math.log(y / x) for x, y in zip(b[:k], c[:k], strict=True)]
        left[0].extend(b[k:])
        left[1].extend(c[k:])
    diffs += [math.log(y / x) for x, y in zip(left[0], left[1], strict=False)]
    return np.array(diffs)


def _pooled_values(rows: pd.DataFrame, metric: str) -> np.ndarray:
    ok = [r for r in rows.to_dict("records") if r["status"] == Status.OK]
    return np.concatenate([metric_values(r, metric) for r in ok]) if ok else np.array([])


def compare_frames(
    base: pd.DataFrame, cand: pd.DataFrame, metrics: tuple[str, ...] = tuple(METRICS), ci: bool = True
) -> pd.DataFrame:
    """Per model × metric: baseline/candidate means, ratio, CI, p-value and the paired log ratios.

    A side may hold several results of one model (pooled runs): the newest one's status speaks for the side,
    and the samples of all its ok results are pooled. Each side's rows are read once, as plain dicts, and each
    result's values once per metric (pooled and paired both use them)."""
    sides: list[dict[Any, list[dict[str, Any]]]] = []
    for frame in (base, cand):
        by_model: dict[Any, list[dict[str, Any]]] = {}
        for r in _records(frame):
            by_model.setdefault(r["model"], []).append(r)
        sides.append(by_model)
    rows = []
    for model in list(dict.fromkeys([*base["model"], *cand["model"]])):
        b_rows, c_rows = sides[0].get(model, []), sides[1].get(model, [])
        b = b_rows[-1] if b_rows else None
        c = c_rows[-1] if c_rows else None
        b_ok = [r for r in b_rows if r["status"] == Status.OK] if b is not None and b["status"] == Status.OK else []
        c_ok = [r for r in c_rows if r["status"] == Status.OK] if c is not None and c["status"] == Status.OK else []
        for metric in metrics:
            b_each = [metric_values(r, metric) for r in b_ok]
            c_each = [metric_values(r, metric) for r in c_ok]
            bv = np.concatenate(b_each) if b_each else np.array([])
            cv = np.concatenate(c_each) if c_each else np.array([])
            bm, cm = (float(np.mean(bv)) if len(bv) else np.nan), (float(np.mean(cv)) if len(cv) else np.nan)
            low, high = ratio_ci(bv, cv) if ci and len(bv) and len(cv) else (np.nan, np.nan)
            diffs = (
                _paired(_processes(b_ok, b_each, metric), _processes(c_ok, c_each, metric))
                if len(bv) and len(cv)
                else np.array([])
            )
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "baseline": bm,
                    "candidate": cm,
                    "ratio": cm / bm if bm and not np.isnan(bm) and not np.isnan(cm) else np.nan,
                    "median_ratio": float(np.median(cv) / np.median(bv)) if len(bv) and len(cv) else np.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "p_value": mann_whitney_p(bv, cv),
                    "n_pairs": len(diffs),
                    "log_ratios": [float(d) for d in diffs],
                    "n_baseline": len(bv),
                    "n_candidate": len(cv),
                    "baseline_status": None if b is None else b["status"],
                    "candidate_status": "missing" if c is None else c["status"],
                    "candidate_reason": None if c is None else c["reason"],
                }
            )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


def _processes(rows: list[dict[str, Any]], values: list[np.ndarray], metric: str) -> list[tuple[int, list[float]]]:
    """(run id, process values) per result, from values metric_values already read."""
    return [
        (int(r["run_id"]), _per_process(v, metric, int(r.get("rounds") or 1)))
        for r, v in zip(rows, values, strict=True)
    ]


def suite_settings(row: Any, run_settings: dict[str, Any] | None) -> dict[str, Any]:
    """The settings a result was measured with: its own n_prompt/n_gen, the rest from its run's suite.
    A source that does not record a setting (an import) leaves it out rather than guessing."""
    suite = (run_settings or {}).get("suite") or {}
    out = {k: suite[k] for k in SETTINGS_COMPARED if k in suite}
    for k in ("n_prompt", "n_gen"):
        if row.get(k) is not None and not pd.isna(row[k]):
            out[k] = int(row[k])
    return out


def settings_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k} {a[k]} → {b[k]}" for k in SETTINGS_COMPARED if k in a and k in b and a[k] != b[k]]


def _pool(
    session: Session, side: Side, ref: str, extra_runs: Iterable[int], settings_of: dict[int, dict[str, Any]]
) -> pd.DataFrame:
    """The side's own results plus every other result of the same build identity, model and machine measured
    with equal settings: in any run for a plain BUILD, in `extra_runs` (rounds added by the gate) for BUILD@RUN."""
    own = results_frame(session, list(side.run_ids))
    own = own[own["result_id"].isin(side.result_ids)]
    _, named_run = parse_ref(ref)
    extra = set(extra_runs)
    if named_run is not None and not extra:
        return own
    everything = results_frame(session, None, with_samples=False)
    keys = {
        (r["model"], r["build_sha"]): suite_settings(r, settings_of.get(int(r["run_id"]))) for _, r in own.iterrows()
    }
    same = everything[
        (everything["build"] == side.build)
        & (everything["machine_fingerprint"] == side.machine_fingerprint)
        & ~everything["result_id"].isin(side.result_ids)
        & (everything["run_id"].isin(extra) if named_run is not None else True)
    ]
    wanted = [
        int(r["result_id"])
        for _, r in same.iterrows()
        if (r["model"], r["build_sha"]) in keys
        and suite_settings(r, settings_of.get(int(r["run_id"]))) == keys[(r["model"], r["build_sha"])]
    ]
    if not wanted:
        return own
    more = results_frame(session, sorted({int(x) for x in same[same["result_id"].isin(wanted)]["run_id"]}))
    return pd.concat([own, more[more["result_id"].isin(wanted)]], ignore_index=True)


def compare(
    session: Session,
    baseline_ref: str,
    candidate_ref: str,
    *,
    allow_cross_machine: bool = False,
    allow_mixed_settings: bool = False,
    ci: bool = True,
    extra_runs: Iterable[int] = (),
) -> Comparison:
    candidate = resolve_side(session, candidate_ref)
    baseline = resolve_side(session, baseline_ref, machine_fingerprint=candidate.machine_fingerprint)
    if set(baseline.result_ids) == set(candidate.result_ids):
        raise ConfigError(
            f"--baseline {baseline_ref} and --candidate {candidate_ref} are the same results ({candidate.label}): "
            "a build compared with itself shows nothing; name two builds, or two runs (BUILD@RUN) of one"
        )
    cross = baseline.machine_fingerprint != candidate.machine_fingerprint
    if cross and not allow_cross_machine:
        raise StoreError(
            f"baseline {baseline.label} ran on {baseline.machine} "
            f"({baseline.machine_fingerprint}) but candidate {candidate.label} ran on "
            f"{candidate.machine} ({candidate.machine_fingerprint}); pass --allow-cross-machine to compare anyway"
        )
    runs = runs_frame(session)
    settings_of = {int(r): s for r, s in zip(runs["run_id"], runs["settings"], strict=True)}
    extra = tuple(extra_runs)
    predicted, on_metal = _predictions(session, baseline, candidate)
    return build_comparison(
        baseline,
        candidate,
        _pool(session, baseline, baseline_ref, extra, settings_of),
        _pool(session, candidate, candidate_ref, extra, settings_of),
        settings_of,
        (engines_of(session, baseline.result_ids), engines_of(session, candidate.result_ids)),
        allow_mixed_settings=allow_mixed_settings,
        ci=ci,
        predicted=predicted,
        measured_on_metal=on_metal,
    )


def build_comparison(
    baseline: Side,
    candidate: Side,
    base: pd.DataFrame,
    cand: pd.DataFrame,
    settings_of: dict[int, dict[str, Any]],
    engines: tuple[str, str],
    *,
    allow_mixed_settings: bool = False,
    ci: bool = True,
    predicted: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
    measured_on_metal: bool = False,
) -> Comparison:
    """The one way to a Comparison (`bench compare`, the gate, bisect and the dashboard's pages): each result's
    processes per sample from its run's settings, the suite settings of both sides checked (a pair measured
    with different settings is refused unless allowed), the engines named (a cross-engine pair is labelled)."""
    base, cand = _with_rounds(base, settings_of), _with_rounds(cand, settings_of)
    mixed = _mixed_settings(base, cand, baseline, candidate, settings_of)
    if mixed and not allow_mixed_settings:
        raise ConfigError(mixed_settings_refusal(baseline, candidate, mixed))
    return Comparison(
        baseline,
        candidate,
        baseline.machine_fingerprint != candidate.machine_fingerprint,
        compare_frames(base, cand, ci=ci),
        tuple(mixed),
        (tuple(sorted({int(r) for r in base["run_id"]})), tuple(sorted({int(r) for r in cand["run_id"]}))),
        engines,
        predicted,
        measured_on_metal,
    )


def mixed_settings_refusal(baseline: Side, candidate: Side, mixed: Iterable[str]) -> str:
    """Why a pair measured with different suite settings is not compared (the CLI) nor judged (the dashboard)."""
    return (
        f"baseline {baseline.label} and candidate {candidate.label} were measured with different suite "
        f"settings ({'; '.join(mixed)}): their numbers do not compare; pass --allow-mixed-settings to compare"
    )


def _predictions(
    session: Session, baseline: Side, candidate: Side
) -> tuple[tuple[dict[str, Any], dict[str, Any]], bool]:
    """Both builds' stored predictions, unless the sides are those predictions themselves."""
    from sqlalchemy import select

    from bench.store.models import Machine
    from bench.store.predictions import PREDICTION_FINGERPRINT, predicted_statuses

    if candidate.machine_fingerprint == PREDICTION_FINGERPRINT:
        return ({}, {}), False
    details = session.scalar(select(Machine.details).where(Machine.fingerprint == candidate.machine_fingerprint))
    on_metal = (details or {}).get("gpu_kind") == "metal"
    return (predicted_statuses(session, baseline.build), predicted_statuses(session, candidate.build)), on_metal


def _with_rounds(frame: pd.DataFrame, settings_of: dict[int, dict[str, Any]]) -> pd.DataFrame:
    """How many worker processes (interleaved rounds) each result's samples came from."""

    def rounds(run_id: int) -> int:
        settings = settings_of.get(run_id) or {}
        return int(settings.get("rounds") or 1) if settings.get("interleave") else 1

    return frame.assign(rounds=[rounds(int(r)) for r in frame["run_id"]])


def _mixed_settings(
    base: pd.DataFrame, cand: pd.DataFrame, baseline: Side, candidate: Side, settings_of: dict[int, dict[str, Any]]
) -> list[str]:
    """Per model measured on both sides: the settings that differ between the results standing for each side."""
    chosen_b = base[base["result_id"].isin(baseline.result_ids)].set_index("model")
    chosen_c = cand[cand["result_id"].isin(candidate.result_ids)]
    found: dict[str, list[str]] = {}
    for _, c in chosen_c.iterrows():
        if c["model"] not in chosen_b.index:
            continue
        b = chosen_b.loc[c["model"]]
        b = b.iloc[-1] if isinstance(b, pd.DataFrame) else b
        diff = settings_differences(
            suite_settings(b, settings_of.get(int(b["run_id"]))), suite_settings(c, settings_of.get(int(c["run_id"])))
        )
        for d in diff:
            found.setdefault(d, []).append(str(c["model"]))
    return [f"{d} ({', '.join(models)})" for d, models in found.items()]

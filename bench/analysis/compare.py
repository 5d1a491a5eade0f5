"""Two builds side by side: ratios with bootstrap confidence intervals, Mann-Whitney U tests, and the paired
log ratios the gate's sequential test reads.

The statistics are numpy and the standard library (scipy.stats costs 0.9 s to import, more than a whole
`bench compare` may take; tests/test_compare_stats.py holds these functions to scipy's); the tables are
pandas. The dashboard and the gate both call here,
so a number means the same thing everywhere it is shown. Samples of several runs of one (build, model)
are pooled only when those runs measured with equal suite settings; two sides measured with different
settings are not compared unless the caller asks for it.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from bench.errors import ConfigError, StoreError
from bench.heap import frozen
from bench.metrics import METRICS, Status
from bench.store.annotations import engines_of
from bench.store.queries import results_frame, run_settings
from bench.store.standing import standing_frame, standing_on_machine

BOOTSTRAP_RESAMPLES = 2000
# above this many values drawn (resamples × both sides' sizes) the bootstrap distribution of a mean is normal to
# well within its own Monte Carlo error, and the delta-method interval stands in for it: pooling 1,000 runs
# would otherwise draw 2000 × 10,000 values per model and metric
BOOTSTRAP_MAX_DRAWS = 1_000_000
# Mann-Whitney: exact null distribution while a side is this small and nothing ties (scipy's own choice)
MWU_EXACT_MAX = 8
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


def resolve_side(
    session: Session, ref: str, *, machine_fingerprint: str | None = None, results: pd.DataFrame | None = None
) -> Side:
    """BUILD@RUN: the results of that run. BUILD: the results that stand for the build (bench.store.standing:
    the newest by finish time per model) on one machine: the given one when the build ran there, else the
    machine of its newest result; a ladder measured size by size compares whole. `results`: a plain BUILD's
    results already read (every run's), the rule applied to them rather than to a read of its own."""
    name, run_id = parse_ref(ref)
    if results is not None and run_id is None:
        keys = standing_on_machine(results, name, machine_fingerprint)
    else:
        keys = standing_frame(session, name, machine_fingerprint=machine_fingerprint, run_id=run_id)
    return Side(
        name,
        tuple(int(r) for r in keys["result_id"]),
        tuple(sorted({int(r) for r in keys["run_id"]})),
        str(keys["machine_fingerprint"].iloc[0]),
        str(keys["machine"].iloc[-1]),
    )


def ratio_ci(base: np.ndarray, cand: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% CI of mean(cand)/mean(base): the percentile bootstrap, resampling each side independently (what
    scipy.stats.bootstrap(method="percentile", paired=False) computes); for large samples the delta-method
    normal interval of the log ratio, which that bootstrap converges to."""
    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    if len(base) < 2 or len(cand) < 2:
        return float("nan"), float("nan")
    if BOOTSTRAP_RESAMPLES * (len(base) + len(cand)) > BOOTSTRAP_MAX_DRAWS:
        return _delta_ci(base, cand)
    rng = np.random.default_rng(seed)
    means = [side[rng.integers(0, len(side), (BOOTSTRAP_RESAMPLES, len(side)))].mean(axis=1) for side in (cand, base)]
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = np.percentile(means[0] / means[1], [2.5, 97.5])
    return float(low), float(high)


def _delta_ci(base: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """95% interval of mean(cand)/mean(base) from the normal approximation of log(mean c) − log(mean b), each
    mean's variance the plug-in one a bootstrap resample has (ddof 0)."""
    mb, mc = float(np.mean(base)), float(np.mean(cand))
    if mb <= 0 or mc <= 0:
        return float("nan"), float("nan")
    se = math.sqrt(np.var(cand) / (len(cand) * mc**2) + np.var(base) / (len(base) * mb**2))
    z = NormalDist().inv_cdf(0.975)
    return mc / mb * math.exp(-z * se), mc / mb * math.exp(z * se)


def mann_whitney_p(base: np.ndarray, cand: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value, as scipy.stats.mannwhitneyu(cand, base) gives it (method "auto"): the
    exact null distribution when a side has at most 8 values and none tie, else the normal approximation with
    the tie and continuity corrections."""
    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    if len(base) < 2 or len(cand) < 2:
        return float("nan")
    both = np.concatenate([cand, base])
    if np.ptp(both) == 0:
        return 1.0
    n1, n2 = len(cand), len(base)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # average ranks: a tied group of size t starting after c values takes c + (t + 1) / 2
    starts = np.cumsum(counts) - counts
    ranks = (starts + (counts + 1) / 2.0)[inverse]
    u1 = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2.0
    u = max(u1, n1 * n2 - u1)
    ties = bool((counts > 1).any())
    if min(n1, n2) <= MWU_EXACT_MAX and not (n1 > MWU_EXACT_MAX and n2 > MWU_EXACT_MAX) and not ties:
        p = 2.0 * _u_sf(round(u), n1, n2)
    else:
        tie_term = float(np.sum(counts.astype(float) ** 3 - counts))
        n = n1 + n2
        s = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))))
        p = 2.0 * (1.0 - NormalDist().cdf((u - n1 * n2 / 2.0 - 0.5) / s)) if s > 0 else 1.0
    return float(min(max(p, 0.0), 1.0))


def _u_sf(u: int, n1: int, n2: int) -> float:
    """P(U ≥ u) under the null: U's counts are the coefficients of the Gaussian binomial [n1 + n2, n1]_q,
    built as the product of (1 − q^(n2 + i)) / (1 − q^i), i = 1…n1, in exact integers."""
    small, large = min(n1, n2), max(n1, n2)
    degree = small * large
    coef = [1] + [0] * degree
    for i in range(1, small + 1):
        step = large + i
        for k in range(degree, step - 1, -1):  # × (1 − q^step)
            coef[k] -= coef[k - step]
        for k in range(i, degree + 1):  # ÷ (1 − q^i)
            coef[k] += coef[k - i]
    total = math.comb(n1 + n2, n1)
    return sum(coef[max(u, 0) :]) / total


def metric_values(row: Any, metric: str) -> np.ndarray:
    """One result's values of a metric: t/s per repetition, seconds per fresh-process load, or its single
    figure (older results and imports have no load samples)."""
    return _SideRows(_one_row(row)).values([0], metric)[0]


def process_values(row: Any, metric: str) -> list[float]:
    """One value per worker process of a result: the median of that process's repetitions. An interleaved run
    stores all its rounds' repetitions in one result, split across rounds as the runner planned them (the first
    `repetitions % rounds` rounds take one more). A process is the unit of independence: a contention burst or
    a slow first repetition moves all of one process's repetitions together."""
    return [float(v) for v in _SideRows(_one_row(row)).processes([0], metric)[1]]


def _one_row(row: Any) -> pd.DataFrame:
    found = dict(row)
    return pd.DataFrame([{"result_id": 0, "run_id": 0, **{k: v for k, v in found.items() if k in ROW_COLUMNS}}])


def paired_log_ratios(base: pd.DataFrame, cand: pd.DataFrame, metric: str) -> np.ndarray:
    """log(candidate / baseline), one per pair of worker processes. Processes of one run pair by position (an
    interleaved run's round r of A with its round r of B, measured side by side, so drift cancels); processes
    left over pair across runs in order. Pairing independent processes arbitrarily is still valid: each
    difference estimates the same change."""
    b, c = (_SideRows(frame) for frame in (base, cand))
    return np.array(_paired(b.processes(range(len(b)), metric), c.processes(range(len(c)), metric)))


def _paired(base: tuple[np.ndarray, np.ndarray], cand: tuple[np.ndarray, np.ndarray]) -> list[float]:
    """The pairing rule of paired_log_ratios, over each side's (run ids, process values) in result order:
    the k-th process of a run on one side with the k-th of that run on the other, then what is left of each
    side in run order, pairwise."""
    keyed = []
    for runs, values in (base, cand):
        order = np.argsort(runs, kind="stable")
        r, v = runs[order], values[order]
        starts = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1]))) if len(r) else np.array([], dtype=int)
        position = np.arange(len(r)) - np.repeat(starts, np.diff(np.append(starts, len(r))))
        keyed.append((r, position, v))

    def matched(mine: tuple[np.ndarray, ...], other: tuple[np.ndarray, ...]) -> np.ndarray:
        """Which of `mine` have a process at the same position of the same run on the other side."""
        run_ids, counts = np.unique(other[0], return_counts=True)
        at = np.searchsorted(run_ids, mine[0]).clip(max=max(len(run_ids) - 1, 0))
        present = (run_ids[at] == mine[0]) if len(run_ids) else np.zeros(len(mine[0]), dtype=bool)
        return present & (mine[1] < np.where(present, counts[at] if len(counts) else 0, 0))

    in_b, in_c = matched(keyed[0], keyed[1]), matched(keyed[1], keyed[0])
    left_b, left_c = keyed[0][2][~in_b], keyed[1][2][~in_c]
    k = min(len(left_b), len(left_c))
    ratios = np.concatenate([keyed[1][2][in_c] / keyed[0][2][in_b], left_c[:k] / left_b[:k]])
    return [math.log(x) for x in ratios.tolist()]


# what compare_frames and the settings check read of a result row (`rounds` is added by build_comparison): a
# caller holding wide rows hands over these columns only
ROW_COLUMNS = (
    *("result_id", "run_id", "model", "status", "reason", "n_prompt", "n_gen", "rounds"),
    *METRICS,
    *(m.samples_column for m in METRICS.values() if m.samples_column),
)


class _SideRows:
    """One side's results as plain columns, oldest result first, and per metric the values compare_frames
    reads from them: a pool of 1,000 runs is 25,000 results a side, too many to walk one dict at a time."""

    def __init__(self, frame: pd.DataFrame) -> None:
        frame = frame.sort_values("result_id", kind="stable")
        samples = {m.samples_column for m in METRICS.values() if m.samples_column}
        # what a row() is: the names and words (the figures are arrays below)
        self.columns = {c: frame[c].tolist() for c in ("model", "status", "reason") if c in frame.columns}
        self.run_ids = frame["run_id"].to_numpy(dtype=np.int64)
        rounds = pd.to_numeric(frame["rounds"], errors="coerce") if "rounds" in frame.columns else None
        self.rounds = (
            np.ones(len(frame), dtype=np.int64)
            if rounds is None
            else rounds.fillna(1).replace(0, 1).to_numpy(dtype=np.int64)
        )
        # per samples column, every row's samples end to end (where each row's start, how many): a model's
        # values are then one gather, not a list per result walked in Python
        self.series: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for column in sorted(samples & set(frame.columns)):
            lists = [x if x is not None else () for x in frame[column].tolist()]
            counts = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
            flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=float, count=int(counts.sum()))
            self.series[column] = (flat, np.cumsum(counts) - counts, counts)
        # the single figures, NaN where missing
        self.figures = {
            m: pd.to_numeric(frame[m], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            for m in METRICS
            if m in frame.columns
        }
        # each metric's processes of every row (processes() picks a model's out of them)
        self._every: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.tokens = {
            c: pd.to_numeric(frame[c], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
            for c in ("n_prompt", "n_gen")
            if c in frame.columns
        }

    def __len__(self) -> int:
        return len(self.run_ids)

    def by_model(self) -> dict[Any, list[int]]:
        out: dict[Any, list[int]] = {}
        for i, model in enumerate(self.columns["model"]):
            out.setdefault(model, []).append(i)
        return out

    def row(self, i: int) -> dict[str, Any]:
        return {c: v[i] for c, v in self.columns.items()}

    def values(self, rows: Iterable[int], metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(each value, the position in `rows` of its result): metric_values of each row, concatenated."""
        rows = np.fromiter(rows, dtype=np.int64)
        spec = METRICS[metric]
        found = self.series.get(spec.samples_column or "")
        counts = found[2][rows] if found is not None else np.zeros(len(rows), dtype=np.int64)
        if spec.samples_column is not None and not spec.per_process:
            if found is None:
                return np.array([], dtype=float), np.array([], dtype=np.int64)
            ns, owner = self._gather(found, rows)
            tokens = self.tokens["n_prompt" if metric == "pp_ts" else "n_gen"][rows]
            keep = ns > 0
            owner = owner[keep]
            return tokens[owner] * 1e9 / ns[keep], owner
        single = self.figures[metric][rows] if metric in self.figures else np.full(len(rows), np.nan)
        if found is not None and counts.any():
            # a row with load samples gives them in seconds, a row without gives its single figure
            single = np.where(counts > 0, np.nan, single)
            ns, owner = self._gather(found, rows)
            values = np.concatenate([ns / 1e9, single[~np.isnan(single)]])
            owner = np.concatenate([owner, np.flatnonzero(~np.isnan(single))])
            order = np.argsort(owner, kind="stable")
            return values[order], owner[order]
        has = np.flatnonzero(~np.isnan(single))
        return single[has], has

    @staticmethod
    def _gather(found: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Those rows' samples of one column end to end, and the position in `rows` each came from."""
        flat, starts, counts = found
        mine = counts[rows]
        return flat[_spans(starts[rows], mine)], np.repeat(np.arange(len(rows)), mine)

    def processes(self, rows: Iterable[int], metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(run id, value) of each worker process of `rows` in result order (process_values of each row), from
        the values `values` reads: a result of one process is the median of its values, computed for all results
        of one sample count at once; an interleaved result is split into its rounds.

        A process's value depends on its own result alone: rows in increasing order (a model's, as compare_frames
        asks) are picked out of every row's processes, computed once per metric, not once per model."""
        rows = np.fromiter(rows, dtype=np.int64)
        if len(rows) > 1 and not (np.diff(rows) > 0).all():
            return self._processes(rows, metric)[:2]
        if metric not in self._every:
            self._every[metric] = self._processes(np.arange(len(self)), metric)
        runs, values, owner = self._every[metric]
        # `owner` is in row order: each row's processes are one run of it
        lo, hi = np.searchsorted(owner, rows, "left"), np.searchsorted(owner, rows, "right")
        if len(rows) == 1:
            return runs[lo[0] : hi[0]], values[lo[0] : hi[0]]
        at = _spans(lo, hi - lo)
        return runs[at], values[at]

    def _processes(self, rows: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """processes() of those rows, with the row each process came from."""
        values, owner = self.values(rows.tolist(), metric)
        keep = values > 0
        values, owner = values[keep], owner[keep]
        if METRICS[metric].per_process:
            return self.run_ids[rows][owner], values, rows[owner]
        counts = np.bincount(owner, minlength=len(rows))
        offsets = np.cumsum(counts) - counts
        rounds = self.rounds[rows]
        one = _by_row(values, counts, _medians, rounds <= 1)
        if not (rounds > 1).any():
            has = counts > 0
            return self.run_ids[rows][has], one[has], rows[has]
        runs, out, of = [], [], []
        for k, row in enumerate(rows.tolist()):
            if rounds[k] <= 1:
                if counts[k]:
                    runs.append(self.run_ids[row])
                    out.append(one[k])
                    of.append(row)
                continue
            mine = values[offsets[k] : offsets[k] + counts[k]]
            for chunk in np.array_split(mine, min(int(rounds[k]), max(len(mine), 1))):
                if len(chunk):
                    runs.append(self.run_ids[row])
                    out.append(float(np.median(chunk)))
                    of.append(row)
        return np.array(runs, dtype=np.int64), np.array(out, dtype=float), np.array(of, dtype=np.int64)


def _by_row(
    values: np.ndarray,
    counts: np.ndarray,
    reduce: Callable[[np.ndarray], np.ndarray],
    among: np.ndarray | None = None,
) -> np.ndarray:
    """Each row's values (`values` holds them row after row, `counts` of each) reduced to one figure, NaN for a
    row without any or outside `among`: `reduce` takes all rows of one count at once, as a matrix, a row each."""
    offsets = np.cumsum(counts) - counts
    wanted = counts > 0 if among is None else (counts > 0) & among
    out = np.full(len(counts), np.nan)
    for k in np.unique(counts[wanted]):
        chosen = np.flatnonzero((counts == k) & wanted)
        out[chosen] = reduce(values[offsets[chosen][:, None] + np.arange(k)])
    return out


def _medians(rows: np.ndarray) -> np.ndarray:
    return np.median(rows, axis=1)


def per_result(
    frame: pd.DataFrame, metrics: Iterable[str], reduce: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    """Per metric, each row's values of it (metric_values: t/s per repetition, seconds per fresh-process load, or
    its single figure) reduced to one figure by `reduce` (a matrix of rows of equal length → one value a row), in
    the frame's row order, NaN where it has none. `frame` holds ROW_COLUMNS."""
    side = _SideRows(frame)
    placed = np.argsort(frame["result_id"].to_numpy(), kind="stable")  # _SideRows orders rows by result id
    out = {}
    for metric in metrics:
        values, owner = side.values(range(len(side)), metric)
        keep = values > 0
        out[metric] = np.empty(len(frame))
        out[metric][placed] = _by_row(values[keep], np.bincount(owner[keep], minlength=len(side)), reduce)
    return out


def _spans(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The positions starts[i] … starts[i] + counts[i] − 1 of every i, end to end."""
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))


def compare_frames(
    base: pd.DataFrame, cand: pd.DataFrame, metrics: tuple[str, ...] = tuple(METRICS), ci: bool = True
) -> pd.DataFrame:
    """Per model × metric: baseline/candidate means, ratio, CI, p-value and the paired log ratios.

    A side may hold several results of one model (pooled runs): the newest one's status speaks for the side,
    and the samples of all its ok results are pooled. Each side is read once into arrays; a model's values are
    gathered once per metric, and its processes picked out of the side's, computed once per metric."""
    sides = [_SideRows(base), _SideRows(cand)]
    groups = [side.by_model() for side in sides]
    rows = []
    for model in list(dict.fromkeys([*base["model"], *cand["model"]])):
        newest: list[dict[str, Any] | None] = []
        ok_rows: list[list[int]] = []
        for side, by_model in zip(sides, groups, strict=True):
            mine = by_model.get(model, [])
            last = side.row(mine[-1]) if mine else None
            newest.append(last)
            status = side.columns["status"]
            ok_rows.append([i for i in mine if status[i] == Status.OK] if last and last["status"] == Status.OK else [])
        b, c = newest
        for metric in metrics:
            bv, cv = (side.values(ok, metric)[0] for side, ok in zip(sides, ok_rows, strict=True))
            bm, cm = (float(np.mean(bv)) if len(bv) else np.nan), (float(np.mean(cv)) if len(cv) else np.nan)
            low, high = ratio_ci(bv, cv) if ci and len(bv) and len(cv) else (np.nan, np.nan)
            diffs = (
                _paired(*(s.processes(ok, metric) for s, ok in zip(sides, ok_rows, strict=True)))
                if len(bv) and len(cv)
                else []
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
                    "log_ratios": diffs,
                    "n_baseline": len(bv),
                    "n_candidate": len(cv),
                    "baseline_status": None if b is None else b["status"],
                    "candidate_status": "missing" if c is None else c["status"],
                    "candidate_reason": None if c is None else c["reason"],
                }
            )
    return pd.DataFrame(rows, columns=COMPARE_COLUMNS)


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


# what a comparison reads of each result (with its samples and the names results_frame joins): the standing rule's
# times, the settings that must agree (token counts), what a row shows (status, reason) and every metric's figure
SIDE_FIELDS = ("status", "reason", "started_at", "finished_at", "n_prompt", "n_gen", *METRICS)


def _pool(
    session: Session,
    side: Side,
    ref: str,
    extra_runs: Iterable[int],
    settings_of: dict[int, dict[str, Any]],
    results: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The side's own results plus every other result of the same build identity, model and machine measured
    with equal settings: in any run for a plain BUILD (`results`: its results, already read), in `extra_runs`
    (rounds added by the gate) for BUILD@RUN."""
    _, named_run = parse_ref(ref)
    extra = set(extra_runs)
    if named_run is not None and not extra:
        own = results_frame(session, list(side.run_ids), builds=[side.build], only=SIDE_FIELDS)
        return own[own["result_id"].isin(side.result_ids)]
    if named_run is None and results is not None:
        found_all = results
    else:  # a plain BUILD pools from any run: one read of the build's results (no list of a thousand run ids)
        runs = None if named_run is None else sorted({*side.run_ids, *extra})
        found_all = results_frame(session, runs, builds=[side.build], only=SIDE_FIELDS)
    own = found_all[found_all["result_id"].isin(side.result_ids)]

    # once per run and token counts, not per result: a pool of 1,000 runs holds 25,000 results
    @functools.cache
    def settings(run_id: Any, n_prompt: Any, n_gen: Any) -> dict[str, Any]:
        return suite_settings({"n_prompt": n_prompt, "n_gen": n_gen}, settings_of.get(int(run_id)))

    keys = {
        (m, sha): settings(r, p, g)
        for m, sha, r, p, g in zip(
            *(own[c].tolist() for c in ("model", "build_sha", "run_id", "n_prompt", "n_gen")), strict=True
        )
    }
    mine = set(side.result_ids)
    # the candidates to pool: the build's results on the side's machine (read above with the rest)
    on = found_all[found_all["machine_fingerprint"] == side.machine_fingerprint]
    columns = ("result_id", "run_id", "model", "build_sha", "n_prompt", "n_gen")
    wanted = {
        int(i)
        for i, r, m, sha, p, g in zip(*(on[c].tolist() for c in columns), strict=True)
        if i not in mine and (m, sha) in keys and settings(r, p, g) == keys[(m, sha)]
    }
    if not wanted:
        return own
    return found_all[found_all["result_id"].isin(mine | wanted)].reset_index(drop=True)


@frozen()  # thousands of rows pooled beside the imported libraries' objects (bench.heap)
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
    # a plain BUILD's results are read once, with their samples: the standing rule and the pool both read them
    read: dict[str, pd.DataFrame] = {}

    def results_of(ref: str) -> pd.DataFrame | None:
        name, run_id = parse_ref(ref)
        if run_id is not None:
            return None
        if name not in read:
            read[name] = results_frame(session, None, builds=[name], only=SIDE_FIELDS)
        return read[name]

    candidate = resolve_side(session, candidate_ref, results=results_of(candidate_ref))
    baseline = resolve_side(
        session, baseline_ref, machine_fingerprint=candidate.machine_fingerprint, results=results_of(baseline_ref)
    )
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
    settings_of = run_settings(session)
    extra = tuple(extra_runs)
    predicted, on_metal = _predictions(session, baseline, candidate)
    return build_comparison(
        baseline,
        candidate,
        _pool(session, baseline, baseline_ref, extra, settings_of, results_of(baseline_ref)),
        _pool(session, candidate, candidate_ref, extra, settings_of, results_of(candidate_ref)),
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
        (_runs_of(base), _runs_of(cand)),
        engines,
        predicted,
        measured_on_metal,
    )


def _runs_of(frame: pd.DataFrame) -> tuple[int, ...]:
    return tuple(np.unique(frame["run_id"].to_numpy(dtype=np.int64)).tolist())


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

    runs = frame["run_id"].to_numpy(dtype=np.int64)
    of_run = {r: rounds(r) for r in np.unique(runs).tolist()}  # once per run, not per result
    return frame.assign(rounds=[of_run[r] for r in runs.tolist()])


def _mixed_settings(
    base: pd.DataFrame, cand: pd.DataFrame, baseline: Side, candidate: Side, settings_of: dict[int, dict[str, Any]]
) -> list[str]:
    """Per model measured on both sides: the settings that differ between the results standing for each side."""

    def chosen(frame: pd.DataFrame, ids: tuple[int, ...]) -> list[dict[str, Any]]:
        # what suite_settings reads, as plain records (a pandas lookup per model cost 8 ms a comparison)
        return frame.loc[frame["result_id"].isin(ids), ["model", "run_id", "n_prompt", "n_gen"]].to_dict("records")

    # a model's newest baseline result when it has several (the frame's order: run, then result)
    of_model = {b["model"]: b for b in chosen(base, baseline.result_ids)}
    found: dict[str, list[str]] = {}
    for c in chosen(cand, candidate.result_ids):
        b = of_model.get(c["model"])
        if b is None:
            continue
        diff = settings_differences(
            suite_settings(b, settings_of.get(int(b["run_id"]))), suite_settings(c, settings_of.get(int(c["run_id"])))
        )
        for d in diff:
            found.setdefault(d, []).append(str(c["model"]))
    return [f"{d} ({', '.join(models)})" for d, models in found.items()]

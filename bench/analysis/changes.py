"""Change points over nightly history: where a build line's series shifted, and where its load status changed.

A *build line* is one build name measured on one machine with one model, over successive runs (ordered by
when each run finished). A nightly job that rebuilds `master` and measures it under the name `master` makes
one line per model; each night's point may be a different build (a new identity, a new commit), which is
the point: a shift lands between two builds of the line, and the commits between them are the suspects.
Two builds measured in the same run (a gate's baseline and candidate) are two lines, never mixed.

A run's point in its line is the mean of the result's middle values (t/s per repetition, seconds per
fresh-process load), the fastest and slowest fifth left out (at least one each, from three values on), not the
stored mean of them all: one slow repetition, a shared machine's hiccup, moves a mean of five by a fifth of its
slowness and the middle three not at all. On this 2-core VM, means of 5 repetitions made a 4.7 % step of an
A/A line out of three slow repetitions early in one build and two late in its twin (PELT found it up to a
penalty of 5.15 · ln n, above the 5.0 used); the middle means of the same results show it only below 1.5.
The median holds that history flatter still, but on the resampled CPU pools of the calibration it reports more
false changes (1.55 % of A/A series against 0.75 %: the median of five processes from a two-mode pool jumps
between the modes), and on ten 14-night A/A histories of tests/test_changes.py's fixture it let two false pp or
tg changes through where the middle mean let one (the mean two).

Shifts are found by PELT (`ruptures`) over the log of each run's point, scaled by a robust estimate of
the run-to-run noise (from successive differences, which a step hardly moves), so one penalty
serves a GPU's 0.3 % noise and a busy CPU's 10 %. A shift is kept when both sides hold `min_size` runs and
the medians differ by at least `min_shift_pct`. Only `ok` results carry a series; every change of load
status between successive runs (ok → crashed, crashed → ok) is a change point of its own.
`benchmarks/changes_calibration.py` measures the false-change and detection rates of these settings.

On a machine whose speed drifts with what else runs on it, a line's own figures move with the machine.
`reference=BUILD` divides each run's figure by that of a fixed build measured in the same run (Chromium's
perf bots run a reference build beside tip of tree for the same reason); such change points are stored
apart from those of the lines' own figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import ruptures
from sqlalchemy.orm import Session

from bench.analysis.compare import per_result
from bench.errors import StoreError
from bench.metrics import METRICS, Status
from bench.store.changes import series_frame, store_changes


@dataclass(frozen=True)
class DetectorSettings:
    """Tuned by benchmarks/changes_calibration.py: ≤ 1 false change per 100 A/A series, ≥ 95 % of 5 % steps."""

    min_size: int = 3  # runs on each side of a shift: one odd night is noise, not a change
    penalty_per_log_n: float = 5.0  # PELT's penalty, × ln(n), in units of the noise variance
    min_shift_pct: float = 1.0  # smaller, statistically clear shifts are not worth a report


@dataclass(frozen=True)
class Shift:
    """A step in one series: `index` is the first point after it."""

    index: int
    before: float  # median of the segment before
    after: float  # median of the segment after
    shift_pct: float


def noise_scale(log_values: np.ndarray) -> float:
    """σ of one point, from the mean square successive difference (von Neumann): a step moves one
    difference only, and unlike a median it does not collapse on two-mode noise (a warm-up repetition
    that is slow in some runs and not in others)."""
    diffs = np.diff(log_values)
    if len(diffs) == 0:
        return 0.0
    return float(np.sqrt(np.mean(diffs**2) / 2))


def find_shifts(values: Sequence[float], settings: DetectorSettings = DetectorSettings()) -> list[Shift]:
    """Steps in a series of positive figures (one per run, in run order)."""
    x = np.log(np.asarray(values, dtype=float))
    n = len(x)
    if n < 2 * settings.min_size or not np.all(np.isfinite(x)):
        return []
    sigma = noise_scale(x)
    if sigma == 0.0:  # exact repeats (a byte count): any difference beyond the floor is a step
        sigma = settings.min_shift_pct / 100 / 10
    # PELT with the l2 cost, in ruptures' C implementation (a linear kernel is the l2 cost): the same
    # segmentation as ruptures.Pelt(model="l2", jump=1), some thousand times faster
    algo = ruptures.KernelCPD(kernel="linear", min_size=settings.min_size).fit(x / sigma)
    bounds = [0, *(int(end) for end in algo.predict(pen=settings.penalty_per_log_n * math.log(n)))]
    shifts = []
    for i in range(1, len(bounds) - 1):
        before = float(np.exp(np.median(x[bounds[i - 1] : bounds[i]])))
        after = float(np.exp(np.median(x[bounds[i] : bounds[i + 1]])))
        shift_pct = (after / before - 1) * 100
        if abs(shift_pct) >= settings.min_shift_pct:
            shifts.append(Shift(bounds[i], before, after, shift_pct))
    return shifts


def find_status_changes(statuses: Sequence[str]) -> list[int]:
    """Indexes where the load status differs from the run before (ok → failed and back)."""
    return [i for i in range(1, len(statuses)) if statuses[i] != statuses[i - 1]]


# one point of a build line (run_points), of what `bench.store.changes.series_frame` returns per result
POINT_COLUMNS = (
    "machine_fingerprint",
    "machine",
    "build",
    "model",
    "run_id",
    "run_at",
    "build_id",
    "build_sha",
    "commit",
    "status",
    *METRICS,
)
LINE_KEY = ["machine_fingerprint", "build", "model"]


@dataclass(frozen=True)
class DetectedChange:
    """A change in one build line between two successive runs: a shift of a metric, or of load status."""

    machine_fingerprint: str
    build: str
    model: str
    metric: str  # a METRICS name, or "status"
    kind: str  # "shift" | "status"
    run_before: int
    run_after: int
    build_id_before: int
    build_id_after: int
    commit_before: str | None
    commit_after: str | None
    value_before: float | None
    value_after: float | None
    shift_pct: float | None
    status_before: str
    status_after: str
    run_at: datetime | None  # when the first run after the change finished
    reference: str | None = None  # values are ratios to this build, measured in the same runs


def run_point(repetitions: np.ndarray) -> np.ndarray:
    """Rows of a run's values (a row per run, every row as long) → each run's point: the mean of its middle
    values, the lowest and highest fifth of them left out, at least one each from three values on."""
    n = repetitions.shape[1]
    cut = max(1, n // 5) if n >= 3 else 0
    return np.sort(repetitions, axis=1)[:, cut : n - cut].mean(axis=1)


def run_points(frame: pd.DataFrame) -> pd.DataFrame:
    """`bench.store.changes.series_frame`'s rows in POINT_COLUMNS, each metric's figure the run's point
    (run_point over the result's values, bench.analysis.compare.per_result)."""
    points = frame[list(POINT_COLUMNS)].copy()
    for metric, figures in per_result(frame, METRICS, run_point).items():
        points[metric] = figures
    return points


def detect(
    points: pd.DataFrame, settings: DetectorSettings = DetectorSettings(), *, reference: str | None = None
) -> list[DetectedChange]:
    """Every change point of every build line in `points` (rows in POINT_COLUMNS, any order).

    With a `reference` build, a line's figure in a run is its ratio to the reference's figure in the same
    run (as Chromium's perf bots run a pinned reference build beside tip of tree): what the machine did
    that night cancels, what the build did stays. Runs where the reference did not load carry no figure."""
    found: list[DetectedChange] = []
    ordered = points.sort_values(["run_at", "run_id"], kind="stable").reset_index(drop=True)
    columns = {c: ordered[c].tolist() for c in POINT_COLUMNS}  # a change's two rows are read from these

    def row(i: int) -> dict[str, Any]:
        return {c: values[i] for c, values in columns.items()}

    ok = ordered["status"].to_numpy() == Status.OK
    figures = _ratios(ordered, reference)
    lines = ordered.groupby(LINE_KEY, sort=True).indices  # each line's rows, in run order
    for (_, build, _), at in sorted(lines.items()):
        for i in find_status_changes([columns["status"][k] for k in at]):
            found.append(_change(row(at[i - 1]), row(at[i]), "status", None, reference))
        if build == reference:
            continue
        for metric, values in figures.items():
            usable = at[ok[at] & (values[at] > 0)]  # NaN (no figure, no reference figure) is not > 0
            for s in find_shifts(values[usable].tolist(), settings):
                found.append(_change(row(usable[s.index - 1]), row(usable[s.index]), metric, s, reference))
    return found


def _ratios(points: pd.DataFrame, reference: str | None) -> dict[str, np.ndarray]:
    """Per metric, each row's figure, or its ratio to the `reference` build's figure in the same run (on the
    same machine, of the same model), NaN where either is missing or the reference did not load."""

    def positive(values: pd.Series) -> np.ndarray:
        out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan, copy=True)
        out[~(out > 0)] = np.nan
        return out

    figures = {m: positive(points[m]) for m in METRICS}
    if reference is None:
        return figures
    key = ["machine_fingerprint", "model", "run_id"]
    ref = points.loc[(points["build"] == reference) & (points["status"] == Status.OK), [*key, *METRICS]]
    ref = ref.drop_duplicates(key, keep="last")
    # one lookup of the reference's run for every row, all metrics at once
    base = points[key].merge(ref, on=key, how="left")
    return {m: figures[m] / positive(base[m]) for m in METRICS}


def refresh(
    session: Session,
    *,
    machine: str | None = None,
    model: str | None = None,
    reference: str | None = None,
    settings: DetectorSettings = DetectorSettings(),
) -> int:
    """Detect the change points of every build line (of a machine, of a model) and store them; returns how
    many are new. Safe to repeat: the table then already holds exactly what is found."""
    points = run_points(series_frame(session, machine=machine, model=model))
    if reference is not None and reference not in set(points["build"]):
        raise StoreError(f"--reference: no results of build {reference!r} in the store")
    lines = [tuple(key) for key in points[LINE_KEY].drop_duplicates().itertuples(index=False)]
    return store_changes(session, lines, detect(points, settings, reference=reference), reference)


def _change(
    before: dict[str, Any], after: dict[str, Any], metric: str | None, shift: Shift | None, reference: str | None
) -> DetectedChange:
    """A status change (metric None) or a shift of `metric` between two successive points of a line."""
    return DetectedChange(
        machine_fingerprint=after["machine_fingerprint"],
        build=after["build"],
        model=after["model"],
        metric=metric or "status",
        kind="status" if shift is None else "shift",
        run_before=int(before["run_id"]),
        run_after=int(after["run_id"]),
        build_id_before=int(before["build_id"]),
        build_id_after=int(after["build_id"]),
        commit_before=before["commit"],
        commit_after=after["commit"],
        value_before=None if shift is None else shift.before,
        value_after=None if shift is None else shift.after,
        shift_pct=None if shift is None else shift.shift_pct,
        status_before=before["status"],
        status_after=after["status"],
        run_at=after["run_at"],
        reference=reference,
    )

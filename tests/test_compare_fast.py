"""The optimised bench.analysis.compare gives exactly the table and verdict of the straightforward row-by-row code it
replaced, on real stored runs: an interleaved run with load repetitions plus a pooled repeat (real workers),
recorded llama-bench output, and a dashboard_scale store read through the site's own frames."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.analysis import compare as cmp
from bench.analysis.compare import Comparison, compare_frames, mann_whitney_p, ratio_ci
from bench.analysis.gate import evaluate, to_json
from bench.config import DashboardConfig, GateConfig
from bench.metrics import METRICS
from bench.report.site import data as site_data
from bench.report.site.output import SiteOutput
from bench.report.site.pages import Builder
from bench.store.db import open_store
from bench.store.queries import run_settings
from tests.conftest import PYTHON, REPO, bench_cli, llama_bench_pair

sys.path.insert(0, str(REPO / "benchmarks"))
from dashboard_scale import fill

DATA = Path(__file__).with_name("data")


# --- the reference: the row-by-row implementation as it was before it was vectorised ---------------------


def ref_metric_values(row: Any, metric: str) -> np.ndarray:
    spec = METRICS[metric]
    samples = list(row.get(spec.samples_column) or []) if spec.samples_column is not None else []
    if samples and spec.per_process:
        return np.array(samples, dtype=float) / 1e9
    if spec.samples_column is not None and not spec.per_process:
        n_tokens = row["n_prompt"] if metric == "pp_ts" else row["n_gen"]
        return np.array([int(n_tokens) * 1e9 / ns for ns in samples if ns > 0])
    value = row[metric]
    return np.array([] if value is None or pd.isna(value) else [float(value)])


def ref_process_values(row: Any, metric: str) -> list[float]:
    values = ref_metric_values(row, metric)
    values = values[values > 0]
    if METRICS[metric].per_process:
        return [float(v) for v in values]
    rounds = int(row.get("rounds") or 1) if hasattr(row, "get") else 1
    chunks = [c for c in np.array_split(values, min(max(rounds, 1), max(len(values), 1))) if len(c)]
    return [float(np.median(c)) for c in chunks]


def ref_paired_log_ratios(base: pd.DataFrame, cand: pd.DataFrame, metric: str) -> np.ndarray:
    by_run: list[dict[int, list[float]]] = []
    for frame in (base, cand):
        runs: dict[int, list[float]] = {}
        for _, row in frame.sort_values("result_id").iterrows():
            runs.setdefault(int(row["run_id"]), []).extend(ref_process_values(row, metric))
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


def ref_pooled_values(rows: pd.DataFrame, metric: str) -> np.ndarray:
    ok = rows[rows["status"] == "ok"]
    return np.concatenate([ref_metric_values(r, metric) for _, r in ok.iterrows()]) if len(ok) else np.array([])


def ref_compare_frames(base: pd.DataFrame, cand: pd.DataFrame, ci: bool = True) -> pd.DataFrame:
    rows = []
    for model in list(dict.fromkeys([*base["model"], *cand["model"]])):
        b_rows = base[base["model"] == model].sort_values("result_id")
        c_rows = cand[cand["model"] == model].sort_values("result_id")
        b = b_rows.iloc[-1] if len(b_rows) else None
        c = c_rows.iloc[-1] if len(c_rows) else None
        b_ok = b_rows[b_rows["status"] == "ok"] if b is not None and b["status"] == "ok" else b_rows.iloc[0:0]
        c_ok = c_rows[c_rows["status"] == "ok"] if c is not None and c["status"] == "ok" else c_rows.iloc[0:0]
        for metric in METRICS:
            bv, cv = ref_pooled_values(b_ok, metric), ref_pooled_values(c_ok, metric)
            bm, cm = (float(np.mean(bv)) if len(bv) else np.nan), (float(np.mean(cv)) if len(cv) else np.nan)
            low, high = ratio_ci(bv, cv) if ci and len(bv) and len(cv) else (np.nan, np.nan)
            diffs = ref_paired_log_ratios(b_ok, c_ok, metric) if len(bv) and len(cv) else np.array([])
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
    return pd.DataFrame(rows, columns=cmp.COMPARE_COLUMNS)


# --- helpers -----------------------------------------------------------------------------------------------


def assert_same_table(fast: pd.DataFrame, ref: pd.DataFrame) -> None:
    """Bit for bit: every float equal (NaN where NaN), every list of log ratios equal element by element."""
    assert list(fast.columns) == list(ref.columns) and len(fast) == len(ref) and len(ref)
    for (_, f), (_, r) in zip(fast.iterrows(), ref.iterrows(), strict=True):
        for col in ref.columns:
            a, b = f[col], r[col]
            if isinstance(b, float) and math.isnan(b):
                assert isinstance(a, float) and math.isnan(a), (col, a, b)
            else:
                assert a == b and type(a) is type(b), (r["model"], r["metric"], col, a, b)


def pooled_frames(db: str, baseline_ref: str, candidate_ref: str, extra: tuple[int, ...] = ()) -> Any:
    """The frames bench.analysis.compare.compare hands to compare_frames (the same steps, read here)."""
    with open_store(db) as store, store.session() as session:
        candidate = cmp.resolve_side(session, candidate_ref)
        baseline = cmp.resolve_side(session, baseline_ref, machine_fingerprint=candidate.machine_fingerprint)
        settings_of = run_settings(session)
        base = cmp._with_rounds(cmp._pool(session, baseline, baseline_ref, extra, settings_of), settings_of)
        cand = cmp._with_rounds(cmp._pool(session, candidate, candidate_ref, extra, settings_of), settings_of)
        return baseline, candidate, base, cand


def check_pair(db: str, baseline_ref: str, candidate_ref: str, extra: tuple[int, ...] = ()) -> pd.DataFrame:
    baseline, candidate, base, cand = pooled_frames(db, baseline_ref, candidate_ref, extra)
    for ci in (True, False):
        fast, ref = compare_frames(base, cand, ci=ci), ref_compare_frames(base, cand, ci=ci)
        assert_same_table(fast, ref)
        for metric in METRICS:
            fast_pairs, ref_pairs = cmp.paired_log_ratios(base, cand, metric), ref_paired_log_ratios(base, cand, metric)
            assert fast_pairs.tolist() == ref_pairs.tolist()
        for _, row in cand.iterrows():
            for metric in METRICS:
                assert cmp.process_values(row, metric) == ref_process_values(row, metric)
        verdicts = [
            to_json(evaluate(Comparison(baseline, candidate, False, table), GateConfig())) for table in (fast, ref)
        ]
        assert verdicts[0] == verdicts[1]
    return ref


# --- tests -------------------------------------------------------------------------------------------------


def test_interleaved_rounds_load_samples_and_a_pooled_repeat_give_the_reference_table(
    models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'pooled.sqlite'}"
    builds = [{"name": "A", "python": PYTHON}, {"name": "B", "python": PYTHON}]
    models = [{"name": "q4", "path": str(models_dir / "tiny-Q4_0.gguf")}]
    cfg = write_config(models, builds=builds, repetitions=5, n_prompt=32, n_gen=8, load_repetitions=2)
    proc = bench_cli("run", "--config", str(cfg), "--db", db, "--interleave", "--rounds", "2", "--quiet", "--wait")
    assert proc.returncode == 0, proc.stderr
    # a second, plain run of B only: its processes are left over and pair across runs
    cfg_b = write_config(models, builds=builds[1:], name="b.yaml", repetitions=3, n_prompt=32, n_gen=8)
    proc = bench_cli("run", "--config", str(cfg_b), "--db", db, "--quiet", "--wait")
    assert proc.returncode == 0, proc.stderr
    ref = check_pair(db, "A", "B")
    tg = ref[ref["metric"] == "tg_ts"].iloc[0]
    # the rounds pair within the interleaved run and B's repeat pools in: more B values than A's
    assert tg["n_pairs"] == 2 and tg["n_candidate"] > tg["n_baseline"]
    load = ref[ref["metric"] == "load_s"].iloc[0]
    assert load["n_baseline"] == 4 and load["n_pairs"] >= 4  # two loads in each of two rounds
    check_pair(db, "B", "A")
    check_pair(db, "A@1", "B@1")


@pytest.mark.parametrize("reps", [3, None])
def test_recorded_llama_bench_runs_give_the_reference_table(tmp_path: Path, reps: int | None) -> None:
    db = llama_bench_pair(tmp_path, reps)
    ref = check_pair(f"sqlite:///{db}", "two-threads", "one-thread")
    assert (ref["n_candidate"] > 0).any()


def test_every_site_comparison_of_a_scale_store_gives_the_reference_table(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'scale.sqlite'}"
    fill(db, 4, 3, 6)
    with open_store(db) as store, store.session() as session:
        data = site_data.load(session, DashboardConfig(), GateConfig())
        builder = Builder(session, data, SiteOutput(tmp_path / "site"))
        pairs = [*site_data.baseline_pairs(data, builder.standing), *site_data.nightly_pairs(data)]
        builder.load_samples(
            {i for p in pairs for i in (*p.baseline_ids, *p.candidate_ids)},
            {r for p in pairs for r in (*p.baseline_runs, *p.candidate_runs)},
        )
        builder.out.abort()
    assert len(pairs) >= 5
    statuses = set()
    for pair in pairs:
        base = builder.narrow.loc[list(pair.baseline_ids)].reset_index(drop=True)
        cand = builder.narrow.loc[list(pair.candidate_ids)].reset_index(drop=True)
        for ci in (True, False):
            assert_same_table(compare_frames(base, cand, ci=ci), ref_compare_frames(base, cand, ci=ci))
        # the site's own verdict (its cache and its choice of CIs included) is the reference's
        verdict = builder.verdict(pair)
        ref = ref_compare_frames(base, cand, ci=pair.kind == "baseline")
        assert_same_table(verdict.comparison.table, ref)
        assert to_json(verdict) == to_json(evaluate(dataclasses.replace(verdict.comparison, table=ref)))
        statuses |= set(ref["candidate_status"])
    assert statuses >= {"ok"}

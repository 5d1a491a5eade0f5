"""Data: the store → plain frames and the policy of what the site shows (which pairs, which baseline).

Everything here is a pure function of the stored results and the `dashboard` config section. Which results
stand for a build is bench.store.standing's one rule; statistics come from bench.analysis.compare and
bench.analysis.gate.
"""

from __future__ import annotations

import fnmatch
import importlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from bench.analysis.sequential import t_quantile
from bench.config import DashboardConfig, GateConfig
from bench.metrics import METRICS, Status
from bench.report.render import missing
from bench.report.site.roofline import machine_bandwidth_gbs
from bench.store.queries import builds_frame, machines_frame, results_frame, runs_frame
from bench.store.standing import standing

CHANGE_COLUMNS = [
    "machine_fingerprint",
    "model",
    "metric",
    "build_before",
    "build_after",
    "run_before",
    "run_after",
    "shift_pct",
    "kind",
    "detected_at",
]


@dataclass(frozen=True)
class Pair:
    """A comparison the site shows: a candidate against its baseline, or a nightly against the previous one."""

    kind: str  # "baseline" | "nightly"
    machine_fingerprint: str
    baseline: str  # build name
    candidate: str
    baseline_ids: tuple[int, ...]  # the results of each side
    candidate_ids: tuple[int, ...]
    baseline_runs: tuple[int, ...]
    candidate_runs: tuple[int, ...]

    @property
    def baseline_label(self) -> str:
        return f"{self.baseline}@{','.join(map(str, self.baseline_runs))}"

    @property
    def candidate_label(self) -> str:
        return f"{self.candidate}@{','.join(map(str, self.candidate_runs))}"


@dataclass
class SiteData:
    results: pd.DataFrame  # every result (no samples), with x, run_started, ci95 and roofline columns
    runs: pd.DataFrame
    builds: pd.DataFrame
    machines: pd.DataFrame
    changes: pd.DataFrame
    settings: DashboardConfig
    gate: GateConfig
    run_x: dict[int, int] = field(default_factory=dict)  # run id → its position on its machine's axis
    build_of: dict[int, tuple[str, str]] = field(default_factory=dict)  # result id → (build name, identity)
    identity_of: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    complete: bool = True  # results hold whole rows; else only what keys read, and `details` the rest of some
    bandwidth: dict[str, float | None] = field(default_factory=dict)  # machine fingerprint → its bandwidth, GB/s
    details: pd.DataFrame | None = None
    runs_read: set[int] = field(default_factory=set)  # the runs of `details`

    @property
    def rows_read(self) -> int:
        """Results read whole: every one, or those `read_details` read."""
        return len(self.results) if self.complete else 0 if self.details is None else len(self.details)


def change_points(session: Session) -> pd.DataFrame:
    """The change points the detector stored (bench.store.changes), or none where that reader is absent."""
    try:
        module = importlib.import_module("bench.store.changes")
    except ModuleNotFoundError:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    frame = module.change_points_frame(session)
    return frame if len(frame) else pd.DataFrame(columns=CHANGE_COLUMNS)


def ci95(mean_std_n: pd.DataFrame, metric: str) -> pd.Series:
    """Half width of the 95% CI of a result's mean, from its stored std and repetitions (t distribution; its
    quantile once per repetition count, without scipy, whose import alone costs a fifth of a dashboard update)."""
    std = pd.to_numeric(mean_std_n[f"{metric}_std"], errors="coerce").astype(float).to_numpy()
    n = pd.to_numeric(mean_std_n["repetitions"], errors="coerce").astype(float).to_numpy()
    df = np.maximum(np.nan_to_num(n, nan=1.0) - 1, 1)
    quantile = {d: t_quantile(0.975, d) for d in np.unique(df).tolist()}
    t = np.array([quantile[d] for d in df.tolist()], dtype=float)
    half = t * std / np.sqrt(np.maximum(n, 1))
    return pd.Series(np.where(n > 1, half, np.nan), index=mean_std_n.index)


# what a page's key, the standing rule and the choice of pairs read of every result (bench.store.queries adds the
# joined names: build, its identity, model, machine): the rest of a row is read for the pages being written
KEY_FIELDS = ("status", "repetitions", "started_at", "finished_at")


def load(session: Session, settings: DashboardConfig, gate: GateConfig, *, keys_only: bool = False) -> SiteData:
    """Every result of the store: whole rows, or with `keys_only` the columns that say which pages changed (a site
    brought up to date then reads the rest of the rows of the pages it writes: `read_details`)."""
    if keys_only:
        results = results_frame(session, only=KEY_FIELDS, with_samples=False)
    else:
        results = results_frame(session, with_samples=False, with_memory=False)
    runs = runs_frame(session)
    machines = machines_frame(session)
    builds = builds_frame(session)
    changes = change_points(session)
    # each machine's axis: its runs in the order they started (a nightly is a position, not a date)
    runs = runs.sort_values(["started_at", "run_id"], kind="stable")
    run_x = {
        int(r): int(x) for r, x in zip(runs["run_id"], runs.groupby("machine_fingerprint").cumcount(), strict=True)
    }
    by_fp = machines.set_index("fingerprint")
    bandwidth = {
        str(fp): machine_bandwidth_gbs(settings.bandwidth_gbs, str(m["hostname"]), str(fp), m["gpu"], m["cpu"])
        for fp, m in by_fp.iterrows()
    }
    data = SiteData(
        results, runs, builds, machines, changes, settings, gate, run_x, complete=not keys_only, bandwidth=bandwidth
    )
    data.results = _placed(data, results)
    if not keys_only:
        data.results = _figures(data, data.results)
    return data


def _placed(data: SiteData, results: pd.DataFrame) -> pd.DataFrame:
    """Where each result sits: its run's start, its position on its machine's axis, its machine's bandwidth."""
    runs = data.runs
    run_started = dict(zip(runs["run_id"].tolist(), pd.to_datetime(runs["started_at"]).tolist(), strict=True))
    results["run_started"] = results["run_id"].map(run_started)
    results["x"] = results["run_id"].map(data.run_x).astype(int)
    results["bandwidth_gbs"] = results["machine_fingerprint"].map(data.bandwidth).astype(float)
    return results


def _figures(data: SiteData, results: pd.DataFrame) -> pd.DataFrame:
    """What the pages show besides the stored figures: each mean's 95% CI, the roofline share, the commit."""
    for metric in ("pp_ts", "tg_ts"):
        results[f"{metric}_ci95"] = ci95(results, metric)
    weights = pd.to_numeric(results["model_bytes"], errors="coerce").astype(float)
    tg = pd.to_numeric(results["tg_ts"], errors="coerce").astype(float)
    results["tg_roofline_pct"] = tg * weights / (results["bandwidth_gbs"] * 1e9) * 100
    identity = _identities(data.builds)
    results["commit"] = [
        identity.get((b, s), {}).get("commit") or str(s)[:12]
        for b, s in zip(results["build"].tolist(), results["build_sha"].tolist(), strict=True)
    ]
    return results


# above this many runs a read names no runs and takes the whole store: one read, and no IN list of thousands of run
# ids (SQLite refuses a statement of more than 32,766 of them)
RUNS_NAMED_AT_MOST = 200


def runs_to_read(run_ids: set[int] | list[int]) -> list[int] | None:
    """Those runs, in order, for a read; None (the whole store) when they are many."""
    return sorted(run_ids) if len(run_ids) <= RUNS_NAMED_AT_MOST else None


def read_details(session: Session, data: SiteData, run_ids: set[int]) -> None:
    """The whole rows of those runs' results, for the pages being written (nothing to read when `data` holds
    whole rows already; every run's when they are many, as after an upgrade of perfgate rewrites every page)."""
    if data.complete:
        return
    named = runs_to_read(run_ids)
    found = results_frame(session, named, with_samples=False, with_memory=False)
    data.details = _figures(data, _placed(data, found))
    data.runs_read = set(run_ids) if named is not None else {int(r) for r in data.runs["run_id"]}


def _whole(data: SiteData, run_ids: set[int]) -> pd.DataFrame:
    """The frame of whole rows that holds those runs' results (`read_details` must have named them)."""
    source = data.results if data.complete else data.details
    unread = set() if data.complete else run_ids - data.runs_read
    if source is None or unread:
        raise KeyError(f"runs {sorted(unread or run_ids)[:5]}: their results' rows were not read")
    return source


def details(data: SiteData, run_ids: set[int] | list[int]) -> pd.DataFrame:
    """Whole rows of the results of those runs, ordered by run and result."""
    source = _whole(data, set(run_ids))
    return source[source["run_id"].isin(run_ids)]


def whole_rows(data: SiteData, rows: pd.DataFrame) -> pd.DataFrame:
    """These results' whole rows: themselves when `data` holds whole rows, else those `read_details` read."""
    source = _whole(data, set(rows["run_id"].tolist()))
    return rows if data.complete else source[source["result_id"].isin(rows["result_id"])]


# --- identities -------------------------------------------------------------------------------------------

_ARCHS = re.compile(r"ARCHS\s*=\s*([0-9][0-9a-z,; ]*)", re.IGNORECASE)


def identity_fields(build: dict[str, Any]) -> dict[str, str]:
    """What a build is, as the comparison pages show it: commit, flags, backends, embedded Metal library,
    CUDA architectures, engine and versions (from builds.details and llama.cpp's system_info)."""
    found = build.get("details")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    info = "" if missing(build.get("system_info")) else str(build.get("system_info") or "")
    backends = [part.split(":", 1)[0].strip() for part in info.split("|") if ":" in part]
    archs = _ARCHS.search(info)
    embed = re.search(r"EMBED_LIBRARY\s*=\s*(\d)", info)
    flags = details.get("cmake_args") or details.get("flags") or details.get("make_vars")
    commit = details.get("commit") or details.get("git_sha") or details.get("ref")

    def text(value: Any, width: int | None = None) -> str:
        return "–" if missing(value) or value == "" else str(value)[:width]

    return {
        "engine": text(details.get("engine") or "llama-cpp-python"),
        "llama.cpp version": text(build.get("llama_cpp_version")),
        "commit": text(commit),
        "flags": " ".join(map(str, flags)) if isinstance(flags, list) else text(flags),
        "backends": ", ".join(dict.fromkeys(b for b in backends if b)) or "–",
        "embedded Metal library": ("yes" if embed.group(1) == "1" else "no") if embed else "–",
        "CUDA architectures": archs.group(1).strip(" |;") if archs else "–",
        "library sha256": text(build.get("lib_sha256"), 16),
        "ggml sha256": text(build.get("ggml_sha256"), 16),
        "identity": text(build.get("identity_sha")),
    }


def _identities(builds: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    if not len(builds):
        return {}
    return {(str(b["name"]), str(b["identity_sha"])): b["details"] or {} for b in builds.to_dict(orient="records")}


def side_identity(data: SiteData, ids: tuple[int, ...]) -> dict[str, str]:
    """The identity of a side's newest result's build."""
    if not ids or not len(data.builds):
        return {}
    if not data.build_of:
        res, builds = data.results, data.builds
        data.build_of = dict(
            zip(
                res["result_id"].tolist(),
                zip(res["build"].tolist(), res["build_sha"].tolist(), strict=True),
                strict=True,
            )
        )
        data.identity_of = {
            (str(b["name"]), str(b["identity_sha"])): identity_fields(b) for b in builds.to_dict(orient="records")
        }
    name, sha = data.build_of[max(ids)]
    return data.identity_of.get((str(name), str(sha)), {})


# --- policy: which comparisons ----------------------------------------------------------------------------


def machine_order(data: SiteData) -> list[str]:
    """Machines, the one with the newest run first."""
    newest = data.results.groupby("machine_fingerprint")["run_started"].max().sort_values(ascending=False)
    return [str(fp) for fp in newest.index]


def newest_run(data: SiteData, fp: str) -> int:
    on = data.results[data.results["machine_fingerprint"] == fp]
    return int(on.sort_values(["run_started", "run_id"]).iloc[-1]["run_id"])


def previous_run(data: SiteData, fp: str, run_id: int) -> int | None:
    on = data.results[data.results["machine_fingerprint"] == fp]
    earlier = on[on["x"] < data.run_x[run_id]]
    return None if not len(earlier) else int(earlier.sort_values(["run_started", "run_id"]).iloc[-1]["run_id"])


def build_sequence(data: SiteData, fp: str) -> list[str]:
    """A machine's builds in the order they were first measured."""
    on = data.results[data.results["machine_fingerprint"] == fp]
    first = on.groupby("build", sort=False)["x"].min().sort_values(kind="stable")
    return [str(b) for b in first.index]


def baseline_for(data: SiteData, fp: str, candidate: str) -> str | None:
    """`dashboard.baseline`, or the newest earlier build matching `dashboard.baseline_pattern`, or else the
    machine's first build."""
    sequence = build_sequence(data, fp)
    if data.settings.baseline is not None:
        name = data.settings.baseline
        return name if name in sequence and name != candidate else None
    if data.settings.baseline_pattern is not None:
        before = sequence[: sequence.index(candidate)] if candidate in sequence else sequence
        matching = [b for b in before if fnmatch.fnmatchcase(b, data.settings.baseline_pattern)]
        return matching[-1] if matching else None
    return sequence[0] if sequence and sequence[0] != candidate else None


def _side(rows: pd.DataFrame) -> tuple[tuple[int, ...], tuple[int, ...]]:
    kept = standing(rows)
    return tuple(sorted(int(r) for r in kept["result_id"])), tuple(sorted({int(r) for r in kept["run_id"]}))


def baseline_pairs(data: SiteData, standing_results: pd.DataFrame) -> list[Pair]:
    """Per machine: each build of its newest run against the baseline, both sides the results that stand."""
    pairs = []
    for fp in machine_order(data):
        run = newest_run(data, fp)
        on = standing_results[standing_results["machine_fingerprint"] == fp]
        candidates = dict.fromkeys(data.results[data.results["run_id"] == run]["build"].tolist())
        for cand in candidates:
            base = baseline_for(data, fp, str(cand))
            if base is None:
                continue
            b_ids, b_runs = _side(on[on["build"] == base])
            c_ids, c_runs = _side(on[on["build"] == cand])
            pairs.append(Pair("baseline", fp, base, str(cand), b_ids, c_ids, b_runs, c_runs))
    return pairs


def nightly_pairs(data: SiteData) -> list[Pair]:
    """Each nightly against the previous one: per machine and build line, each of the newest
    `dashboard.nightly_pages` runs against the run before it."""
    res = data.results
    keyed = res[["machine_fingerprint", "build", "run_id", "x", "result_id"]].sort_values(["x", "result_id"])
    # per machine and build line, each run's result ids in order: one pass over plain lists, not a group per run
    lines: dict[tuple[Any, Any], dict[int, list[int]]] = {}
    columns = (keyed[c].tolist() for c in ("machine_fingerprint", "build", "run_id", "result_id"))
    for fp, build, run, result in zip(*columns, strict=True):
        lines.setdefault((fp, build), {}).setdefault(int(run), []).append(int(result))
    pairs = []
    for (fp, build), runs in lines.items():
        by_run = {r: tuple(ids) for r, ids in runs.items()}
        ordered = list(by_run)[-(data.settings.nightly_pages + 1) :] if data.settings.nightly_pages else []
        for before, after in itertools.pairwise(ordered):
            pairs.append(
                Pair("nightly", str(fp), str(build), str(build), by_run[before], by_run[after], (before,), (after,))
            )
    return pairs


def overview_runs(data: SiteData) -> set[int]:
    """The runs whose rows the overview shows: each machine's newest and the one before it."""
    out = set()
    for fp in machine_order(data):
        run = newest_run(data, fp)
        out |= {run} | ({prev} if (prev := previous_run(data, fp, run)) is not None else set())
    return out


def statuses_changed(data: SiteData, fp: str) -> list[dict[str, Any]]:
    """New failures of the newest run: a model not ok now that was ok in the machine's previous run."""
    run = newest_run(data, fp)
    prev = previous_run(data, fp, run)
    if prev is None:
        return []
    res = details(data, {run, prev})
    now = standing(res[res["run_id"] == run])
    before = standing(res[res["run_id"] == prev])
    ok_before = {
        (b, m) for b, m, s in zip(before["build"], before["model"], before["status"], strict=True) if s == Status.OK
    }
    ok_models = {m for _, m in ok_before}
    builds_before = set(before["build"])
    out = []
    for b, m, s, reason in zip(now["build"], now["model"], now["status"], now["reason"], strict=True):
        # the same build ok before; a build new to the machine: the model loaded ok with another build
        if s != Status.OK and ((b, m) in ok_before or (b not in builds_before and m in ok_models)):
            out.append(
                {"build": b, "model": m, "status": s, "reason": "" if missing(reason) else reason, "previous_run": prev}
            )
    return out


def metric_names() -> list[str]:
    return list(METRICS)

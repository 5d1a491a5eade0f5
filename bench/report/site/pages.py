"""Pages: site data → HTML (Jinja2, autoescaped) and the JSON the charts read, written incrementally.

Every page has a key: a hash of everything it shows (its results' ids and finish times, the gate settings,
the templates and this code). A page whose key is unchanged is linked from the previous site, not written
again, so adding one run rewrites the overview, that run's page, its comparisons and the histories it
extends. Charts are drawn in the browser by plotly.js, shipped in the plotly Python package and copied into
the site; their data are JSON files, wrapped as scripts that push them onto `window.perfgateData`: browsers
do not let a page fetch() files from file://, and a script file of the site's own is what a strict CSP allows.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session

from bench.analysis.compare import Comparison, Side, compare_frames
from bench.analysis.gate import Verdict, evaluate
from bench.config import DashboardConfig, GateConfig
from bench.escape import json_text as escaped_json
from bench.escape import visible_value
from bench.metrics import METRICS, Status
from bench.package_data import data_dir
from bench.report import render
from bench.report.site import data as site_data
from bench.report.site.data import Pair, SiteData
from bench.report.site.output import SiteOutput, content_key, file_key
from bench.store.predictions import PREDICTED_SOURCE
from bench.store.queries import RESULT_COLUMNS, all_logs, attach_logs, results_frame, with_samples
from bench.store.standing import standing

TEMPLATES = data_dir("bench._templates", "dashboard/templates")
STATIC = ("style.css", "site.js")


@dataclass(frozen=True)
class SiteReport:
    out: Path
    pages: int  # HTML pages in the site
    written: int  # files written by this build (the rest were unchanged and kept)
    bytes_total: int
    seconds: float
    compare_s: float = 0.0  # of all processes' time, how much went to bench.analysis.compare and bench.analysis.gate


@functools.cache
def _code_version(*modules: str) -> str:
    """Templates, the code that fills them and `modules`: a change to any rewrites the pages that use it.
    Read once per process, so an edit during a build cannot mix two versions in one site."""
    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    sources = [*sorted(TEMPLATES.iterdir()), *sorted(here.glob("*.py"))]
    sources += [here.parents[1] / name for name in modules]  # relative to bench/
    for path in sources:
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=visible_value,  # a control character in a name is shown, not passed to the browser
    )
    env.filters.update(
        bytes=render.human_bytes,
        ts=render.fmt_ts,
        metric=render.fmt_metric,
        num=lambda v, d=3: "–" if render.missing(v) else f"{v:.{d}f}",
        pct=lambda v: "–" if render.missing(v) else f"{v:.0f}%",
    )
    env.tests["missing"] = render.missing
    env.globals["METRICS"] = METRICS
    return env


def plain(value: Any) -> Any:
    """JSON-ready: NaN and NA → null, numpy scalars → Python, dataclasses and enums → dicts and strings."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    value = render._plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(payload: Any) -> str:
    """Compact JSON for the charts (bench.escape.json_text: ASCII only, so it can sit in a script)."""
    try:  # payloads built of plain values (the histories) go straight through
        return escaped_json(payload, separators=(",", ":"), default=None)
    except (TypeError, ValueError):
        return escaped_json(plain(payload), separators=(",", ":"))


def _floats(values: pd.Series) -> list[float | None]:
    return [None if v != v else v for v in pd.to_numeric(values, errors="coerce").astype(float).tolist()]


def data_script(payload: Any) -> str:
    return f"(window.perfgateData = window.perfgateData || []).push({json_text(payload)});\n"


def verdict_outcome(verdict: Verdict) -> str:
    """pass / fail / inconclusive (a gate without an inconclusive outcome gives pass or fail)."""
    outcome = getattr(verdict, "outcome", None)
    return str(getattr(outcome, "value", outcome)) if outcome is not None else ("pass" if verdict.passed else "fail")


def check_outcome(check: Any) -> str:
    outcome = getattr(check, "outcome", None)
    if outcome is not None:
        return str(getattr(outcome, "value", outcome))
    return "pass" if check.passed else "fail"


class Builder:
    def __init__(self, session: Session, data: SiteData, out: SiteOutput) -> None:
        self.session, self.data, self.out = session, data, out
        self.env = environment()
        self.version = _code_version("metrics.py")
        # comparison pages also show what bench.analysis.compare and bench.analysis.gate computed
        self.verdict_version = _code_version("metrics.py", "analysis/compare.py", "analysis/gate.py")
        res = data.results
        # what makes a result's page content change (plain str(): pandas' astype(str) keeps missing values missing)
        rkeys = [
            f"{i}:{f}:{st}:{n}"
            for i, f, st, n in zip(
                res["result_id"].tolist(),
                res["finished_at"].tolist(),
                res["status"].tolist(),
                res["repetitions"].tolist(),
                strict=True,
            )
        ]
        self.rkey = dict(zip(res["result_id"].tolist(), rkeys, strict=True))
        self.rkey_col = pd.Series(rkeys, index=res.index, dtype=object)
        self.standing = standing(res)
        self.gate_key = data.gate.model_dump(mode="json")
        self.hosts = dict(zip(data.machines["fingerprint"], data.machines["hostname"], strict=True))
        self.samples: pd.DataFrame | None = None
        self.narrow = pd.DataFrame()
        self.compare_s = 0.0
        self.run_date = {int(r): str(d)[:16] for r, d in zip(data.runs["run_id"], data.runs["started_at"], strict=True)}
        self.run_bandwidth = res.groupby("run_id")["bandwidth_gbs"].max().fillna(0).to_dict()
        self.run_rows = {int(r): row for r, row in zip(data.runs["run_id"], data.runs.to_dict("records"), strict=True)}
        self.verdicts: dict[str, Verdict] = {}
        self.runs_by_id = data.runs.set_index("run_id", drop=False)
        by_fp = data.machines.drop_duplicates("fingerprint").set_index("fingerprint", drop=False)
        self.machine_series = {fp: by_fp.iloc[i] for i, fp in enumerate(by_fp.index)}
        self.builds_of: dict[frozenset[str], list[dict[str, Any]]] = {}
        self.run_frames: dict[int, pd.DataFrame] = {}
        self.run_results: dict[int, list[Any]] = {}
        self.history_rows: dict[tuple[str, str], pd.DataFrame] = {}

    # -- helpers ----------------------------------------------------------------------------------------
    def render(self, rel: str, template: str, key: str, **ctx: Any) -> None:
        html = self.env.get_template(template).render(root="../" * rel.count("/"), **ctx)
        self.out.write(rel, html, key)

    def keys_of(self, ids: tuple[int, ...] | list[int]) -> list[str]:
        return [self.rkey[i] for i in ids]

    def load_samples(self, result_ids: set[int]) -> None:
        """Samples of the results some comparison needs (all at once when that is most of the store)."""
        if not result_ids:
            self.samples = results_frame(self.session, []).set_index("result_id", drop=False)
            self.narrow = self.samples
            return
        res = self.data.results
        runs = sorted({int(r) for r in res[res["result_id"].isin(result_ids)]["run_id"]})
        # most of the store: the results are already read (site data), only their samples are not
        frame = with_samples(self.session, res) if len(runs) > 200 else results_frame(self.session, runs)
        self.samples = frame[frame["result_id"].isin(result_ids)].set_index("result_id", drop=False)
        # compare_frames walks rows: hand it only the columns it reads (a wide row costs 20× more)
        wanted = ["result_id", "run_id", "model", "status", "reason", "n_prompt", "n_gen", "rounds", *METRICS]
        wanted += [m.samples_column for m in METRICS.values() if m.samples_column]
        # as plain objects: compare_frames walks rows, and one object block is cheap to walk
        self.narrow = self.samples[[c for c in wanted if c in self.samples.columns]].astype(object)

    # -- comparisons ------------------------------------------------------------------------------------
    def pair_rel(self, pair: Pair) -> str:
        name = (
            file_key(
                pair.kind,
                pair.machine_fingerprint,
                pair.baseline,
                pair.candidate,
                *pair.baseline_runs,
                *pair.candidate_runs,
            )
            if pair.kind == "nightly"
            else file_key(pair.kind, pair.machine_fingerprint, pair.baseline, pair.candidate)
        )
        return f"compare/{name}.html"

    def pair_key(self, pair: Pair) -> str:
        return content_key(
            self.verdict_version,
            asdict(pair),
            self.keys_of(pair.baseline_ids),
            self.keys_of(pair.candidate_ids),
            self.gate_key,
            site_data.side_identity(self.data, pair.baseline_ids),
            site_data.side_identity(self.data, pair.candidate_ids),
        )

    def verdict(self, pair: Pair) -> Verdict:
        start = time.perf_counter()
        try:
            return self._verdict(pair)
        finally:
            self.compare_s += time.perf_counter() - start

    def _verdict(self, pair: Pair) -> Verdict:
        base = self.narrow.loc[list(pair.baseline_ids)].reset_index(drop=True)
        cand = self.narrow.loc[list(pair.candidate_ids)].reset_index(drop=True)
        host = self.hosts.get(pair.machine_fingerprint, "")
        sides = [
            Side(name, ids, runs, pair.machine_fingerprint, host)
            for name, ids, runs in (
                (pair.baseline, pair.baseline_ids, pair.baseline_runs),
                (pair.candidate, pair.candidate_ids, pair.candidate_runs),
            )
        ]
        # nightly against nightly: ratios and tests; the bootstrap CIs are for the gate's own pairs
        table = compare_frames(base, cand, ci=pair.kind == "baseline")
        return evaluate(Comparison(sides[0], sides[1], False, table), self.data.gate)

    def compare_page(self, pair: Pair, verdict: Verdict, key: str) -> dict[str, Any]:
        rel = self.pair_rel(pair)
        stem = Path(rel).stem
        table = verdict.comparison.table
        assert self.samples is not None
        side = {
            name: {r["model"]: r for r in self.samples.loc[list(ids), ["model", "status", "reason"]].to_dict("records")}
            for name, ids in (("base", pair.baseline_ids), ("cand", pair.candidate_ids))
        }
        failed: dict[str, set[str]] = {}
        for c in verdict.checks:
            if check_outcome(c) in ("fail", "inconclusive"):
                failed.setdefault(c.model, set()).add(c.metric)
        records = render.records(table.drop(columns=[c for c in ("log_ratios",) if c in table]))
        per_model: dict[str, dict[str, Any]] = {}
        for r in records:
            per_model.setdefault(r["model"], {}).setdefault(r["metric"], r)
        rows = [
            {
                "model": model,
                "metrics": metrics,
                "base": side["base"].get(model),
                "cand": side["cand"].get(model),
                "failed": failed.get(model, set()),
            }
            for model, metrics in per_model.items()
        ]
        ident_b = site_data.side_identity(self.data, pair.baseline_ids)
        ident_c = site_data.side_identity(self.data, pair.candidate_ids)
        identity = [
            {
                "field": f,
                "baseline": ident_b.get(f, "–"),
                "candidate": ident_c.get(f, "–"),
                "differs": ident_b.get(f) != ident_c.get(f),
            }
            for f in dict.fromkeys([*ident_b, *ident_c])
        ]
        payload = {
            "kind": pair.kind,
            "machine": pair.machine_fingerprint,
            "baseline": {"build": pair.baseline, "result_ids": pair.baseline_ids, "run_ids": pair.baseline_runs},
            "candidate": {"build": pair.candidate, "result_ids": pair.candidate_ids, "run_ids": pair.candidate_runs},
            "verdict": verdict_outcome(verdict),
            "rows": records,
            "checks": [{**plain(c), "outcome": check_outcome(c)} for c in verdict.checks],
            "identity": identity,
        }
        self.out.write(f"data/{stem}.json", json_text(payload), key)
        self.out.write(f"data/{stem}.js", data_script({"chart": "compare", **payload}), key)
        title = (
            f"perfgate — {pair.candidate_label} vs baseline {pair.baseline_label}"
            if pair.kind == "baseline"
            else f"perfgate — nightly {pair.candidate_label} vs the previous {pair.baseline_label}"
        )
        self.render(
            rel,
            "compare.html.j2",
            key,
            pair=pair,
            verdict=verdict,
            outcome=verdict_outcome(verdict),
            check_outcome=check_outcome,
            rows=rows,
            identity=identity,
            host=self.hosts.get(pair.machine_fingerprint, ""),
            title=title,
            data=f"data/{stem}.json",
            scripts=["plotly.min.js", f"data/{stem}.js", "site.js"],
        )
        return payload

    def old_payload(self, pair: Pair, key: str) -> dict[str, Any] | None:
        """The comparison's JSON from the previous site when its inputs did not change (the overview reads it)."""
        rel = self.pair_rel(pair)
        stem = Path(rel).stem
        files = (rel, f"data/{stem}.json", f"data/{stem}.js")
        if not all(self.out.unchanged(r, key) for r in files):
            return None
        try:
            found = json.loads((self.out.stage / f"data/{stem}.json").read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    # -- runs -------------------------------------------------------------------------------------------
    def run_key(self, run_id: int, result_keys: str) -> str:
        run = self.run_rows[run_id]
        return content_key(
            self.version,
            run_id,
            str(run["status"]),
            str(run["finished_at"]),
            run["settings"],
            result_keys,
            self.run_bandwidth.get(run_id),
        )

    def prepare_runs(self, frame: pd.DataFrame) -> None:
        """What the run pages of `frame`'s runs show, split per run once: a worker then formats no frame, and
        rows with attributes let the template read `r.build` without a failed getattr on a dict first."""
        self.run_frames = {int(r): g for r, g in frame.groupby("run_id", sort=True)}
        rows = [_RunRow(*t) for t in zip(*(frame[c].tolist() for c in _RUN_ROW), strict=True)]
        self.run_results = {}
        for run_id, row in zip(frame["run_id"].tolist(), rows, strict=True):
            self.run_results.setdefault(int(run_id), []).append(row)

    def builds_shown(self, names: frozenset[str]) -> list[dict[str, Any]]:
        if names not in self.builds_of:
            found = self.data.builds
            self.builds_of[names] = render.records(found[found["name"].isin(names)] if len(found) else found)
        return self.builds_of[names]

    def run_page(self, run_id: int, key: str, links: dict[str, str]) -> None:
        res = self.run_frames[run_id]
        run = self.runs_by_id.iloc[self.runs_by_id.index.get_loc(run_id)]
        machine = self.machine_series[run["machine_fingerprint"]]
        self.out.write(
            f"data/run-{run_id}.json",
            res[[*RESULT_COLUMNS, "log", "tg_roofline_pct"]].to_json(orient="records", date_format="iso"),
            key,
        )
        self.render(
            f"run/{run_id}.html",
            "run.html.j2",
            key,
            run=run,
            run_id=run_id,
            results=self.run_results[run_id],
            builds=self.builds_shown(frozenset(res["build"])),
            machine=machine,
            load_matrix=matrix(res),
            predicted=run["source"] == PREDICTED_SOURCE,
            links=links,
            title=f"perfgate — run {run_id} ({run['machine']}, {run['started_at']})",
            data=f"data/run-{run_id}.json",
        )

    # -- history ----------------------------------------------------------------------------------------
    def history_rel(self, fp: str, model: str) -> str:
        return f"history/{file_key(fp, model)}.html"

    def history_payload(self, fp: str, model: str, rows: pd.DataFrame) -> dict[str, Any]:
        changes = self.data.changes
        marks = changes[(changes["machine_fingerprint"] == fp) & (changes["model"] == model)]
        run_x = self.data.run_x
        series: dict[str, Any] = {}
        rows = rows.sort_values(["x", "result_id"])
        # what every metric's points share, once per build line
        common = {}
        for build, b in rows.groupby("build", sort=False):
            runs = b["run_id"].astype(int).tolist()
            common[str(build)] = (
                b,
                {
                    "build": str(build),
                    "x": b["x"].tolist(),
                    "status": [str(v) for v in b["status"].tolist()],
                    "ok": [v == Status.OK for v in b["status"].tolist()],
                    "run": runs,
                    "commit": [str(v) for v in b["commit"].tolist()],
                    "date": [self.run_date.get(r, "") for r in runs],
                },
            )
        for metric, spec in METRICS.items():
            lines = [
                {
                    **shared,
                    "y": _floats(b[metric]),
                    "ci": _floats(b[f"{metric}_ci95"]) if f"{metric}_ci95" in b else [None] * len(b),
                    "roofline": _floats(b["tg_roofline_pct"]) if metric == "tg_ts" else None,
                }
                for b, shared in common.values()
            ]
            series[metric] = {
                "label": spec.label,
                "unit": spec.unit,
                "higher_is_better": spec.higher_is_better,
                "lines": lines,
            }
        return {
            "chart": "history",
            "machine": fp,
            "host": self.hosts.get(fp, ""),
            "model": model,
            "series": series,
            "changes": [
                {
                    **plain(c),
                    "x_before": run_x.get(int(c["run_before"])) if not render.missing(c["run_before"]) else None,
                    "x_after": run_x.get(int(c["run_after"])) if not render.missing(c["run_after"]) else None,
                }
                for c in marks.to_dict(orient="records")
            ],
            "ticks": _ticks(self.data, fp),
        }

    def history_page(self, fp: str, model: str, rows: pd.DataFrame) -> dict[str, Any]:
        rel = self.history_rel(fp, model)
        stem = f"history-{Path(rel).stem}"
        changes = self.data.changes
        marks = changes[(changes["machine_fingerprint"] == fp) & (changes["model"] == model)]
        key = content_key(
            self.version,
            fp,
            model,
            self.keys_of(rows["result_id"].tolist()),
            rows["x"].tolist(),
            plain(marks.to_dict(orient="records")),
            float(rows["bandwidth_gbs"].fillna(0).max()),
        )
        entry = {
            "machine": fp,
            "host": self.hosts.get(fp, ""),
            "model": model,
            "href": rel,
            "runs": int(rows["run_id"].nunique()),
            "failed": int((rows["status"] != Status.OK).sum()),
            "changes": len(marks),
        }
        if all(self.out.unchanged(r, key) for r in (rel, f"data/{stem}.js", f"data/{stem}.json")):
            return entry
        payload = self.history_payload(fp, model, rows)
        self.out.write(f"data/{stem}.json", json_text(payload), key)
        self.out.write(f"data/{stem}.js", data_script(payload), key)
        self.render(
            rel,
            "history.html.j2",
            key,
            entry=entry,
            metrics=list(METRICS.values()),
            title=f"perfgate — history of {model} on {entry['host']}",
            data=f"data/{stem}.json",
            scripts=["plotly.min.js", f"data/{stem}.js", "site.js"],
        )
        return entry


def _ticks(data: SiteData, fp: str) -> dict[str, list[Any]]:
    """At most 24 labelled positions on a machine's axis: the nightly's date."""
    runs = data.runs[data.runs["machine_fingerprint"] == fp]
    xs = [data.run_x[int(r)] for r in runs["run_id"]]
    dates = [str(d)[:10] for d in runs["started_at"]]
    step = max(1, len(xs) // 24)
    return {"x": xs[::step], "text": dates[::step]}


def matrix(res: pd.DataFrame) -> dict[str, Any]:
    """Builds × models of a set of results (the newest result of a cell wins)."""
    builds = list(dict.fromkeys(res["build"]))
    models = list(dict.fromkeys(res["model"]))
    cells = {}
    sources = res["source"].tolist() if "source" in res else [None] * len(res)
    for build, model, status, reason, done, total, source in zip(
        res["build"].tolist(),
        res["model"].tolist(),
        res["status"].tolist(),
        res["reason"].tolist(),
        res["layers_offloaded"].tolist(),
        res["layers_total"].tolist(),
        sources,
        strict=True,
    ):
        offload = None if render.missing(total) else f"{done}/{total}"
        cells[(build, model)] = {
            "status": status,
            "reason": reason or "",
            # `bench metal-check --record`: a status predicted from the build's tree and recipe, not loaded
            "offload": "predicted" if source == PREDICTED_SOURCE else offload,
        }
    return {"builds": builds, "models": models, "grid": [[cells.get((b, m)) for m in models] for b in builds]}


# what a run page's rows show: plain values, formatted once for all runs being written
_RUN_ROW = [
    "build",
    "model",
    "file_txt",
    "status",
    "reason",
    "layers_txt",
    "backend",
    "load_txt",
    "pp_txt",
    "tg_txt",
    "tg_roofline_pct",
    "buffers_txt",
    "rss_txt",
    "gpu_txt",
    "exit_txt",
    "n_prompt",
    "n_gen",
    "samples_pp_ns",
    "samples_tg_ns",
    "log",
]


def _display_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    def col(name: str) -> list[Any]:
        return frame[name].tolist()

    # sizes repeat across runs (one model file, its buffers): each distinct value is formatted once
    human: dict[Any, str] = {}

    def size(value: Any) -> str:
        try:
            return human[value]
        except KeyError:
            text = human[value] = render.human_bytes(value)
            return text
        except TypeError:  # unhashable
            return render.human_bytes(value)

    return {
        "layers_txt": [
            ("–" if render.missing(t) else f"{o}/{t}")
            for o, t in zip(col("layers_offloaded"), col("layers_total"), strict=True)
        ],
        "pp_txt": [render.fmt_ts(m, s) for m, s in zip(col("pp_ts"), col("pp_ts_std"), strict=True)],
        "tg_txt": [render.fmt_ts(m, s) for m, s in zip(col("tg_ts"), col("tg_ts_std"), strict=True)],
        "buffers_txt": [
            " / ".join(size(v) for v in vs)
            for vs in zip(col("model_buf_bytes"), col("kv_bytes"), col("compute_bytes"), strict=True)
        ],
        "rss_txt": [size(v) for v in col("rss_peak_bytes")],
        "gpu_txt": [
            f"{size(u)} / {size(b)}" for u, b in zip(col("gpu_used_bytes"), col("device_budget_bytes"), strict=True)
        ],
        "file_txt": [size(v) for v in col("model_bytes")],
        "load_txt": ["–" if render.missing(v) else f"{v:.3f}" for v in col("load_s")],
        "exit_txt": [
            " ".join(str(x) for x in (e, g) if not render.missing(x))
            for e, g in zip(col("exit_code"), col("signal"), strict=True)
        ],
    }


_RunRow = collections.namedtuple("_RunRow", _RUN_ROW)  # type: ignore[misc]


# --- the build, in parallel where pages are independent ---------------------------------------------------

_ACTIVE: Builder | None = None


def _work(item: tuple[str, Any]) -> tuple[str, Any]:
    """One page in a forked worker (the frames are shared by fork); returns what the parent records."""
    assert _ACTIVE is not None
    b = _ACTIVE
    before, written, compare_s = dict(b.out.pages), b.out.written, b.compare_s
    kind, arg = item
    if kind == "compare":
        pair, key = arg
        result: Any = (b.pair_rel(pair), pair.kind, b.compare_page(pair, b.verdict(pair), key))
    elif kind == "run":
        run_id, key, links = arg
        b.run_page(run_id, key, links)
        result = None
    else:
        fp, model = arg
        result = b.history_page(fp, model, b.history_rows[(fp, model)])
    new = {k: v for k, v in b.out.pages.items() if before.get(k) != v}
    return kind, (result, new, b.out.written - written, b.compare_s - compare_s)


def _in_parallel(builder: Builder, work: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Each item's outcome; files written by forked workers are added to the parent's count and manifest."""
    global _ACTIVE
    _ACTIVE = builder
    workers = min(os.cpu_count() or 1, 8)
    try:
        if workers < 2 or len(work) < 8 or "fork" not in mp.get_all_start_methods() or sys.platform == "darwin":
            return [_work(item) for item in work]
        with mp.get_context("fork").Pool(workers) as pool:
            # the comparisons come first and cost the most: one at a time, so no worker gets several of them
            first = [item for item in work if item[0] == "compare"]
            rest = work[len(first) :]
            pending = [
                pool.map_async(_work, items, chunksize=size)
                for items, size in ((first, 1), (rest, max(1, len(rest) // (workers * 4))))
                if items
            ]
            outcomes = [outcome for p in pending for outcome in p.get()]
        for _, (_, pages, written, compare_s) in outcomes:
            builder.out.pages.update(pages)
            builder.out.written += written
            builder.compare_s += compare_s
        return outcomes
    finally:
        _ACTIVE = None


def build(
    session: Session,
    out_dir: Path,
    gate: GateConfig,
    settings: DashboardConfig,
) -> SiteReport:
    start = time.perf_counter()
    out = SiteOutput(out_dir)
    try:
        data = site_data.load(session, settings, gate)
        builder = Builder(session, data, out)
        written = _build(builder)
        path = out.commit()
        compare_s = builder.compare_s
    except BaseException:
        out.abort()
        raise
    pages = sum(1 for rel in out.pages if rel.endswith(".html"))
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return SiteReport(path, pages, written, size, time.perf_counter() - start, compare_s)


def _build(b: Builder) -> int:
    import plotly

    data, out = b.data, b.out
    for name in STATIC:
        out.copy(name, TEMPLATES / name)
    out.copy("plotly.min.js", Path(plotly.__file__).parent / "package_data" / "plotly.min.js")
    res = data.results
    if not len(res):
        b.render("index.html", "overview.html.j2", "", machines=[], title="perfgate — no results yet", data=None)
        return out.written
    # which comparison pages, and which of them changed
    base_pairs = site_data.baseline_pairs(data, b.standing)
    night_pairs = site_data.nightly_pairs(data)
    keyed = [(p, b.pair_key(p)) for p in [*base_pairs, *night_pairs]]
    todo = []
    overview_of: dict[str, dict[str, Any]] = {}
    for pair, key in keyed:
        kept = b.old_payload(pair, key)
        if kept is None:
            todo.append((pair, key))
        elif pair.kind == "baseline":
            overview_of[b.pair_rel(pair)] = kept
    # runs whose page changed
    # result ids per run, from one pass over two columns (a groupby of 1,000 frames costs half a second)
    by_run: dict[int, list[int]] = {}
    for r, i in sorted(zip(res["run_id"].tolist(), res["result_id"].tolist(), strict=True)):
        by_run.setdefault(int(r), []).append(int(i))
    per_run = res[["run_id"]].assign(rkey=b.rkey_col).groupby("run_id")["rkey"].agg("|".join)
    run_keys = {int(r): b.run_key(int(r), keys) for r, keys in per_run.items()}
    run_todo = [
        r
        for r in by_run
        if not (out.unchanged(f"run/{r}.html", run_keys[r]) and out.unchanged(f"data/run-{r}.json", run_keys[r]))
    ]
    need = {i for p, _ in todo for i in (*p.baseline_ids, *p.candidate_ids)}
    need |= {i for r in run_todo for i in by_run[r]}
    b.load_samples(need)
    nightly_rel = {(p.machine_fingerprint, p.candidate_runs[0], p.candidate): b.pair_rel(p) for p in night_pairs}
    # the comparisons first: they cost the most, and a pool that starts with them ends evenly
    work: list[tuple[str, Any]] = [("compare", (p, k)) for p, k in todo]
    if run_todo:
        assert b.samples is not None
        frame = b.samples[b.samples["run_id"].isin(run_todo)].reset_index(drop=True)
        logs = all_logs(b.session) if len(frame) > 20000 else None
        frame = (
            frame.assign(log=[logs.get(int(i), "") for i in frame["result_id"]])
            if logs is not None
            else (attach_logs(b.session, frame))
        )
        extra = res.set_index("result_id")[["tg_roofline_pct", "bandwidth_gbs"]]
        frame = frame.join(extra, on="result_id")
        frame = frame.assign(**_display_columns(frame))
        frame["tg_roofline_pct"] = frame["tg_roofline_pct"].astype(object).where(frame["tg_roofline_pct"].notna(), None)
        b.prepare_runs(frame)
        for r, g in b.run_frames.items():
            fp = str(g["machine_fingerprint"].iloc[0])
            links = {str(bn): nightly_rel[(fp, r, bn)] for bn in g["build"] if (fp, r, bn) in nightly_rel}
            work.append(("run", (r, run_keys[r], links)))
    # forked workers read the frames from the builder they inherit: a work item carries keys, not pickled frames
    b.history_rows = {(str(fp), str(m)): g for (fp, m), g in res.groupby(["machine_fingerprint", "model"], sort=False)}
    work += [("history", key) for key in b.history_rows]
    outcomes = _in_parallel(b, work)
    entries = [result for kind, (result, *_) in outcomes if kind == "history"]
    for kind, (result, *_) in outcomes:
        if kind == "compare" and result[1] == "baseline":
            overview_of[result[0]] = result[2]
    _history_index(b, entries)
    _overview(b, base_pairs, overview_of, entries)
    return out.written


def _history_index(b: Builder, entries: list[dict[str, Any]]) -> None:
    b.render(
        "history.html",
        "history_index.html.j2",
        "",
        entries=sorted(entries, key=lambda e: (e["host"], e["model"])),
        title="perfgate — history per machine and model",
        data=None,
    )


def _overview(
    b: Builder, pairs: list[Pair], payloads: dict[str, dict[str, Any]], entries: list[dict[str, Any]]
) -> None:
    data = b.data
    history_of = {(e["machine"], e["model"]): e["href"] for e in entries}
    machines = []
    for fp in site_data.machine_order(data):
        run_id = site_data.newest_run(data, fp)
        run = data.runs[data.runs["run_id"] == run_id].iloc[0]
        models = list(dict.fromkeys(data.results[data.results["machine_fingerprint"] == fp]["model"]))
        columns = []
        for pair in (p for p in pairs if p.machine_fingerprint == fp):
            payload = payloads[b.pair_rel(pair)]
            columns.append(
                {"pair": pair, "href": b.pair_rel(pair), "outcome": payload["verdict"], "cells": _cells(payload)}
            )
        changes = data.changes
        new_changes = changes[(changes["machine_fingerprint"] == fp) & (changes["run_after"] == run_id)]
        machines.append(
            {
                "fingerprint": fp,
                "host": run["machine"],
                "gpu": None if render.missing(run["gpu"]) else run["gpu"],
                "run": run,
                "runs": int((data.runs["machine_fingerprint"] == fp).sum()),
                "models": models,
                "columns": columns,
                "new_failures": site_data.statuses_changed(data, fp),
                "new_changes": render.records(new_changes),
                "history": {m: history_of.get((fp, m)) for m in models},
                "baseline_rule": (
                    f"dashboard.baseline = {data.settings.baseline}"
                    if data.settings.baseline
                    else f"the newest earlier build matching {data.settings.baseline_pattern}"
                    if data.settings.baseline_pattern
                    else "the machine's first build (no dashboard.baseline set)"
                ),
            }
        )
    overview = {
        "machines": [
            {
                "fingerprint": m["fingerprint"],
                "newest_run": int(m["run"]["run_id"]),
                "comparisons": [
                    {
                        "baseline": {
                            "build": c["pair"].baseline,
                            "result_ids": c["pair"].baseline_ids,
                            "run_ids": c["pair"].baseline_runs,
                        },
                        "candidate": {
                            "build": c["pair"].candidate,
                            "result_ids": c["pair"].candidate_ids,
                            "run_ids": c["pair"].candidate_runs,
                        },
                        "verdict": c["outcome"],
                        "cells": c["cells"],
                        "href": c["href"],
                    }
                    for c in m["columns"]
                ],
                "new_failures": m["new_failures"],
            }
            for m in machines
        ]
    }
    b.out.write("data/overview.json", json_text(overview), "")
    b.render(
        "index.html", "overview.html.j2", "", machines=machines, title="perfgate — overview", data="data/overview.json"
    )


def _cells(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model of a comparison's JSON: candidate status, pp and tg ratio, and the verdict colour (the worst
    of the model's checks)."""
    cells: dict[str, dict[str, Any]] = {}
    for row in payload["rows"]:
        cell = cells.setdefault(
            row["model"],
            {"status": row["candidate_status"], "baseline_status": row["baseline_status"], "pp": None, "tg": None},
        )
        if row["metric"] in ("pp_ts", "tg_ts"):
            cell[row["metric"][:2]] = row["ratio"]
    for model, cell in cells.items():
        outcomes = [c["outcome"] for c in payload["checks"] if c["model"] == model]
        cell["verdict"] = "fail" if "fail" in outcomes else ("inconclusive" if "inconclusive" in outcomes else "pass")
    return cells

"""The store → a static site (asv-style: a pure function of stored results, rebuildable any time).

pandas reads the store, the compare and gate modules compute every statistic (nothing is recomputed
here), matplotlib draws SVG, Jinja2 (autoescaping) writes HTML. Works from file:// and CI artifacts.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from matplotlib.ticker import FuncFormatter, NullFormatter
from sqlalchemy import select
from sqlalchemy.orm import Session

from bench import render
from bench.compare import Comparison, Side, compare_frames
from bench.config import GateConfig
from bench.gate import Verdict, evaluate
from bench.metrics import Status
from bench.store.db import Store
from bench.store.models import Machine
from bench.store.queries import RESULT_COLUMNS, all_logs, builds_frame, results_frame, runs_frame

TEMPLATES = Path(__file__).resolve().parents[1] / "dashboard" / "templates"
STATUS_OK = Status.OK
plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


@dataclass(frozen=True)
class SiteReport:
    out: Path
    pages: int
    bytes_total: int
    seconds: float


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        bytes=render.human_bytes,
        ts=render.fmt_ts,
        slug=slug,
        metric=render.fmt_metric,
        num=lambda v, d=3: "–" if render.missing(v) else f"{v:.{d}f}",
    )
    env.tests["missing"] = render.missing
    return env


def _json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, default=str, separators=(",", ":")))


def _svg(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight")
    plt.close(fig)


class SiteBuilder:
    def __init__(self, session: Session, out: Path, gate: GateConfig) -> None:
        self.session, self.out, self.gate = session, out, gate
        self.env = _env()
        self.results = results_frame(session)
        self.runs = runs_frame(session)
        self.run_by_id = self.runs.set_index("run_id")
        self.machines = {m.id: m for m in session.scalars(select(Machine))}
        self.builds = builds_frame(session)
        self.pages = 0

    # -- helpers -------------------------------------------------------------------------------------
    def page(self, rel: str, template: str, **ctx: Any) -> None:
        html = self.env.get_template(template).render(root="../" * rel.count("/"), **ctx)
        target = self.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(html)
        self.pages += 1

    def latest_per_model(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sort_values(["run_id", "result_id"]).groupby("model", sort=False).tail(1)

    def _latest_label(self) -> str:
        if not len(self.runs):
            return "none"
        last = self.runs.iloc[-1]
        return f"run {int(last['run_id'])} ({str(last['started_at'])[:16]})"

    def pairs(self) -> list[tuple[str, str, str]]:
        """(machine fingerprint, baseline, candidate): builds measured on one machine, in first-seen order."""
        pairs = []
        for fp, rows in self.results.groupby("machine_fingerprint", sort=False):
            names = list(dict.fromkeys(rows.sort_values("result_id")["build"]))
            pairs += [(str(fp), a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        return pairs

    def comparison(self, fp: str, baseline: str, candidate: str) -> Verdict:
        on_machine = self.results[self.results["machine_fingerprint"] == fp]
        base = self.latest_per_model(on_machine[on_machine["build"] == baseline])
        cand = self.latest_per_model(on_machine[on_machine["build"] == candidate])
        host = str(on_machine["machine"].iloc[0])
        sides = [
            Side(b, tuple(int(x) for x in f["result_id"]), tuple(sorted({int(x) for x in f["run_id"]})), fp, host)
            for b, f in ((baseline, base), (candidate, cand))
        ]
        table = compare_frames(base, cand)
        return evaluate(Comparison(sides[0], sides[1], False, table), self.gate)

    # -- pages ---------------------------------------------------------------------------------------
    def build(self) -> None:
        if self.out.exists():
            shutil.rmtree(self.out)
        (self.out / "data").mkdir(parents=True)
        shutil.copy(TEMPLATES / "style.css", self.out / "style.css")
        # bootstrap CIs for every pair: in parallel too
        verdicts = dict(v for _, v in _in_parallel(self, [("verdict", pair) for pair in self.pairs()]))
        self.overview(verdicts)
        self.verdicts = verdicts
        logs = all_logs(self.session)
        with_logs = self.results.assign(
            log=[logs.get(int(i), "") for i in self.results["result_id"]], **_display_columns(self.results)
        )
        self.by_run = {int(k): v for k, v in with_logs.groupby("run_id", sort=True)}
        self.by_model = {
            str(k): v.merge(self.runs[["run_id", "started_at"]], on="run_id", suffixes=("", "_run"))
            for k, v in self.results.groupby("model", sort=False)
        }
        # the independent pages and plots are drawn in parallel processes (fork shares the frames)
        work: list[tuple[str, Any]] = [("compare", k) for k in verdicts]
        work += [("history", m) for m in self.by_model]
        work += [("run", r) for r in self.by_run]
        outcomes = _in_parallel(self, work)
        self.pages += sum(o for kind, o in outcomes if kind in ("run", "compare"))
        self.history([o for kind, o in outcomes if kind == "history"])

    def overview(self, verdicts: dict[tuple[str, str, str], Verdict]) -> None:
        machines = []
        for fp, runs in self.runs.groupby("machine_fingerprint", sort=False):
            latest = runs.sort_values("run_id").iloc[-1]
            on_machine = self.results[self.results["machine_fingerprint"] == fp]
            # the newest result of every build × model: a ladder measured size by size shows whole
            newest = on_machine.sort_values("result_id").groupby(["build", "model"], sort=False).tail(1)
            builds_per_run = on_machine.groupby("run_id")["build"].nunique()
            multi = builds_per_run[builds_per_run > 1]
            gates = []
            if len(multi):
                gate_run = int(multi.index.max())
                names = list(dict.fromkeys(on_machine[on_machine["run_id"] == gate_run]["build"]))
                gates = [
                    (names[0], b, verdicts[(str(fp), names[0], b)])
                    for b in names[1:]
                    if (str(fp), names[0], b) in verdicts
                ]
            machines.append(
                {
                    "fingerprint": fp,
                    "host": latest["machine"],
                    "gpu": None if render.missing(latest["gpu"]) else latest["gpu"],
                    "run": latest,
                    "runs": len(runs),
                    "matrix": self.matrix(newest.sort_values("result_id")),
                    "gates": gates,
                    "gate_run": int(multi.index.max()) if len(multi) else None,
                }
            )
        _json(
            self.out / "data" / "overview.json",
            {
                "machines": [
                    {
                        "fingerprint": m["fingerprint"],
                        "latest_run": int(m["run"]["run_id"]),
                        "matrix": m["matrix"]["cells"],
                    }
                    for m in machines
                ]
            },
        )
        self.page(
            "index.html",
            "overview.html.j2",
            machines=machines,
            pairs=sorted(verdicts),
            title=f"perfgate — overview, runs up to {self._latest_label()}",
            data="data/overview.json",
        )

    def matrix(self, res: pd.DataFrame) -> dict[str, Any]:
        builds = list(dict.fromkeys(res["build"]))
        models = list(dict.fromkeys(res["model"]))
        layers = res["layers_txt"] if "layers_txt" in res else _display_columns(res)["layers_txt"]
        cells = {}
        # plain lists, not itertuples: a thousand run pages each draw a matrix
        for build, model, status, reason, offload in zip(
            res["build"].tolist(),
            res["model"].tolist(),
            res["status"].tolist(),
            res["reason"].tolist(),
            list(layers),
            strict=True,
        ):
            cells[f"{build}\x1f{model}"] = {
                "status": status,
                "reason": reason or "",
                "offload": None if offload == "–" else offload,
                "build": build,
                "model": model,
            }
        grid = [[cells.get(f"{b}\x1f{m}") for m in models] for b in builds]
        return {"builds": builds, "models": models, "grid": grid, "cells": list(cells.values())}

    def compare_page(self, key: tuple[str, str, str], verdict: Verdict) -> None:
        fp, baseline, candidate = key
        runs = ", ".join(map(str, verdict.comparison.candidate.run_ids))
        name = f"compare/{slug(fp)}__{slug(baseline)}__{slug(candidate)}"
        table = verdict.comparison.table
        on_machine = self.results[self.results["machine_fingerprint"] == fp]
        side = {
            b: self.latest_per_model(on_machine[on_machine["build"] == b]).set_index("model")
            for b in (baseline, candidate)
        }
        failed = {(c.model, c.metric) for c in verdict.failures}
        rows = []
        for model in dict.fromkeys(table["model"]):
            metrics = table[table["model"] == model].set_index("metric")
            b = side[baseline].loc[model] if model in side[baseline].index else None
            c = side[candidate].loc[model] if model in side[candidate].index else None
            rows.append(
                {
                    "model": model,
                    "metrics": metrics.to_dict(orient="index"),
                    "base": b,
                    "cand": c,
                    "failed": {m for (mo, m) in failed if mo == model},
                }
            )
        self.compare_plot(table, baseline, candidate, self.out / f"{name}.svg")
        _json(
            self.out / "data" / f"{Path(name).name}.json",
            {
                "baseline": baseline,
                "candidate": candidate,
                "machine": fp,
                "passed": verdict.passed,
                "rows": render.records(table),
                "checks": [c.__dict__ for c in verdict.checks],
            },
        )
        self.page(
            f"{name}.html",
            "compare.html.j2",
            verdict=verdict,
            rows=rows,
            baseline=baseline,
            candidate=candidate,
            machine=fp,
            plot=f"{Path(name).name}.svg",
            title=f"perfgate — {candidate} vs {baseline} (runs {runs})",
            data=f"data/{Path(name).name}.json",
        )

    def compare_plot(self, table: pd.DataFrame, baseline: str, candidate: str, path: Path) -> None:
        models = list(dict.fromkeys(table["model"]))
        fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
        width = 0.38
        for ax, metric in zip(axes[:2], ("pp_ts", "tg_ts"), strict=True):
            t = table[table["metric"] == metric].set_index("model").reindex(models)
            xs = list(range(len(models)))
            ax.bar([x - width / 2 for x in xs], t["baseline"], width, label=baseline, color="#8da0cb")
            ax.bar([x + width / 2 for x in xs], t["candidate"], width, label=candidate, color="#fc8d62")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{'prompt' if metric == 'pp_ts' else 'generation'} t/s (log)")
            ax.set_xticks(list(xs), models, rotation=30, ha="right")
        axes[0].legend(fontsize=7)
        ax = axes[2]
        for i, metric in enumerate(("pp_ts", "tg_ts")):
            t = table[table["metric"] == metric].set_index("model").reindex(models)
            offsets = [x + (i - 0.5) * 0.3 for x in range(len(models))]
            low = (t["ratio"] - t["ci_low"]).clip(lower=0).fillna(0)
            high = (t["ci_high"] - t["ratio"]).clip(lower=0).fillna(0)
            ax.errorbar(offsets, t["ratio"], yerr=[low, high], fmt="o", capsize=3, label=metric)
        ax.axhline(1.0, color="grey", lw=0.8)
        for metric, style in (("pp_ts", ":"), ("tg_ts", "--")):
            limit = getattr(self.gate.thresholds, metric)
            if limit is not None:
                ax.axhline(1 + limit / 100, color="#d62728", lw=0.8, ls=style)
        ax.set_title("candidate / baseline, 95% CI")
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        ax.legend(fontsize=7)
        _svg(fig, path)

    def history_plot(self, model: str) -> dict[str, Any]:
        rows = self.by_model[model]
        fig, axes = plt.subplots(1, 2, figsize=(10, 2.4))
        for ax, metric, std in zip(axes, ("pp_ts", "tg_ts"), ("pp_ts_std", "tg_ts_std"), strict=True):
            for build, b in rows.groupby("build", sort=False):
                b = b.sort_values("started_at_run")
                good = _binned(b[b["status"] == STATUS_OK], metric, std)
                (line,) = ax.plot(good["x"], good["y"], marker="." if len(good) < 100 else None, lw=1, label=str(build))
                ax.fill_between(
                    good["x"], good["y"] - good["s"], good["y"] + good["s"], color=line.get_color(), alpha=0.15, lw=0
                )
                bad = b[b["status"] != STATUS_OK]
                if len(bad):
                    ax.plot(bad["started_at_run"], [ax.get_ylim()[0]] * len(bad), "x", color="#d62728", ms=7)
            ax.set_title(f"{model}: {'prompt' if metric == 'pp_ts' else 'generation'} t/s (× = failed load)")
            ax.tick_params(axis="x", labelrotation=20, labelsize=7)
        axes[0].legend(fontsize=7)
        file = f"history/{slug(model)}.svg"
        _svg(fig, self.out / file)
        return {
            "model": model,
            "plot": file,
            "runs": int(rows["run_id"].nunique()),
            "failed": int((rows["status"] != STATUS_OK).sum()),
        }

    def history(self, entries: list[dict[str, Any]]) -> None:
        ok = self.results
        _frame_json(
            self.out / "data" / "history.json",
            ok[["run_id", "build", "model", "status", "pp_ts", "pp_ts_std", "tg_ts", "tg_ts_std", "started_at"]],
        )
        self.page(
            "history.html",
            "history.html.j2",
            entries=entries,
            title=f"perfgate — history, runs up to {self._latest_label()}",
            data="data/history.json",
        )

    def run_page(self, run_id: int, res: pd.DataFrame) -> None:
        run = self.run_by_id.loc[run_id]
        builds = self.builds[self.builds["name"].isin(set(res["build"]))] if len(self.builds) else self.builds
        _frame_json(self.out / "data" / f"run-{run_id}.json", res[[*RESULT_COLUMNS, "log"]])
        self.page(
            f"run/{run_id}.html",
            "run.html.j2",
            run=run,
            run_id=run_id,
            results=res[_RUN_ROW].astype(object).itertuples(),
            builds=render.records(builds),
            machine=self.machines[int(run["machine_id"])],
            load_matrix=self.matrix(res),
            title=f"perfgate — run {run_id} ({run['machine']}, {run['started_at']})",
            data=f"data/run-{run_id}.json",
        )


HISTORY_POINTS = 150


def _display_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Formatted once for all results: a thousand run pages then only place strings."""

    def col(name: str) -> list[Any]:
        return frame[name].tolist()

    return {
        "layers_txt": [
            ("–" if render.missing(t) else f"{o}/{t}")
            for o, t in zip(col("layers_offloaded"), col("layers_total"), strict=True)
        ],
        "pp_txt": [render.fmt_ts(m, s) for m, s in zip(col("pp_ts"), col("pp_ts_std"), strict=True)],
        "tg_txt": [render.fmt_ts(m, s) for m, s in zip(col("tg_ts"), col("tg_ts_std"), strict=True)],
        "buffers_txt": [
            " / ".join(render.human_bytes(v) for v in vs)
            for vs in zip(col("model_buf_bytes"), col("kv_bytes"), col("compute_bytes"), strict=True)
        ],
        "rss_txt": [render.human_bytes(v) for v in col("rss_peak_bytes")],
        "gpu_txt": [
            f"{render.human_bytes(u)} / {render.human_bytes(b)}"
            for u, b in zip(col("gpu_used_bytes"), col("device_budget_bytes"), strict=True)
        ],
        "file_txt": [render.human_bytes(v) for v in col("model_bytes")],
        "load_txt": ["–" if render.missing(v) else f"{v:.3f}" for v in col("load_s")],
        "exit_txt": [
            " ".join(str(x) for x in (e, g) if not render.missing(x))
            for e, g in zip(col("exit_code"), col("signal"), strict=True)
        ],
    }


# what a run page's rows show: plain Python values only (itertuples over nullable integers is slow)
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


_ACTIVE: SiteBuilder | None = None


def _work(item: tuple[str, Any]) -> tuple[str, Any]:
    assert _ACTIVE is not None
    kind, key = item
    if kind == "verdict":
        return kind, (key, _ACTIVE.comparison(*key))
    if kind == "history":
        return kind, _ACTIVE.history_plot(key)
    if kind == "compare":
        _ACTIVE.compare_page(key, _ACTIVE.verdicts[key])
        return kind, 1
    _ACTIVE.run_page(key, _ACTIVE.by_run[key])
    return kind, 1


def _in_parallel(builder: SiteBuilder, work: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    global _ACTIVE
    _ACTIVE = builder
    workers = min(os.cpu_count() or 1, 8)
    try:
        if workers < 2 or len(work) < 4 or "fork" not in mp.get_all_start_methods() or sys.platform == "darwin":
            return [_work(item) for item in work]
        with mp.get_context("fork").Pool(workers) as pool:
            return pool.map(_work, work, chunksize=max(1, len(work) // (workers * 4)))
    finally:
        _ACTIVE = None


def _binned(good: pd.DataFrame, metric: str, std: str) -> pd.DataFrame:
    """At most HISTORY_POINTS points per line: a thousand nights are binned (mean of means, mean noise)."""
    frame = pd.DataFrame(
        {"x": good["started_at_run"], "y": good[metric].astype(float), "s": good[std].astype(float).fillna(0)}
    )
    if len(frame) <= HISTORY_POINTS:
        return frame
    bins = pd.Series(range(len(frame)), index=frame.index) * HISTORY_POINTS // len(frame)
    return frame.groupby(bins.values).agg({"x": "median", "y": "mean", "s": "mean"})


def _frame_json(path: Path, frame: pd.DataFrame) -> None:
    """pandas' own JSON writer: fast enough for a thousand run pages of a hundred results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_json(path, orient="records", date_format="iso")


def build_site(store: Store, out: Path, gate: GateConfig | None = None) -> SiteReport:
    start = time.perf_counter()
    with store.session() as session:
        builder = SiteBuilder(session, out, gate or GateConfig())
        builder.build()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return SiteReport(out, builder.pages, size, time.perf_counter() - start)

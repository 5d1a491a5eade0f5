"""History pages: one model on one machine across runs, per metric and build, with its change points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.metrics import METRICS, Status
from bench.report import render
from bench.report.site.common import data_script, floats, json_text, plain
from bench.report.site.data import SiteData
from bench.report.site.output import content_key, file_key
from bench.report.site.state import BuilderState


class HistoryPages(BuilderState):
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
                    "y": floats(b[metric]),
                    "ci": floats(b[f"{metric}_ci95"]) if f"{metric}_ci95" in b else [None] * len(b),
                    "roofline": floats(b["tg_roofline_pct"]) if metric == "tg_ts" else None,
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
        text = json_text(payload)
        self.out.write(f"data/{stem}.json", text, key)
        self.out.write(f"data/{stem}.js", data_script(text), key)
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

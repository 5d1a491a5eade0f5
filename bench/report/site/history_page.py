"""History pages: one model on one machine across runs, per metric and build, with its change points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.metrics import METRICS, Status
from bench.report import render
from bench.report.site import data as site_data
from bench.report.site.common import data_script, floats, json_text, plain
from bench.report.site.data import SiteData
from bench.report.site.output import content_key, file_key
from bench.report.site.state import BuilderState

# a history's points are written in blocks of this many of its machine's runs: one more nightly rewrites the
# newest block only (and the small head naming the blocks), not a thousand runs of points
HISTORY_BLOCK = 128


@dataclass(frozen=True)
class HistoryBlock:
    """A block of a history's points: its file's stem, its key, and the runs it shows when it is to be written
    (None: kept from the previous site)."""

    name: str
    key: str
    runs: tuple[int, ...] | None


class HistoryPages(BuilderState):
    def history_rel(self, fp: str, model: str) -> str:
        return f"history/{file_key(fp, model)}.html"

    def history_head(
        self, fp: str, model: str, blocks: list[str], marks: pd.DataFrame, ticks: dict[str, list[Any]]
    ) -> dict[str, Any]:
        """What a history's chart needs besides its points: the metrics, its change points (`marks`), axis ticks
        and the names of its point blocks (site.js joins them, in order, into one line per build)."""
        run_x = self.data.run_x
        return {
            "chart": "history",
            "machine": fp,
            "host": self.hosts.get(fp, ""),
            "model": model,
            "series": {
                metric: {"label": spec.label, "unit": spec.unit, "higher_is_better": spec.higher_is_better}
                for metric, spec in METRICS.items()
            },
            "blocks": blocks,
            "changes": [
                {
                    **plain(c),
                    "x_before": run_x.get(int(c["run_before"])) if not render.missing(c["run_before"]) else None,
                    "x_after": run_x.get(int(c["run_after"])) if not render.missing(c["run_after"]) else None,
                }
                for c in marks.to_dict(orient="records")
            ],
            "ticks": ticks,
        }

    def history_block(self, name: str, rows: pd.DataFrame) -> dict[str, Any]:
        """One block of a history's points: per build line (in the order builds first appear), each point's
        position, status, run, commit and date once, and its value and 95% CI per metric."""
        # each column converted once for the block, then picked per build line (a groupby per block and a
        # conversion per line and metric cost a fifth of a full build's histories)
        of_build: dict[str, list[int]] = {}
        for i, build in enumerate(rows["build"].tolist()):
            of_build.setdefault(str(build), []).append(i)
        xs, runs = rows["x"].tolist(), [int(r) for r in rows["run_id"].tolist()]
        status = [str(v) for v in rows["status"].tolist()]
        commit = [str(v) for v in rows["commit"].tolist()]
        y = {metric: floats(rows[metric]) for metric in METRICS}
        ci = {m: floats(rows[f"{m}_ci95"]) for m in METRICS if f"{m}_ci95" in rows}
        roofline = floats(rows["tg_roofline_pct"])
        lines = []
        for build, at in of_build.items():
            line_runs = [runs[i] for i in at]
            line_status = [status[i] for i in at]
            lines.append(
                {
                    "build": build,
                    "x": [xs[i] for i in at],
                    "status": line_status,
                    "ok": [v == Status.OK for v in line_status],
                    "run": line_runs,
                    "commit": [commit[i] for i in at],
                    "date": [self.run_date.get(r, "") for r in line_runs],
                    "y": {metric: [values[i] for i in at] for metric, values in y.items()},
                    "ci": {metric: [values[i] for i in at] for metric, values in ci.items()},
                    "roofline": [roofline[i] for i in at],
                }
            )
        return {"chart": "history-block", "block": name, "lines": lines}

    def history_blocks(self, fp: str, model: str, rows: pd.DataFrame) -> tuple[HistoryBlock, ...]:
        """A history's point blocks, in order, each keyed by what it shows; those kept from the previous site are
        linked over here, those to write name their runs (whose rows are read for them)."""
        stem = f"history-{Path(self.history_rel(fp, model)).stem}"
        rows = rows.sort_values(["x", "result_id"])
        xs, ids, runs = rows["x"].tolist(), rows["result_id"].tolist(), rows["run_id"].tolist()
        bandwidth = float(rows["bandwidth_gbs"].fillna(0).max())  # the roofline's denominator
        at: dict[int, list[int]] = {}
        for position, x in enumerate(xs):
            at.setdefault(x // HISTORY_BLOCK, []).append(position)
        blocks = []
        for number, positions in at.items():
            name = f"{stem}-{number}"
            results = [self.rkey[ids[p]] for p in positions]
            key = content_key(self.version, fp, model, number, results, [xs[p] for p in positions], bandwidth)
            kept = all(self.out.unchanged(f"data/{name}{ext}", key) for ext in (".js", ".json"))
            shown = None if kept else tuple(sorted({int(runs[p]) for p in positions}))
            blocks.append(HistoryBlock(name, key, shown))
        return tuple(blocks)

    def history_page(self, fp: str, model: str, rows: pd.DataFrame, blocks: tuple[HistoryBlock, ...]) -> dict[str, Any]:
        rel = self.history_rel(fp, model)
        stem = f"history-{Path(rel).stem}"
        written = [block for block in blocks if block.runs is not None]
        if written:
            shown = {r for block in written for r in block.runs or ()}
            mine = site_data.whole_rows(self.data, rows[rows["run_id"].isin(shown)])
            # only the columns a block shows: each block's pick then copies a tenth of the whole row
            mine = mine[[c for c in _BLOCK_COLUMNS if c in mine.columns]].sort_values(["x", "result_id"])
            for block in written:
                text = json_text(self.history_block(block.name, mine[mine["run_id"].isin(block.runs or ())]))
                self.out.write(f"data/{block.name}.json", text, block.key)
                self.out.write(f"data/{block.name}.js", data_script(text), block.key)
        changes = self.data.changes
        marks = changes[(changes["machine_fingerprint"] == fp) & (changes["model"] == model)]
        entry = {
            "machine": fp,
            "host": self.hosts.get(fp, ""),
            "model": model,
            "href": rel,
            "runs": int(rows["run_id"].nunique()),
            "failed": int((rows["status"] != Status.OK).sum()),
            "changes": len(marks),
        }
        ticks = _ticks(self.data, fp)
        names = [block.name for block in blocks]
        key = content_key(
            self.version, entry, [(b.name, b.key) for b in blocks], plain(marks.to_dict(orient="records")), ticks
        )
        if all(self.out.unchanged(r, key) for r in (rel, f"data/{stem}.js", f"data/{stem}.json")):
            return entry
        text = json_text(self.history_head(fp, model, names, marks, ticks))
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
            scripts=["plotly.min.js", f"data/{stem}.js", *(f"data/{name}.js" for name in names), "site.js"],
        )
        return entry


# what history_block reads of a result (and the sort's tie-break)
_BLOCK_COLUMNS = (
    *("result_id", "x", "build", "run_id", "status", "commit", "tg_roofline_pct"),
    *METRICS,
    *(f"{m}_ci95" for m in METRICS),
)


def _ticks(data: SiteData, fp: str) -> dict[str, list[Any]]:
    """At most 24 labelled positions on a machine's axis: the nightly's date."""
    runs = data.runs[data.runs["machine_fingerprint"] == fp]
    xs = [data.run_x[int(r)] for r in runs["run_id"]]
    dates = [str(d)[:10] for d in runs["started_at"]]
    step = max(1, len(xs) // 24)
    return {"x": xs[::step], "text": dates[::step]}

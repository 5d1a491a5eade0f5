"""The overview (index.html) and the history index: what the newest run of each machine says."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench.report import render
from bench.report.site import data as site_data
from bench.report.site.common import json_text
from bench.report.site.data import Pair

if TYPE_CHECKING:
    from bench.report.site.pages import Builder


def history_index(b: Builder, entries: list[dict[str, Any]]) -> None:
    b.render(
        "history.html",
        "history_index.html.j2",
        "",
        entries=sorted(entries, key=lambda e: (e["host"], e["model"])),
        title="perfgate — history per machine and model",
        data=None,
    )


def overview(b: Builder, pairs: list[Pair], payloads: dict[str, dict[str, Any]], entries: list[dict[str, Any]]) -> None:
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
                {"pair": pair, "href": b.pair_rel(pair), "outcome": payload["verdict"], "cells": cells_of(payload)}
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


def cells_of(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
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

"""Reading nightly history: change points."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from bench.cli.app import DbOption, app, check_format, console
from bench.errors import ConfigError
from bench.metrics import METRIC_NAMES

if TYPE_CHECKING:
    import pandas as pd


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Change points for people: what changed, between which builds, commits and runs."""
    import pandas as pd

    from bench.report import render

    def change(r: pd.Series) -> str:
        if r["kind"] == "status":
            return f"{r['status_before']} → {r['status_after']}"
        if not render.missing(r["reference"]):
            return f"{r['shift_pct']:+.1f} % (×{r['value_before']:.3f} → ×{r['value_after']:.3f} of {r['reference']})"
        before, after = (
            render.fmt_metric(r["metric"], r["value_before"]),
            render.fmt_metric(r["metric"], r["value_after"]),
        )
        return f"{r['shift_pct']:+.1f} % ({before} → {after})"

    def commits(r: pd.Series) -> str:
        if render.missing(r["commit_before"]) or render.missing(r["commit_after"]):
            return "–"
        return f"{r['commit_before'][:12]}..{r['commit_after'][:12]}"

    return pd.DataFrame(
        {
            "model": frame["model"],
            "build line": frame["build"],
            "metric": frame["metric"],
            "change": frame.apply(change, axis=1),
            "": ["REGRESSION" if bad else "" for bad in frame["regression"]],
            "builds": frame["build_before"] + " → " + frame["build_after"],
            "commits": frame.apply(commits, axis=1),
            "runs": frame["run_before"].astype(str) + " → " + frame["run_after"].astype(str),
            "machine": frame["machine"],
            "new": ["new" if render.missing(t) else "" for t in frame["first_reported_at"]],
        }
    )


@app.command("changes")
def changes_cmd(
    machine: Annotated[str | None, typer.Option(help="hostname or machine fingerprint")] = None,
    model: Annotated[str | None, typer.Option(help="model name")] = None,
    metric: Annotated[str | None, typer.Option(help="|".join(METRIC_NAMES))] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="a build measured in the same runs: series are ratios to it (machine drift cancels)"),
    ] = None,
    new: Annotated[bool, typer.Option("--new", help="only change points not listed by --new before")] = False,
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|json")] = "table",
) -> None:
    """Where each build line's nightly series shifted, and where its load status changed (stored)."""
    from bench.analysis.changes import refresh
    from bench.report import render
    from bench.store.changes import change_points_frame, mark_reported
    from bench.store.db import open_store

    check_format(fmt, ("table", "json"))
    if metric is not None and metric not in METRIC_NAMES:
        raise ConfigError(f"--metric: expected one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    # an existing store only (it gains its change points); a mistyped --db must not create one
    with open_store(db, write=False) as store, store.session() as session:
        refresh(session, machine=machine, model=model, reference=reference)
        frame = change_points_frame(
            session, machine=machine, model=model, metric=metric, reference=reference, new_only=new
        )
        if new:
            mark_reported(session, frame["id"])
    if fmt == "json":
        sys.stdout.write(render.to_json(frame) + "\n")
    elif frame.empty:
        console().print("no new change points" if new else "no change points")
    else:
        console().print(render.frame_table(_display(frame), f"{len(frame)} change point(s)"))

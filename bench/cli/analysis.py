"""Judging builds: compare, gate, import."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, app, check_format, console
from bench.defaults import DEFAULT_CONFIG
from bench.errors import ConfigError
from bench.escape import json_text, markdown_text


@app.command("compare")
def compare_cmd(
    baseline: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    candidate: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|json|markdown|csv")] = "table",
    allow_cross_machine: Annotated[bool, typer.Option(help="compare runs from different machines")] = False,
    allow_mixed_settings: Annotated[
        bool, typer.Option(help="compare results measured with different suite settings")
    ] = False,
) -> None:
    """Per model and metric: baseline, candidate, ratio with 95% CI, Mann-Whitney p-value, load status."""
    from bench.analysis.compare import compare
    from bench.report import render
    from bench.store.db import open_store

    check_format(fmt, ("table", "json", "markdown", "csv"))
    with open_store(db, write=False) as store, store.session() as session:
        result = compare(
            session,
            baseline,
            candidate,
            allow_cross_machine=allow_cross_machine,
            allow_mixed_settings=allow_mixed_settings,
        )
    table = result.table.drop(columns=["log_ratios"])
    title = f"{result.candidate.label} vs {result.baseline.label}" + (
        " [CROSS-MACHINE]" if result.cross_machine else ""
    )
    if result.cross_engine:
        title += f" [CROSS-ENGINE {result.engines[1]} vs {result.engines[0]}]"
    if fmt == "json":
        payload = {
            "baseline": result.baseline.__dict__,
            "candidate": result.candidate.__dict__,
            "cross_machine": result.cross_machine,
            "engines": {"baseline": result.engines[0], "candidate": result.engines[1]},
            "mixed_settings": list(result.mixed_settings),
            "rows": render.records(table),
        }
        sys.stdout.write(json_text(payload, indent=1) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render.to_csv(table))
    elif fmt == "markdown":
        sys.stdout.write(
            f"### {markdown_text(title)}\n\n" + render.markdown_table(render.compare_display(result.table)) + "\n"
        )
    else:
        console().print(render.frame_table(render.compare_display(result.table), title))


@app.command("gate")
def gate_cmd(
    baseline: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    candidate: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    db: DbOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    fmt: Annotated[str, typer.Option("--format", "-f", help="markdown|json (stdout)")] = "markdown",
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the verdict as JSON here")] = None,
    junit_path: Annotated[Path | None, typer.Option("--junit", help="write JUnit XML here")] = None,
    summary: Annotated[Path | None, typer.Option(help="also write the markdown summary here")] = None,
    allow_cross_machine: Annotated[bool, typer.Option(help="compare runs from different machines")] = False,
    allow_mixed_settings: Annotated[
        bool, typer.Option(help="compare results measured with different suite settings")
    ] = False,
    measure: Annotated[
        bool, typer.Option("--measure", help="add ABBA rounds for inconclusive (build, model) pairs until sure")
    ] = False,
    budget_s: Annotated[float, typer.Option("--budget-s", help="time --measure may spend adding rounds")] = 600.0,
) -> None:
    """Release verdict: exit 0 pass, 1 fail (regression shown), 3 inconclusive (not shown either way), 2 usage error."""
    from bench.analysis.gate import junit, markdown, to_json, write_step_summary
    from bench.analysis.sampling import gate_until_sure
    from bench.store.db import open_store

    check_format(fmt, ("markdown", "json"))
    if budget_s < 0 or not math.isfinite(budget_s):
        raise ConfigError(f"--budget-s: expected a number of seconds ≥ 0, got {budget_s}")
    with open_store(db, write=measure) as store:
        verdict, looks = gate_until_sure(
            store,
            baseline,
            candidate,
            config,
            allow_cross_machine=allow_cross_machine,
            allow_mixed_settings=allow_mixed_settings,
            budget_s=budget_s if measure else None,
        )
    note = None
    if measure:
        spent = sum(look.seconds for look in looks)
        note = (
            f"Sampled until sure: {len(looks)} ABBA round(s) added in {spent:.0f} s "
            f"(runs {', '.join(str(look.run_id) for look in looks) or 'none'}; budget {budget_s:g} s)."
        )
    text = markdown(verdict, note)
    measured = {"measured": {"rounds": len(looks), "runs": [look.run_id for look in looks]}} if measure else None
    document = to_json(verdict, measured)
    sys.stdout.write(document if fmt == "json" else text)
    write_step_summary(text)
    if summary is not None:
        summary.write_text(text)
    if json_path is not None:
        json_path.write_text(document)
    if junit_path is not None:
        junit(verdict, junit_path)
    raise typer.Exit(verdict.exit_code)


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="result file")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="llama-bench|pytest-benchmark|perfgate")] = "llama-bench",
    build: Annotated[str | None, typer.Option(help="the build that produced the file")] = None,
    db: DbOption = None,
    machine_from_file: Annotated[bool, typer.Option(help="record the machine the file names, not this one")] = False,
) -> None:
    """Import foreign results (llama-bench -o json/jsonl, pytest-benchmark JSON, perfgate JSON)."""
    from bench.importers import import_file
    from bench.store.db import open_store

    with open_store(db) as store, store.session() as session:
        ids = import_file(session, file, fmt, build, machine_here=not machine_from_file)
    console().print(f"imported {file} as run(s) {', '.join(map(str, ids))}" if ids else f"{file}: already imported")

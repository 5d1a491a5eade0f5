"""Judging builds: compare, gate, import."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from bench import render
from bench.cli.app import ConfigOption, DbOption, app, check_format, console
from bench.config import DEFAULT_CONFIG, load_gate
from bench.store.db import open_store


@app.command("compare")
def compare_cmd(
    baseline: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    candidate: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|json|markdown|csv")] = "table",
    allow_cross_machine: Annotated[bool, typer.Option(help="compare runs from different machines")] = False,
) -> None:
    """Per model and metric: baseline, candidate, ratio with 95% CI, Mann-Whitney p-value, load status."""
    from bench.compare import compare

    check_format(fmt, ("table", "json", "markdown", "csv"))
    with open_store(db) as store, store.session() as session:
        result = compare(session, baseline, candidate, allow_cross_machine=allow_cross_machine)
    title = f"{result.candidate.label} vs {result.baseline.label}" + (
        " [CROSS-MACHINE]" if result.cross_machine else ""
    )
    if fmt == "json":
        payload = {
            "baseline": result.baseline.__dict__,
            "candidate": result.candidate.__dict__,
            "cross_machine": result.cross_machine,
            "rows": render.records(result.table),
        }
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render.to_csv(result.table))
    elif fmt == "markdown":
        sys.stdout.write(f"### {title}\n\n" + render.markdown_table(render.compare_display(result.table)) + "\n")
    else:
        console.print(render.frame_table(render.compare_display(result.table), title))


@app.command("gate")
def gate_cmd(
    baseline: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    candidate: Annotated[str, typer.Option(help="BUILD or BUILD@RUN")],
    db: DbOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    junit_path: Annotated[Path | None, typer.Option("--junit", help="write JUnit XML here")] = None,
    summary: Annotated[Path | None, typer.Option(help="also write the markdown summary here")] = None,
    allow_cross_machine: Annotated[bool, typer.Option(help="compare runs from different machines")] = False,
) -> None:
    """Release verdict: exit 0 pass, 1 fail, 2 usage error."""
    from bench.compare import compare
    from bench.gate import evaluate, junit, markdown, write_step_summary

    gate = load_gate(config)
    with open_store(db) as store, store.session() as session:
        comparison = compare(session, baseline, candidate, allow_cross_machine=allow_cross_machine)
    verdict = evaluate(comparison, gate)
    text = markdown(verdict)
    sys.stdout.write(text)
    write_step_summary(text)
    if summary is not None:
        summary.write_text(text)
    if junit_path is not None:
        junit(verdict, junit_path)
    raise typer.Exit(0 if verdict.passed else 1)


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

    with open_store(db) as store, store.session() as session:
        ids = import_file(session, file, fmt, build, machine_here=not machine_from_file)
    console.print(f"imported {file} as run(s) {', '.join(map(str, ids))}" if ids else f"{file}: already imported")

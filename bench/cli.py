"""Command line: parse, call one library function, print, return an exit code. Nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bench import render
from bench.config import DEFAULT_CONFIG, load_config, load_gate
from bench.diagnose import classify
from bench.errors import ConfigError, PerfgateError
from bench.store.db import open_store
from bench.store.queries import attach_logs, results_frame, run_or_latest, runs_frame
from bench.synth import SynthSpec, synthesize

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="perfgate: do llama.cpp builds still load every model fully offloaded, at the same speed?",
)
console = Console(width=None if sys.stdout.isatty() else 160)

DbOption = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path (default: $PERFGATE_DB or db/perfgate.sqlite)")
]
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="models.yaml")]
FormatOption = Annotated[str, typer.Option("--format", "-f", help="table|json|csv")]


def _check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise ConfigError(f"--format: expected one of {', '.join(allowed)}, got {fmt!r}")


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    db: DbOption = None,
    resume: Annotated[
        int | None, typer.Option("--resume", help="finish run RUN_ID: measure only what is missing")
    ] = None,
    interleave: Annotated[
        bool, typer.Option(help="alternate builds in rounds (A B, B A, …) so drift hits all")
    ] = False,
    rounds: Annotated[int | None, typer.Option(help="rounds for --interleave (default: repetitions)")] = None,
    force: Annotated[bool, typer.Option("--force", help="run models the fit check would skip")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Measure every build × model of the config into the store."""
    from bench.runner import run_matrix

    cfg = load_config(config)
    with open_store(db) as store:
        run_id = run_matrix(
            store, cfg, resume_run_id=resume, interleave=interleave, rounds=rounds, force=force, show_progress=not quiet
        )
        with store.session() as session:
            frame = results_frame(session, [run_id], with_samples=False)
    if not quiet:
        console.print(render.results_table(frame, f"run {run_id}"))
    console.print(f"run {run_id}: {len(frame)} results, {int((frame['status'] == 'ok').sum())} ok")


@app.command()
def results(
    db: DbOption = None,
    run_id: Annotated[int | None, typer.Option("--run", help="run id (default: latest)")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="every run")] = False,
    fmt: FormatOption = "table",
    logs: Annotated[bool, typer.Option("--logs", help="include each result's load log (json/csv)")] = False,
) -> None:
    """Show stored results."""
    _check_format(fmt, ("table", "json", "csv"))
    with open_store(db) as store, store.session() as session:
        ids = None if all_runs else [run_or_latest(session, run_id)]
        frame = results_frame(session, ids)
        if logs:
            frame = attach_logs(session, frame)
    if fmt == "json":
        sys.stdout.write(render.to_json(frame) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render.to_csv(frame))
    else:
        console.print(render.results_table(frame, "results" if ids is None else f"run {ids[0]}"))


@app.command()
def runs(db: DbOption = None, fmt: FormatOption = "table") -> None:
    """List runs."""
    _check_format(fmt, ("table", "json", "csv"))
    with open_store(db) as store, store.session() as session:
        frame = runs_frame(session).drop(columns=["settings", "machine_id"])
    if fmt == "json":
        sys.stdout.write(render.to_json(frame) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render.to_csv(frame))
    else:
        console.print(frame.to_string(index=False))


@app.command()
def synth(
    shape: Annotated[str, typer.Option(help="tiny|small|7B|13B|34B|70B")],
    quant: Annotated[str, typer.Option(help="F16|Q8_0|Q4_0")] = "Q4_0",
    out: Annotated[Path | None, typer.Option(help="output file (default models/<shape>-<quant>.gguf)")] = None,
    seed: int = 0,
) -> None:
    """Write a deterministic synthetic llama GGUF (skips an identical existing file)."""
    spec = SynthSpec(shape, quant, seed)
    target = out or Path("models") / f"{shape}-{quant}.gguf"
    wrote = synthesize(spec, target)
    console.print(f"{'wrote' if wrote else 'up to date'}: {target} ({target.stat().st_size / 1e6:.1f} MB)")


@app.command("classify-log")
def classify_log(
    files: Annotated[list[Path], typer.Argument(help="load logs")],
    expect_gpu: Annotated[bool, typer.Option(help="the run asked for GPU offload on a GPU machine")] = False,
    n_gpu_layers: Annotated[int | None, typer.Option(help="layers asked for (default: all)")] = None,
) -> None:
    """Classify load logs: one JSON line per file."""
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read: {exc.strerror}") from exc
        diag = classify(text, expect_gpu=expect_gpu, layers_requested=n_gpu_layers)
        sys.stdout.write(json.dumps(diag.as_json(str(f))) + "\n")


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

    _check_format(fmt, ("table", "json", "markdown", "csv"))
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


@app.command()
def dashboard(
    db: DbOption = None,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("dashboard/site"),
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Build the static HTML dashboard from the store."""
    from bench.dashboard import build_site

    gate = load_gate(config)
    with open_store(db) as store:
        report = build_site(store, out, gate)
    console.print(
        f"dashboard: {report.out / 'index.html'} ({report.pages} pages, {report.bytes_total / 1e6:.1f} MB, "
        f"{report.seconds:.1f} s)"
    )


def main() -> None:
    try:
        app()  # standalone: click reports usage errors itself, with exit code 2
    except PerfgateError as exc:
        sys.stderr.write(f"error: {exc}\n")  # unwrapped: one greppable line per error
        sys.exit(exc.exit_code)

"""Measuring and reading results: run, results, runs, synth."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, FormatOption, app, check_format, console
from bench.defaults import DEFAULT_CONFIG


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
    wait: Annotated[bool, typer.Option("--wait", help="wait for another run on this machine to end")] = False,
) -> None:
    """Measure every build × model of the config into the store."""
    from bench.config import load_config
    from bench.machine import collect
    from bench.report import render
    from bench.runlock import lock_path, run_lock
    from bench.runner import run_matrix
    from bench.store.db import open_store
    from bench.store.queries import results_frame

    cfg = load_config(config)
    lock = run_lock(
        lock_path(collect().fingerprint),
        wait=wait,
        what=f"bench run --config {config}",
        on_wait=lambda holder: console().print(f"waiting for the run of {holder}"),
    )
    with lock, open_store(db) as store:
        run_id = run_matrix(
            store, cfg, resume_run_id=resume, interleave=interleave, rounds=rounds, force=force, show_progress=not quiet
        )
        with store.session() as session:
            frame = results_frame(session, [run_id], with_samples=False)
    if not quiet:
        console().print(render.results_table(frame, f"run {run_id}"))
    console().print(f"run {run_id}: {len(frame)} results, {int((frame['status'] == 'ok').sum())} ok")


@app.command()
def results(
    db: DbOption = None,
    run_id: Annotated[int | None, typer.Option("--run", help="run id (default: latest)")] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="every run")] = False,
    fmt: FormatOption = "table",
    logs: Annotated[bool, typer.Option("--logs", help="include each result's load log (json/csv)")] = False,
) -> None:
    """Show stored results."""
    from bench.report import render
    from bench.store.db import open_store
    from bench.store.queries import attach_logs, results_frame, run_or_latest

    check_format(fmt, ("table", "json", "csv"))
    with open_store(db, write=False) as store, store.session() as session:
        ids = None if all_runs else [run_or_latest(session, run_id)]
        frame = results_frame(session, ids)
        if logs:
            frame = attach_logs(session, frame)
    if fmt == "json":
        sys.stdout.write(render.to_json(frame) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render.to_csv(frame))
    else:
        console().print(render.results_table(frame, "results" if ids is None else f"run {ids[0]}"))


@app.command()
def runs(db: DbOption = None, fmt: FormatOption = "table") -> None:
    """List runs."""
    from bench.report import render
    from bench.store.db import open_store
    from bench.store.queries import runs_frame

    check_format(fmt, ("table", "json", "csv"))
    with open_store(db, write=False) as store, store.session() as session:
        frame = runs_frame(session).drop(columns=["settings", "machine_id"])
    if fmt == "json":
        sys.stdout.write(render.to_json(frame) + "\n")
    elif fmt == "csv":
        sys.stdout.write(render.to_csv(frame))
    else:
        console().print(frame.to_string(index=False))


@app.command()
def synth(
    shape: Annotated[str, typer.Option(help="tiny|small|7B|13B|34B|70B")],
    quant: Annotated[str, typer.Option(help="F16|Q8_0|Q4_0")] = "Q4_0",
    out: Annotated[Path | None, typer.Option(help="output file (default models/<shape>-<quant>.gguf)")] = None,
    seed: int = 0,
) -> None:
    """Write a deterministic synthetic llama GGUF (skips an identical existing file)."""
    from bench.shapes import SynthSpec, default_filename
    from bench.synth import synthesize

    spec = SynthSpec(shape, quant, seed)
    target = out or Path("models") / default_filename(spec)
    wrote = synthesize(spec, target)
    console().print(f"{'wrote' if wrote else 'up to date'}: {target} ({target.stat().st_size / 1e6:.1f} MB)")

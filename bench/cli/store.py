"""The store and the machine: `db upgrade`, `push`, `doctor`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, app, check_format, console
from bench.defaults import DEFAULT_CONFIG
from bench.escape import json_text

db_app = typer.Typer(help="The database: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Bring the database to the newest schema (one transaction, under a lock; PostgreSQL needs this)."""
    from bench.store.db import head_revisions, upgrade_store

    where, migrated = upgrade_store(db)
    heads = ", ".join(sorted(head_revisions()))
    console().print(f"{where}: {'upgraded to' if migrated else 'already at'} {heads}")


@app.command()
def push(
    to: Annotated[str, typer.Option("--to", help="the central database URL (postgresql+psycopg://…)")],
    db: DbOption = None,
) -> None:
    """Copy this runner's finished runs into the central database; runs already there are skipped."""
    from bench.push import push as push_runs

    report = push_runs(db, to)
    console().print(
        f"pushed {len(report.copied)} run(s) ({report.results} results, {report.samples} samples); "
        f"{len(report.already)} already there"
    )
    if report.unfinished:
        ids = ", ".join(map(str, report.unfinished))
        console().print(f"not pushed, still running or killed (finish with `bench run --resume ID`): {ids}")


@app.command()
def doctor(
    config: ConfigOption = DEFAULT_CONFIG,
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|json")] = "table",
    probe: Annotated[bool, typer.Option(help="load a tiny model with full offload to test the GPU backend")] = True,
    python: Annotated[str | None, typer.Option(help="interpreter with llama_cpp for the probe")] = None,
) -> None:
    """Is this machine fit to measure? Exit 0 fit, 1 unfit (with the reasons)."""
    from bench.config import load_config
    from bench.doctor import diagnose_machine

    check_format(fmt, ("table", "json"))
    cfg = load_config(config, check_files=False) if Path(config).exists() or config != DEFAULT_CONFIG else None
    report = diagnose_machine(cfg, db, probe=probe, python=python)
    if fmt == "json":
        sys.stdout.write(json_text(report.as_json(), indent=1) + "\n")
    else:
        marks = {True: "ok", False: "UNFIT", None: "n/a"}
        for c in report.checks:
            console().print(f"{marks[c.ok]:>5}  {c.name:<16} {c.detail}", highlight=False, markup=False)
        console().print("fit to measure" if report.fit else "UNFIT: " + "; ".join(report.reasons))
    raise typer.Exit(0 if report.fit else 1)

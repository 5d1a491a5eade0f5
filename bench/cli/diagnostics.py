"""Load logs: classify-log, reclassify."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bench.cli.app import DbOption, app, check_format, console
from bench.errors import ConfigError
from bench.escape import json_text, terminal_text
from bench.metrics import Status

if TYPE_CHECKING:
    from bench.diagnose import Diagnosis

_KINDS = (("model", "model"), ("kv", "KV"), ("compute", "compute"))


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def explain(diag: Diagnosis, file: str) -> str:
    """One paragraph for a person: what happened, how far the load got, which line says so."""
    where = f" (line {diag.line_no})" if diag.line_no else ""
    # an incomplete log has no deciding line, only a last one
    what = "where it stops" if diag.status == Status.LOG_INCOMPLETE else "deciding"
    parts = [f"{file}: {diag.status}. The load reached {diag.phase}; {what}{where}: {diag.reason}"]
    if diag.offloaded:
        parts.append(f"{diag.offloaded[0]}/{diag.offloaded[1]} layers were offloaded to the GPU")
    if diag.backend:
        parts.append(f"Backend {diag.backend}")
    held = [
        f"{label} {device} {_gib(size)}" for kind, label in _KINDS for device, size in diag.memory.get(kind, {}).items()
    ]
    if held:
        parts.append("Buffers: " + ", ".join(held))
    if budget := diag.memory.get("device_budget_bytes"):
        parts.append(f"Device budget {_gib(budget)}")
    return ". ".join(p.rstrip(".") for p in parts) + "."


@app.command("classify-log")
def classify_log(
    files: Annotated[list[Path], typer.Argument(help="load logs")],
    expect_gpu: Annotated[bool, typer.Option(help="the run asked for GPU offload on a GPU machine")] = False,
    n_gpu_layers: Annotated[int | None, typer.Option(help="layers asked for (default: all)")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json (one line per file) | text (a paragraph)")] = "json",
) -> None:
    """Classify load logs: status, phase reached, deciding line and its number, offload, memory."""
    from bench.diagnose import classify

    check_format(fmt, ("json", "text"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read: {exc.strerror}") from exc
        diag = classify(text, expect_gpu=expect_gpu, layers_requested=n_gpu_layers)
        if fmt == "json":
            sys.stdout.write(json_text(diag.as_json(str(f))) + "\n")
        else:
            sys.stdout.write(terminal_text(explain(diag, str(f))) + "\n\n")


@app.command("reclassify")
def reclassify_cmd(
    run: Annotated[int | None, typer.Option("--run", help="one run (default: every run)")] = None,
    db: DbOption = None,
) -> None:
    """Re-read stored load logs with the current rules; record and apply every status that changes."""
    from bench.store.db import open_store
    from bench.store.reclassify import reclassify

    with open_store(db) as store, store.session() as session:
        changes = reclassify(session, run_id=run)
    for c in changes:
        console().print(
            f"result {c.result_id} ({c.build} × {c.model}, run {c.run_id}): {c.old_status} → {c.new_status}",
            markup=False,
            highlight=False,
        )
    console().print(f"{len(changes)} result(s) changed")

"""Load logs: classify-log."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import app
from bench.diagnose import classify
from bench.errors import ConfigError


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

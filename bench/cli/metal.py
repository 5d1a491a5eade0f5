"""`bench metal-check`: how a build will find its Metal library on a Mac, predicted on any machine."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, app, check_format, console
from bench.defaults import DEFAULT_CONFIG
from bench.errors import ConfigError


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise ConfigError(f"{option}: expected NAME=VALUE, got {value!r}")
        out[name] = rest
    return out


_TARGETS_HELP = (
    "NAME of a build, a cached build KEY, or a PATH (tree or artifacts); default: every build of the config "
    "with a git/dir/sdist source"
)
_VERIFY_HELP = "compare with this machine's measured results; exit 1 on a disagreement"


@app.command("metal-check")
def metal_check_cmd(
    targets: Annotated[list[str] | None, typer.Argument(help=_TARGETS_HELP)] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text|json")] = "text",
    system: Annotated[str | None, typer.Option(help="make|cmake: the build system of a folder")] = None,
    make_var: Annotated[list[str] | None, typer.Option("--make-var", help="NAME=VALUE, repeatable")] = None,
    cmake_arg: Annotated[list[str] | None, typer.Option("--cmake-arg", help="--cmake-arg=-DNAME=VALUE")] = None,
    record: Annotated[bool, typer.Option(help="store each prediction as the build's results (predicted)")] = False,
    verify: Annotated[bool, typer.Option(help=_VERIFY_HELP)] = False,
    db: DbOption = None,
) -> None:
    """Predict embedded | metallib | source | source_unresolved (shader_compile_failed) | missing, with the evidence.
    Exit 0: loads; 1: a predicted failure (with --verify: a prediction the measurement contradicts); 2: usage."""
    from bench.builds.metal import RecipeOverride, check_target, render_text
    from bench.builds.metal import record as record_predictions
    from bench.builds.metal import verify as verify_predictions
    from bench.config import load_config

    check_format(fmt, ("text", "json"))
    if system is not None and system not in ("make", "cmake"):
        raise ConfigError(f"--system: expected make or cmake, got {system!r}")
    override = RecipeOverride(system, _pairs(make_var or [], "--make-var"), list(cmake_arg or []))
    cfg = load_config(config, check_files=False) if config.exists() or config != DEFAULT_CONFIG else None
    if not targets:
        if cfg is None:
            raise ConfigError(f"{config}: no config: name a build, a cached build key or a folder")
        targets = [b.name for b in cfg.builds if b.source is not None and b.source.pip is None]
        if not targets:
            raise ConfigError(f"{cfg.source}: no build with a git, dir or sdist source to check")
    predictions = [check_target(t, cfg, override) for t in targets]
    recorded = None
    if record:
        if cfg is None:
            raise ConfigError("--record: a prediction is stored as results of a build of the config: give --config")
        from bench.store.db import open_store

        with open_store(db) as store:
            recorded = record_predictions(store, cfg, predictions)
    checked = None
    unjudged_here = False
    if verify:
        from bench.machine import collect
        from bench.store.db import open_store

        here = collect()
        unjudged_here = here.gpu_kind != "metal"
        with open_store(db, write=False) as store:
            checked = verify_predictions(store, predictions, here.fingerprint, on_metal=not unjudged_here)
    if fmt == "json":
        payload = {
            "predictions": [p.as_dict() for p in predictions],
            "recorded_run": recorded,
            "verify": None if checked is None else [asdict(v) for v in checked],
        }
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
    else:
        console().print("\n\n".join(render_text(p) for p in predictions), markup=False, highlight=False)
        if recorded is not None:
            console().print(f"recorded as run {recorded} (machine metal-check, predicted)", markup=False)
        for v in checked or []:
            line = f"{v.agreement}: {v.build} × {v.model}: predicted {v.predicted}, measured {v.measured}"
            console().print(f"{line} (run {v.run_id})", markup=False, highlight=False)
        if unjudged_here:
            console().print(
                "this machine has no Metal: its loads neither confirm nor refute a prediction", markup=False
            )
    if checked is not None:
        raise typer.Exit(1 if any(v.agreement == "disagree" for v in checked) else 0)
    raise typer.Exit(0 if all(p.loads for p in predictions) else 1)

"""Builds from source: build, list and prune the cache."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, app, check_format, console
from bench.defaults import DEFAULT_CONFIG
from bench.errors import ConfigError
from bench.escape import json_text

builds_app = typer.Typer(help="The build cache: list (default) and prune.", invoke_without_command=True)
app.add_typer(builds_app, name="builds")


@app.command("build")
def build_cmd(
    names: Annotated[list[str] | None, typer.Argument(help="builds of the config (default: every built one)")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    rebuild: Annotated[bool, typer.Option(help="build again even when the cache has it")] = False,
) -> None:
    """Build what is missing from each build's `source` (git ref, tree, sdist or pip release), cached by key."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from bench.builds.cache import ensure_built
    from bench.config import load_config
    from bench.report import render

    cfg = load_config(config)
    known = {b.name: b for b in cfg.builds}
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"{config}: no build named {unknown[0]!r} (builds: {', '.join(known)})")
    chosen = [known[n] for n in names] if names else [b for b in cfg.builds if b.source is not None]
    failed = 0
    for build in chosen:
        if build.source is None:
            how = f"the library of {build.library_of}" if build.library_of else "a prebuilt path or interpreter"
            console().print(f"{build.name}: no source ({how}): nothing to build")
            continue
        with Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console(),
        ) as progress:
            task = progress.add_task(f"{build.name}: resolving", total=None)

            def show(
                phase: str, done: int | None, total: int | None, _line: str, name: str = build.name, task: TaskID = task
            ) -> None:
                progress.update(task, description=f"{name}: {phase}", completed=done or 0, total=total)

            record = ensure_built(cfg, build, progress=show, rebuild=rebuild)
        where = f"{record.source.get('ref') or record.source.get('location')} → {record.source.get('commit') or '-'}"
        if record.ok:
            console().print(
                f"{build.name}: ok, key {record.key} ({where}, {record.build_s:.1f} s, "
                f"{render.human_bytes(record.size_bytes)}{', ccache' if record.ccache else ''})"
            )
        else:
            failed += 1
            failure = record.failure or {}
            console().print(
                f"{build.name}: FAILED {failure.get('kind')}: {failure.get('line')} (log: {record.dir}/build.log)"
            )
    raise typer.Exit(1 if failed else 0)


@builds_app.callback()
def builds_list(
    ctx: typer.Context,
    config: ConfigOption = DEFAULT_CONFIG,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|json")] = "table",
) -> None:
    """List cached builds: key, source, ref → commit, system, args, size, build seconds, last used."""
    if ctx.invoked_subcommand is not None:
        return
    from bench.builds.cache import cache_root, list_cache
    from bench.config import load_config
    from bench.report import render

    check_format(fmt, ("table", "json"))
    cfg = load_config(config, check_files=False) if config.exists() or config != DEFAULT_CONFIG else None
    records = list_cache(cache_root(cfg))
    if fmt == "json":
        sys.stdout.write(json_text([{**r.identity(), "path": r.path} for r in records], indent=1) + "\n")
        return
    rows = [
        {
            "key": r.key,
            "name": r.name,
            "source": f"{r.source.get('kind')} {r.source.get('location')}",
            "ref → commit": f"{r.source.get('ref') or '-'} → {(r.source.get('commit') or '-')[:12]}",
            "system": r.system,
            "args": " ".join(r.cmake_args + [f"{k}={v}" for k, v in r.make_vars.items()]),
            "ok": "ok" if r.ok else (r.failure or {}).get("kind", "failed"),
            "size": render.human_bytes(r.size_bytes),
            "build s": f"{r.build_s:.1f}",
            "last used": r.last_used,
        }
        for r in records
    ]
    if not rows:
        console().print(f"no cached builds in {cache_root(cfg)}")
        return
    import pandas as pd

    console().print(render.frame_table(pd.DataFrame(rows), f"builds in {cache_root(cfg)}"))


@builds_app.command("prune")
def builds_prune(
    keep: Annotated[int | None, typer.Option(help="keep the N most recently used")] = None,
    older_than: Annotated[str | None, typer.Option(help="remove those unused for this long: 7d, 12h, 30m")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Remove cached builds."""
    from bench.builds.cache import cache_root, parse_age, prune
    from bench.config import load_config

    if keep is None and older_than is None:
        raise ConfigError("builds prune: give --keep N and/or --older-than AGE")
    if keep is not None and keep < 0:
        raise ConfigError(f"--keep: expected 0 or more, got {keep}")
    age: timedelta | None = parse_age(older_than) if older_than is not None else None
    cfg = load_config(config, check_files=False) if config.exists() or config != DEFAULT_CONFIG else None
    removed = prune(cache_root(cfg), keep=keep, older_than=age)
    console().print(f"removed {len(removed)} cached build(s)" + "".join(f"\n  {r.key} {r.name}" for r in removed))

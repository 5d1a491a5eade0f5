"""`bench bisect`: the first commit between a good and a bad ref that slows a model down or breaks its load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bench.cli.app import ConfigOption, DbOption, app, console
from bench.defaults import DEFAULT_CONFIG
from bench.errors import ConfigError


@app.command("bisect")
def bisect_cmd(
    repo: Annotated[Path, typer.Option(help="a git repository of llama.cpp (or a fork)")],
    good: Annotated[str, typer.Option(help="a ref where the model is fine")],
    bad: Annotated[str, typer.Option(help="a ref where it is not")],
    model: Annotated[str, typer.Option(help="a model of the config")],
    metric: Annotated[str, typer.Option(help="load | pp_ts | tg_ts")] = "tg_ts",
    engine: Annotated[str, typer.Option(help="llama-bench | llama-cpp-python")] = "llama-bench",
    max_steps: Annotated[int | None, typer.Option(help="stop after this many commits were tried")] = None,
    budget_s: Annotated[float, typer.Option("--budget-s", help="measuring time per commit while inconclusive")] = 300.0,
    resume: Annotated[
        bool, typer.Option(help="reuse the steps an interrupted bisect of the same range stored")
    ] = False,
    wait: Annotated[bool, typer.Option(help="wait for another measuring run on this machine")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    db: DbOption = None,
) -> None:
    """Build each midpoint (cached), measure it against the good build, judge it by the gate's rule: exit 0 with
    the first bad commit, 3 when skipped commits or --max-steps leave several candidates."""
    from bench.analysis.bisection import (
        BisectOracle,
        Commit,
        Step,
        bisect_id,
        check_metric,
        commit_range,
        search,
        stored_steps,
    )
    from bench.config import load_config
    from bench.machine import collect
    from bench.runlock import lock_path, run_lock
    from bench.store.db import open_store

    check_metric(metric)
    if engine not in ("llama-bench", "llama-cpp-python"):
        raise ConfigError(f"--engine: expected llama-bench or llama-cpp-python, got {engine!r}")
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps: expected 1 or more, got {max_steps}")
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise ConfigError(f"--repo {repo}: not a git repository")
    cfg = load_config(config)
    chosen = next((m for m in cfg.models if m.name == model), None)
    if chosen is None:
        raise ConfigError(
            f"{cfg.source}: models: no model named {model!r} (models: {', '.join(m.name for m in cfg.models)})"
        )
    good_sha, commits = commit_range(repo, good, bad)
    ident = bisect_id(repo, good_sha, commits[-1].sha, model, metric, engine, cfg.suite.settings_key())
    lock = run_lock(lock_path(collect().fingerprint), wait=wait, what=f"bench bisect {good}..{bad}")
    with lock, open_store(db) as store:
        memo = stored_steps(store, ident, commits) if resume else {}
        oracle = BisectOracle(
            store, cfg, repo=repo.resolve(), good_sha=good_sha, model=chosen, metric=metric, engine=engine,
            ident=ident, budget_s=budget_s, memo=memo,
        )  # fmt: skip
        console().print(f"bisecting {len(commits)} commits after {good} up to {bad} on {model} ({metric})")

        def oracle_shown(commit: Commit) -> Step:
            s = oracle(commit)
            how = "stored" if s.stored else "measured"
            console().print(f"  {s.commit.sha[:12]} {s.mark:5s} ({how}) {s.commit.subject[:60]}: {s.evidence}")
            return s

        outcome = search(commits, oracle_shown, max_steps)
    console().print(
        f"{outcome.builds} commit(s) built and measured, {len(outcome.steps) - outcome.builds} from the store"
    )
    if outcome.first_bad is not None:
        c = outcome.first_bad
        console().print(f"first bad commit: {c.sha} {c.subject} ({c.author_date})")
        raise typer.Exit(0)
    why = "--max-steps reached" if outcome.exhausted else "skipped commits hide which one"
    console().print(f"no single first bad commit ({why}); one of:")
    for c in outcome.candidates:
        console().print(f"  {c.sha} {c.subject} ({c.author_date})")
    raise typer.Exit(3)

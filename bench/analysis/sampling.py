"""Measure until sure: the one loop that adds ABBA rounds until a verdict is conclusive or the budget is spent,
used by `bench gate --measure` and by bisect (same repetitions per round, same run lock). The statistics it
reads are `bench.analysis.sequential`'s; this module is the orchestration around them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from bench.analysis.gate import Verdict
    from bench.config import BuildConfig, Config, ModelConfig
    from bench.store.db import Store

V = TypeVar("V")


def abba_round(store: Any, config: Config, builds: list[BuildConfig], models: list[ModelConfig], what: str) -> int:
    """One added round: AB then BA for `models`, twice the suite's repetitions per process, under the machine's
    run lock (a round measured beside another run would measure both). Returns its run id."""
    from bench.machine import collect
    from bench.runlock import lock_path, run_lock
    from bench.runner import run_matrix

    reduced = config.model_copy(
        update={
            "builds": builds,
            "models": models,
            "suite": config.suite.model_copy(update={"repetitions": 2 * config.suite.repetitions}),
        }
    )
    with run_lock(lock_path(collect().fingerprint), wait=True, what=what):
        return run_matrix(store, reduced, interleave=True, rounds=2, show_progress=False)


@dataclass(frozen=True)
class Look:
    """One look at the evidence: which models were still open, what the round added, how long it took."""

    open_models: tuple[str, ...]
    run_id: int | None
    seconds: float


def sample_until_sure(
    judge: Callable[[], V],
    open_models: Callable[[V], list[str]],
    add_round: Callable[[list[str]], int],
    budget_s: float,
    clock: Callable[[], float] = time.monotonic,
    *,
    first_round: list[str] | None = None,
) -> tuple[V, list[Look]]:
    """Judge; while some models are inconclusive and the budget allows another round like the last one, add an
    ABBA round for those models only and judge again. Valid because every look reads a confidence sequence.
    `first_round`: the models to measure before the first look when a side has no results yet (one round, even
    past the budget: there is nothing to judge without it)."""
    from bench.errors import NoResults

    start = clock()
    looks: list[Look] = []

    def measure(models: list[str]) -> V:
        t0 = clock()
        run_id = add_round(models)
        looks.append(Look(tuple(models), run_id, clock() - t0))
        return judge()

    try:
        verdict = judge()
    except NoResults:
        if first_round is None:
            raise
        verdict = measure(first_round)
    while open_now := open_models(verdict):
        last_round_s = looks[-1].seconds if looks else 0.0
        if clock() - start + last_round_s > budget_s:
            break
        verdict = measure(open_now)
    return verdict, looks


def gate_until_sure(
    store: Store,
    baseline: str,
    candidate: str,
    config_path: Path,
    *,
    allow_cross_machine: bool = False,
    allow_mixed_settings: bool = False,
    budget_s: float | None = None,
) -> tuple[Verdict, list[Look]]:
    """The verdict; with a budget, after adding ABBA rounds (run through the ordinary runner, stored as ordinary
    results) for the models whose checks are inconclusive, until each is conclusive or the budget is spent."""
    from bench.analysis.compare import compare, parse_ref
    from bench.analysis.gate import evaluate
    from bench.config import DEFAULT_CONFIG, load_config, load_gate
    from bench.errors import ConfigError, NoResults

    cfg = load_config(config_path, check_files=budget_s is not None) if config_path.exists() else None
    if cfg is None and (budget_s is not None or config_path != DEFAULT_CONFIG):
        raise ConfigError(f"{config_path}: no such config file" + (" (--measure runs its builds)" if budget_s else ""))
    gate = cfg.gate_settings() if cfg else load_gate(config_path)
    added: list[int] = []
    measurable = {m.name for m in cfg.models} if cfg else set()

    def judge() -> Verdict:
        with store.session() as session:
            comparison = compare(
                session,
                baseline,
                candidate,
                allow_cross_machine=allow_cross_machine,
                allow_mixed_settings=allow_mixed_settings,
                extra_runs=added,
            )
        if budget_s is not None and not added:
            # the results that stand for a build may be of other models (the store's last run of it measured
            # another size): a config model neither side measured gets the first round, not a verdict without it
            both = {
                str(r.model)
                for r in comparison.table.itertuples()
                if r.baseline_status is not None and r.candidate_status != "missing"
            }
            if unmeasured := sorted(measurable - both):
                raise NoResults(f"{', '.join(unmeasured)}: not measured by both {baseline} and {candidate} yet")
        # one added round is an AB + BA pair: two pairs of worker processes
        return evaluate(comparison, gate, pairs_per_round=2)

    if budget_s is None or cfg is None:
        return judge(), []
    builds = {b.name: b for b in cfg.builds}
    pair = []
    for ref in (baseline, candidate):
        name, _ = parse_ref(ref)
        if name not in builds:
            raise ConfigError(f"{cfg.source}: builds: no build {name!r}: --measure needs it to add rounds")
        pair.append(builds[name])

    def add_round(models: list[str]) -> int:
        chosen = [m for m in cfg.models if m.name in models]
        run_id = abba_round(store, cfg, pair, chosen, f"bench gate --measure {candidate}")
        added.append(run_id)
        return run_id

    # a model the config does not name cannot get rounds: it stays open

    def open_models(verdict: Verdict) -> list[str]:
        return [m for m in verdict.open_models() if m in measurable]

    return sample_until_sure(judge, open_models, add_round, budget_s, first_round=sorted(measurable))

"""The matrix: which (build, model) to measure in what order; engines say how, `run_isolated` runs it."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench import machine as machine_mod
from bench.builds.cache import built_for
from bench.builds.compile import Progress as BuildProgress
from bench.builds.identity import BuildIdentity
from bench.config import BuildConfig, Config, ModelConfig
from bench.diagnose import ExitInfo, classify
from bench.engines import Engine, ItemSpec, ProcessOutcome, ProcessSpec, make_engine, run_isolated
from bench.errors import ConfigError, StoreError
from bench.metrics import Status
from bench.store.annotations import merge_build_details
from bench.store.db import Store
from bench.store.models import Run, utcnow
from bench.store.records import (
    Figures,
    Measurement,
    finish_run,
    finished_items,
    record_result,
    start_run,
    upsert_build,
    upsert_machine,
    upsert_model,
)
from bench.synth import synthesize

HEADER_TIMEOUT_S = 60.0
LOG_TAIL = 200_000  # characters of a failed build's log stored with each of its results


@dataclass(frozen=True)
class ModelFacts:
    """What the GGUF header says, for the fit estimate and for the store."""

    path: Path
    file_bytes: int | None
    n_layer: int | None
    d_model: int | None
    kv_dim: int | None
    n_vocab: int | None
    architecture: str | None


def read_model_facts(path: Path) -> ModelFacts:
    """The header fields, read in a bounded child: a FIFO or a huge vocabulary must not stall the runner."""
    try:
        st = path.stat()
    except OSError:
        return ModelFacts(path, None, None, None, None, None, None)
    if not stat.S_ISREG(st.st_mode):
        return ModelFacts(path, None, None, None, None, None, None)
    outcome = run_isolated(
        lambda tmp: ProcessSpec(
            [sys.executable, "-m", "bench.gguf_header", str(path)],
            dict(os.environ),
            stdout_file="h.json",
            read=("h.json",),
        ),
        HEADER_TIMEOUT_S,
    )
    try:
        h = json.loads(outcome.files.get("h.json", "")) if not outcome.timed_out else {}
    except ValueError:
        h = {}
    return ModelFacts(
        path, st.st_size, h.get("n_layer"), h.get("d_model"), h.get("kv_dim"), h.get("n_vocab"), h.get("architecture")
    )


def estimate_need_bytes(facts: ModelFacts, config: Config) -> int | None:
    """File + KV cache (f16) + compute buffers: what a full offload asks of the device."""
    if facts.file_bytes is None or facts.n_layer is None or facts.kv_dim is None:
        return None
    suite = config.suite
    n_ctx = max(suite.n_prompt, suite.n_gen, 1)
    kv = 2 * facts.n_layer * n_ctx * facts.kv_dim * 2
    compute = 4 * suite.n_ubatch * ((facts.n_vocab or 32000) + 4 * (facts.d_model or 0))
    return facts.file_bytes + kv + compute


def default_timeout_s(facts: ModelFacts) -> float:
    # a cold 70B load reads 40 GB; allow ~20 s per GB on top of a minute of fixed cost
    return 60.0 + 20.0 * (facts.file_bytes or 0) / 1e9


def device_budget(config: Config, info: machine_mod.MachineInfo) -> tuple[int | None, str]:
    """What a full offload must fit in, and what that figure is: the suite's own, else a Mac's GPU
    working-set limit (iogpu.wired_limit_mb or recommendedMaxWorkingSetSize, never unified memory), else the
    GPU's memory (the host's for a CPU run)."""
    if config.suite.device_budget_bytes is not None:
        return config.suite.device_budget_bytes, "suite.device_budget_bytes"
    if info.gpu_kind == "metal":
        return info.device_budget_bytes, f"the GPU working-set limit ({info.gpu_working_set_source or 'estimate'})"
    return info.device_budget_bytes, "the device budget"


def expect_gpu(config: Config, info: machine_mod.MachineInfo) -> bool:
    return info.has_gpu if config.suite.expect_gpu == "auto" else bool(config.suite.expect_gpu)


def _layers_requested(config: Config) -> int | None:
    n = config.suite.n_gpu_layers
    return None if n == "all" or n < 0 else n


@dataclass
class Item:
    build: BuildConfig
    model: ModelConfig
    round: int
    reps: int


def plan(config: Config, rounds: int, interleave: bool, done: dict[tuple[str, str], int]) -> list[Item]:
    """The order of work. Interleaved: per round, every build in turn, reversed on odd rounds (ABBA)."""
    reps = config.suite.repetitions
    per_round = [reps // rounds + (1 if r < reps % rounds else 0) for r in range(rounds)]
    items: list[Item] = []
    if interleave:
        for r in range(rounds):
            builds = config.builds if r % 2 == 0 else list(reversed(config.builds))
            items += [
                Item(b, m, r, per_round[r]) for m in config.models for b in builds if done.get((b.name, m.name), 0) <= r
            ]
    else:
        items = [Item(b, m, 0, reps) for b in config.builds for m in config.models if done.get((b.name, m.name), 0) < 1]
    return items


def prepare_models(config: Config, on_synth: Callable[[str], None] | None = None) -> dict[str, ModelFacts]:
    facts = {}
    for model in config.models:
        path = config.model_path(model)
        if model.synth is not None and model.path is None:
            if on_synth:
                on_synth(model.name)
            synthesize(model.synth.spec(), path)
        facts[model.name] = read_model_facts(path)
    return facts


@dataclass(frozen=True)
class PreparedBuild:
    """A build ready to measure (an engine), or the measurement that stands for every model of it."""

    identity: BuildIdentity
    engine: Engine | None
    failed: Measurement | None


def prepare_builds(config: Config, *, progress: Callable[[str, str], None] | None = None) -> dict[str, PreparedBuild]:
    """Build what is missing, then ask each build who it is. A build that cannot be used is a result."""
    suite = config.suite
    prepared = {}
    for build in config.builds:
        record = built_for(config, build, progress=_build_progress(build.name, progress))
        if record is not None and not record.ok:
            failure = record.failure or {"kind": "build_failed", "line": "the build failed"}
            log = record.log_text()
            ident = BuildIdentity(build.name, False, error_log=log, details=record.details())
            reason = f"{failure['kind']}: {failure['line']}"
            failed = Measurement(Status.BUILD_FAILED, reason, suite.n_prompt, suite.n_gen, log=log[-LOG_TAIL:])
            prepared[build.name] = PreparedBuild(ident, None, failed)
            continue
        engine = make_engine(config, build, record)
        ident = engine.identify()
        if not ident.ok:
            diag = classify(ident.error_log, expect_gpu=False)
            status, reason = diag.status, diag.reason
            if status in (Status.OK, Status.LOAD_FAILED, Status.LOG_INCOMPLETE):
                last = [ln.strip() for ln in ident.error_log.splitlines() if ln.strip()]
                status, reason = Status.BUILD_FAILED, last[-1] if last else "the build cannot be used"
            failed = Measurement(str(status), reason, suite.n_prompt, suite.n_gen, log=ident.error_log)
            prepared[build.name] = PreparedBuild(ident, None, failed)
            continue
        prepared[build.name] = PreparedBuild(ident, engine, None)
    return prepared


def _build_progress(name: str, report: Callable[[str, str], None] | None) -> BuildProgress | None:
    if report is None:
        return None

    def on_line(phase: str, done: int | None, total: int | None, _line: str) -> None:
        report(name, f"{phase} {done} of {total}" if done and total else phase)

    return on_line


def _check_resume(run: Run, config: Config, allow_mixed_settings: bool) -> None:
    """A resumed run keeps its settings: measuring the rest with other settings would mix two suites."""
    stored = (run.settings or {}).get("suite", {})
    now = config.suite.settings_key()
    differing = sorted(k for k, v in now.items() if k in stored and stored[k] != v)
    if differing and not allow_mixed_settings:
        shown = ", ".join(f"{k} {stored[k]!r} → {now[k]!r}" for k in differing)
        raise ConfigError(
            f"run {run.id} was measured with other suite settings ({shown}); resuming would mix them "
            "(--allow-mixed-settings to do it anyway)"
        )


def run_matrix(
    store: Store,
    config: Config,
    *,
    resume_run_id: int | None = None,
    interleave: bool = False,
    rounds: int | None = None,
    force: bool = False,
    show_progress: bool = True,
    allow_mixed_settings: bool = False,
) -> int:
    """Measure every (build, model) of `config` into a run of `store`; return the run id."""
    if rounds is not None and rounds < 1:
        raise ConfigError(f"--rounds: expected 1 or more, got {rounds}")
    info = machine_mod.collect()
    rounds = (rounds or config.suite.repetitions) if interleave else 1
    if rounds > config.suite.repetitions:
        raise ConfigError(f"--rounds {rounds} exceeds suite.repetitions {config.suite.repetitions}")
    with store.session() as session:
        if resume_run_id is not None:
            resumed = session.get(Run, resume_run_id)
            if resumed is None:
                raise StoreError(f"no run {resume_run_id} in {store.url}")
            _check_resume(resumed, config, allow_mixed_settings)
    facts = prepare_models(config)
    gpu_expected = expect_gpu(config, info)
    budget, budget_label = device_budget(config, info)
    console_progress = Progress(
        TextColumn("{task.description}", markup=False),  # names are text, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=False,
    )
    with console_progress as progress:
        build_task = progress.add_task("builds", total=None, visible=any(b.source for b in config.builds))
        prepared = prepare_builds(
            config, progress=lambda name, phase: progress.update(build_task, description=f"build {name}: {phase}")
        )
        progress.update(build_task, visible=False)
        with store.session() as session:
            machine = upsert_machine(session, info)
            if resume_run_id is not None:
                run = session.get(Run, resume_run_id)
                assert run is not None
                interleave, rounds = run.settings.get("interleave", False), run.settings.get("rounds", 1)
            else:
                settings = {
                    "suite": config.suite.model_dump(mode="json"),
                    "interleave": interleave,
                    "rounds": rounds,
                    "config": str(config.source),
                    "builds": [b.name for b in config.builds],
                    "models": [m.name for m in config.models],
                    "engines": {b.name: b.engine for b in config.builds},
                    "expect_gpu": gpu_expected,
                    # the machine row keeps its first sight of these; a run keeps its own (power and heat change)
                    "machine_state": {
                        "low_power_mode": info.low_power_mode,
                        "thermal": info.thermal,
                        "gpu_working_set_bytes": info.gpu_working_set_bytes,
                        "gpu_working_set_source": info.gpu_working_set_source,
                    },
                }
                run = start_run(session, machine, settings)
            run_id = run.id
            done = finished_items(session, run_id, rounds)
            build_ids = {name: upsert_build(session, p.identity).id for name, p in prepared.items()}
            model_ids = {
                m.name: upsert_model(
                    session,
                    m.name,
                    str(facts[m.name].path),
                    facts[m.name].file_bytes,
                    facts[m.name].n_layer,
                    {"synth": m.synth.model_dump() if m.synth else None, "architecture": facts[m.name].architecture},
                ).id
                for m in config.models
            }
            session.commit()
            items = plan(config, rounds, interleave, done)
            task = progress.add_task("matrix", total=len(items))
            for item in items:
                progress.update(task, description=f"{item.build.name} × {item.model.name} (round {item.round + 1})")
                started = utcnow()
                m = _measure_item(
                    config,
                    item,
                    facts[item.model.name],
                    prepared[item.build.name],
                    gpu_expected=gpu_expected,
                    budget=budget,
                    budget_label=budget_label,
                    force=force,
                )
                logged = m.memory.get("device_budget_bytes")
                if info.gpu_kind == "metal" and config.suite.device_budget_bytes is None and logged:
                    # Metal states recommendedMaxWorkingSetSize (iogpu.wired_limit_mb included) at load:
                    # the later fit checks hold the rest to it rather than to the estimate
                    budget, budget_label = int(logged), "the GPU working-set limit (recommendedMaxWorkingSetSize)"
                if m.engine_info:
                    merge_build_details(session, build_ids[item.build.name], {"engine_reported": m.engine_info})
                record_result(
                    session,
                    run_id,
                    build_ids[item.build.name],
                    model_ids[item.model.name],
                    m,
                    rounds_total=rounds,
                    started_at=started,
                )
                progress.advance(task)
            finish_run(session, session.get(Run, run_id))  # type: ignore[arg-type]
    return run_id


def _measure_item(
    config: Config,
    item: Item,
    facts: ModelFacts,
    prepared: PreparedBuild,
    *,
    gpu_expected: bool,
    budget: int | None,
    force: bool,
    budget_label: str = "the device budget",
) -> Measurement:
    suite = config.suite
    if prepared.failed is not None:
        return prepared.failed
    assert prepared.engine is not None
    need = estimate_need_bytes(facts, config)
    if not force and need is not None and budget is not None and need > budget:
        return Measurement(
            Status.SKIPPED_DOES_NOT_FIT,
            f"needs ~{need / 2**30:.1f} GiB (file + KV + compute) but {budget_label} is "
            f"{budget / 2**30:.1f} GiB; --force runs it anyway",
            suite.n_prompt,
            suite.n_gen,
            figures=Figures(device_budget_bytes=budget, model_bytes=facts.file_bytes),
        )
    spec = ItemSpec(
        model_path=facts.path,
        n_prompt=suite.n_prompt,
        n_gen=suite.n_gen,
        repetitions=item.reps,
        warmup=suite.warmup,
        n_gpu_layers=-1 if suite.n_gpu_layers == "all" else suite.n_gpu_layers,
        n_batch=suite.n_batch,
        n_ubatch=suite.n_ubatch,
        threads=suite.threads or _default_threads(),
        flash_attn=suite.flash_attn,
        seed=item.round,
        n_layer=facts.n_layer,
        load_repetitions=suite.load_repetitions,
    )
    timeout_s = item.model.timeout_s or suite.timeout_s or default_timeout_s(facts)

    def judge(outcome: ProcessOutcome, *, layers_total: int | None = None, proof: str | None = None) -> Any:
        return classify(
            outcome.log,
            expect_gpu=gpu_expected,
            layers_requested=_layers_requested(config),
            exit_info=ExitInfo(outcome.returncode, outcome.timed_out, timeout_s),
            layers_total=layers_total,
            proof=proof,
        )

    outcomes = []
    for make in prepared.engine.processes(spec):
        outcomes.append(run_isolated(make, timeout_s))
        if outcomes[-1].timed_out:
            break
    m = prepared.engine.measurement(spec, outcomes, judge)
    if m.figures.device_budget_bytes is None and budget is not None:
        m.figures.device_budget_bytes = budget
    return m


def _default_threads() -> int:
    """llama-bench's default: the number of physical cores (distinct socket × core ids), not hyperthreads."""
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return os.cpu_count() or 1
    cores, socket = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            socket = value.strip()
        elif key.strip() == "core id":
            cores.add((socket, value.strip()))
    return len(cores) or os.cpu_count() or 1

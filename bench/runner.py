"""The matrix: which (build, model) to measure in what order, each in its own worker process."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gguf import GGUFReader
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench import machine as machine_mod
from bench.builds import WORKER, BuildIdentity, build_env, identify
from bench.config import BuildConfig, Config, ModelConfig
from bench.diagnose import ExitInfo, classify, gpu_devices
from bench.errors import ConfigError, StoreError
from bench.store.db import Store
from bench.store.models import Run, utcnow
from bench.store.records import (
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

FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
LOG_LIMIT = 2_000_000  # characters of load log kept per result


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
    if not path.exists():
        return ModelFacts(path, None, None, None, None, None, None)
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError):
        return ModelFacts(path, size, None, None, None, None, None)

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    n_layer, d_model = field(f"{arch}.block_count"), field(f"{arch}.embedding_length")
    heads, heads_kv = field(f"{arch}.attention.head_count"), field(f"{arch}.attention.head_count_kv")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    kv_dim = d_model // heads * (heads_kv or heads) if d_model and heads else None
    return ModelFacts(path, size, n_layer, d_model, kv_dim, len(tokens.data) if tokens else None, arch)


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


def _die_with_parent(runner_pid: int) -> Callable[[], None]:
    def arm() -> None:
        if sys.platform.startswith("linux"):
            # PR_SET_PDEATHSIG = 1: a runner killed with SIGKILL takes its worker with it
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
            if os.getppid() != runner_pid:  # the runner died between fork and prctl: too late to be told
                os._exit(1)

    return arm


@dataclass(frozen=True)
class WorkerOutcome:
    returncode: int
    timed_out: bool
    log: str
    result: dict[str, Any] | None
    rss_peak_bytes: int | None


def run_worker(python: str, env: dict[str, str], spec: dict[str, Any], timeout_s: float) -> WorkerOutcome:
    """Run one worker in its own process group; kill the whole group past the timeout."""
    with tempfile.TemporaryDirectory(prefix="perfgate-") as tmp:
        spec_path, out_path, log_path = Path(tmp, "spec.json"), Path(tmp, "result.json"), Path(tmp, "load.log")
        spec_path.write_text(json.dumps(spec))
        with log_path.open("wb") as log_fh:
            proc = subprocess.Popen(
                [python, str(WORKER), "measure", str(spec_path), str(out_path)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
            timed_out, status, rusage = _wait(proc.pid, timeout_s)
            proc.returncode = os.waitstatus_to_exitcode(status)
        _reap_group(proc.pid)
        log = log_path.read_text(errors="replace")
        result = json.loads(out_path.read_text()) if out_path.exists() and proc.returncode == 0 else None
    rss = rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) if rusage else None
    if len(log) > LOG_LIMIT:
        log = log[: LOG_LIMIT // 2] + "\n[... perfgate cut the middle of this log ...]\n" + log[-LOG_LIMIT // 2 :]
    return WorkerOutcome(proc.returncode, timed_out, log, result, rss)


def _wait(pid: int, timeout_s: float) -> tuple[bool, int, Any]:
    """Block until the worker ends (no polling to disturb its timing); kill its group past the timeout."""
    ended: list[tuple[int, int, Any]] = []
    waiter = threading.Thread(target=lambda: ended.append(os.wait4(pid, 0)), daemon=True)
    waiter.start()
    waiter.join(timeout_s)
    timed_out = waiter.is_alive()
    if timed_out:
        os.killpg(pid, signal.SIGKILL)
        waiter.join()
    _, status, rusage = ended[0]
    return timed_out, status, rusage


def _reap_group(pgid: int) -> None:
    """Anything the worker forked is killed with it: no process outlives its item."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _layers_requested(config: Config) -> int | None:
    n = config.suite.n_gpu_layers
    return None if n == "all" or n < 0 else n


def expect_gpu(config: Config, info: machine_mod.MachineInfo) -> bool:
    return info.has_gpu if config.suite.expect_gpu == "auto" else bool(config.suite.expect_gpu)


def measurement_from(
    outcome: WorkerOutcome, config: Config, *, gpu_expected: bool, timeout_s: float, budget_bytes: int | None
) -> Measurement:
    suite = config.suite
    res = outcome.result or {}
    diag = classify(
        outcome.log,
        expect_gpu=gpu_expected,
        layers_requested=_layers_requested(config),
        exit_info=ExitInfo(outcome.returncode, outcome.timed_out, timeout_s),
        layers_total=res["layers_model"] + 1 if "layers_model" in res else None,
    )
    status, reason = diag.status, diag.reason
    if status == "ok" and outcome.result is None:
        status, reason = "crashed", f"worker exited with code {outcome.returncode} and wrote no result"
    layers_total = diag.offloaded[1] if diag.offloaded else (res["layers_model"] + 1 if "layers_model" in res else None)
    if diag.offloaded:
        layers_offloaded: int | None = diag.offloaded[0]
    elif layers_total is not None:
        layers_offloaded = 0 if not gpu_devices(diag.memory) else layers_total
    else:
        layers_offloaded = None
    memory = diag.memory
    fields = {
        "load_s": res.get("load_s"),
        "layers_offloaded": layers_offloaded,
        "layers_total": layers_total,
        "backend": diag.backend,
        "model_bytes": res.get("model_bytes"),
        "model_buf_bytes": sum(memory.get("model", {}).values()) or None,
        "kv_bytes": sum(memory.get("kv", {}).values()) or None,
        "compute_bytes": sum(memory.get("compute", {}).values()) or None,
        "rss_peak_bytes": max(filter(None, [res.get("rss_peak_bytes"), outcome.rss_peak_bytes]), default=None),
        "gpu_used_bytes": res.get("gpu_used_bytes"),
        "device_budget_bytes": memory.get("device_budget_bytes") or budget_bytes,
        "exit_code": outcome.returncode,
        "signal": signal.Signals(-outcome.returncode).name if outcome.returncode < 0 else None,
    }
    # samples are kept whenever the worker measured (a partial offload or CPU fallback still ran);
    # comparisons only ever use results whose status is ok
    return Measurement(
        status,
        reason,
        suite.n_prompt,
        suite.n_gen,
        samples_pp_ns=res.get("samples_pp_ns", []),
        samples_tg_ns=res.get("samples_tg_ns", []),
        log=outcome.log,
        fields=fields,
        memory=memory,
    )


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


def run_matrix(
    store: Store,
    config: Config,
    *,
    resume_run_id: int | None = None,
    interleave: bool = False,
    rounds: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> int:
    """Measure every (build, model) of `config` into a run of `store`; return the run id."""
    info = machine_mod.collect()
    rounds = (rounds or config.suite.repetitions) if interleave else 1
    if rounds > config.suite.repetitions:
        raise ConfigError(f"--rounds {rounds} exceeds suite.repetitions {config.suite.repetitions}")
    facts = prepare_models(config)
    gpu_expected = expect_gpu(config, info)
    budget = config.suite.device_budget_bytes or info.device_budget_bytes
    with store.session() as session:
        machine = upsert_machine(session, info)
        if resume_run_id is not None:
            run = session.get(Run, resume_run_id)
            if run is None:
                raise StoreError(f"no run {resume_run_id} in {store.url}")
            interleave, rounds = run.settings.get("interleave", False), run.settings.get("rounds", 1)
        else:
            settings = {
                "suite": config.suite.model_dump(mode="json"),
                "interleave": interleave,
                "rounds": rounds,
                "config": str(config.source),
                "builds": [b.name for b in config.builds],
                "models": [m.name for m in config.models],
                "expect_gpu": gpu_expected,
            }
            run = start_run(session, machine, settings)
        run_id = run.id
        done = finished_items(session, run_id, rounds)
        identities = {b.name: identify(config, b) for b in config.builds}
        build_ids = {name: upsert_build(session, ident).id for name, ident in identities.items()}
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
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            disable=not show_progress,
            transient=False,
        ) as progress:
            task = progress.add_task("matrix", total=len(items))
            for item in items:
                progress.update(task, description=f"{item.build.name} × {item.model.name} (round {item.round + 1})")
                started = utcnow()
                m = _measure_item(
                    config,
                    item,
                    facts[item.model.name],
                    identities[item.build.name],
                    gpu_expected=gpu_expected,
                    budget=budget,
                    force=force,
                )
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
    ident: BuildIdentity,
    *,
    gpu_expected: bool,
    budget: int | None,
    force: bool,
) -> Measurement:
    suite = config.suite
    if not ident.ok:
        diag = classify(ident.error_log, expect_gpu=False)
        if diag.status in ("ok", "load_failed"):
            last = [ln.strip() for ln in ident.error_log.splitlines() if ln.strip()]
            diag = replace(diag, status="build_failed", reason=last[-1] if last else "the build cannot be imported")
        return Measurement(diag.status, diag.reason, suite.n_prompt, suite.n_gen, log=ident.error_log)
    need = estimate_need_bytes(facts, config)
    if not force and need is not None and budget is not None and need > budget:
        return Measurement(
            "skipped_does_not_fit",
            f"needs ~{need / 2**30:.1f} GiB (file + KV + compute) but the device budget is "
            f"{budget / 2**30:.1f} GiB; --force runs it anyway",
            suite.n_prompt,
            suite.n_gen,
            fields={"device_budget_bytes": budget, "model_bytes": facts.file_bytes},
        )
    spec = {
        "model_path": str(facts.path),
        "n_gpu_layers": -1 if suite.n_gpu_layers == "all" else suite.n_gpu_layers,
        "n_prompt": suite.n_prompt,
        "n_gen": suite.n_gen,
        "repetitions": item.reps,
        "warmup": suite.warmup,
        "n_batch": suite.n_batch,
        "n_ubatch": suite.n_ubatch,
        "threads": suite.threads or _default_threads(),
        "flash_attn": FLASH_ATTN[suite.flash_attn],
        "seed": item.round,
    }
    timeout_s = item.model.timeout_s or suite.timeout_s or default_timeout_s(facts)
    python = str(config.resolve(item.build.python))
    outcome = run_worker(python, build_env(config, item.build), spec, timeout_s)
    return measurement_from(outcome, config, gpu_expected=gpu_expected, timeout_s=timeout_s, budget_bytes=budget)


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

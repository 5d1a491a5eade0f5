"""`bench doctor`: is this machine fit to measure? Each check says what it saw; any failed check makes it unfit.

A check that does not apply here (pmset on Linux, a CPU governor on macOS) is reported as such, not as a
pass. The GPU check loads a tiny synthetic model with full offload in a child process and reads the load
log with the same rules as a run, so "GPU usable" means what it means for a measurement."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench import machine as machine_mod
from bench.config import Config
from bench.diagnose import ExitInfo, classify
from bench.errors import PerfgateError
from bench.metrics import Status
from bench.store.db import make_engine, resolve_url, schema_state, shown
from bench.synth import SHAPES, SynthSpec, synthesize

# a run's builds land in the build cache; a llama.cpp build tree with its objects is about this size
BUILD_CACHE_BYTES_PER_BUILD = 2 * 2**30
LOAD_PER_CORE_MAX = 0.5  # 1-minute load average per core above which timings are disturbed
HEAVY_PROCESS_CPU_PCT = 50.0  # another process using half a core or more while we sample
PROBE_TIMEOUT_S = 180.0
_BYTES_PER_WEIGHT = {"F16": 2.0, "Q8_0": 34 / 32, "Q4_0": 18 / 32}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: does not apply on this machine
    detail: str


@dataclass(frozen=True)
class Report:
    checks: list[Check]

    @property
    def fit(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.ok is False]

    def as_json(self) -> dict[str, object]:
        return {"fit": self.fit, "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def _out(cmd: list[str], timeout: float = 20) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (proc.stdout or proc.stderr).strip() if proc.returncode == 0 else None


def check_platform(info: machine_mod.MachineInfo) -> Check:
    mem = f", {info.host_mem_bytes / 2**30:.0f} GiB" if info.host_mem_bytes else ""
    return Check("platform", True, f"{info.os}, {info.arch}, {info.cpu}{mem}")


def check_cuda() -> Check | None:
    out = _out(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"])
    if out is None:
        return None
    gpus = [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.count(",") >= 2]
    if not gpus:
        return Check("gpu", False, "nvidia-smi is installed but lists no GPU")
    text = "; ".join(f"{name}, {int(mib) / 1024:.0f} GiB VRAM, driver {driver}" for name, mib, driver in gpus)
    return Check("gpu", True, f"CUDA: {text}")


def check_working_set(info: machine_mod.MachineInfo) -> Check:
    """What the fit check holds a model to on a Mac: the GPU's working-set limit, not unified memory."""
    limit = info.gpu_working_set_bytes
    if limit is None:
        return Check("gpu_working_set", None, "unknown: no unified-memory size to estimate it from")
    if info.gpu_working_set_source == "iogpu.wired_limit_mb":
        how = f"sysctl iogpu.wired_limit_mb={limit // 2**20} overrides the default recommendedMaxWorkingSetSize"
    else:
        how = "recommendedMaxWorkingSetSize estimated from unified memory (the gpu_probe load states it)"
    return Check("gpu_working_set", True, f"{limit / 2**30:.1f} GiB: {how}; models larger are skipped")


def probe_offload(python: str, expect_gpu: bool, workdir: Path) -> Check:
    """Load a tiny model with every layer offloaded, in a child of the build's interpreter, and classify the
    log as a run would (Metal: the device and its recommendedMaxWorkingSetSize come from this log)."""
    model = workdir / "probe-tiny-Q4_0.gguf"
    synthesize(SynthSpec("tiny", "Q4_0"), model)
    script = (
        "import sys, llama_cpp\n"
        "llama_cpp.Llama(model_path=sys.argv[1], n_gpu_layers=-1, n_ctx=64, verbose=True)\n"
        "print('perfgate-probe-loaded', file=sys.stderr)\n"
    )
    try:
        proc = subprocess.run(
            [python, "-c", script, str(model)], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("gpu_probe", False, f"probe load with {python} did not finish: {exc}")
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 or "perfgate-probe-loaded" not in log:
        last = [ln for ln in log.splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
        return Check("gpu_probe", False, f"probe load with {python} failed: {last[0][:240]}")
    diag = classify(log, expect_gpu=expect_gpu, layers_requested=None, exit_info=ExitInfo(proc.returncode))
    budget = diag.memory.get("device_budget_bytes")
    where = f"backend {diag.backend or 'CPU'}"
    if diag.offloaded:
        where += f", {diag.offloaded[0]}/{diag.offloaded[1]} layers offloaded"
    if budget:
        where += f", recommendedMaxWorkingSetSize {budget / 2**30:.1f} GiB"
    ok = diag.status == Status.OK
    return Check("gpu_probe", ok, where if ok else f"{diag.status}: {diag.reason} ({where})")


def _synth_bytes(shape: str, quant: str) -> int:
    s = SHAPES[shape]
    weights = 2 * s.n_vocab * s.d_model + s.n_layer * (
        2 * s.d_model**2 + 2 * s.kv_dim * s.d_model + 3 * s.d_ff * s.d_model
    )
    return int(weights * _BYTES_PER_WEIGHT[quant])


def check_disk(config: Config | None) -> Check:
    """Free space where the models live against the largest model not yet there plus the build cache."""
    if config is None:
        usage = shutil.disk_usage(".")
        return Check("disk", None, f"{usage.free / 2**30:.1f} GiB free here; no config to size models against")
    models_dir = config.resolve(config.suite.models_dir)
    largest, missing = 0, 0
    for m in config.models:
        path = config.model_path(m)
        if path.exists():
            largest = max(largest, path.stat().st_size)
        elif m.synth is not None:
            missing = max(missing, _synth_bytes(m.synth.shape, m.synth.quant))
    builds = sum(1 for b in config.builds if b.source is not None)
    need = missing + builds * BUILD_CACHE_BYTES_PER_BUILD
    probe = models_dir if models_dir.exists() else Path(".")
    free = shutil.disk_usage(probe).free
    text = (
        f"{free / 2**30:.1f} GiB free at {probe}; largest model {max(largest, missing) / 2**30:.1f} GiB "
        f"({missing / 2**30:.1f} GiB still to write), {builds} build(s) to cache: needs {need / 2**30:.1f} GiB"
    )
    return Check("disk", free >= need, text)


def check_power() -> list[Check]:
    if sys.platform == "darwin":
        batt = _out(["pmset", "-g", "batt"]) or ""
        thermal = machine_mod.parse_thermal(_out(["pmset", "-g", "therm"]) or "")
        low_power = machine_mod.parse_low_power_mode(_out(["pmset", "-g"]) or "")
        on_ac = "AC Power" in batt
        if low_power is None:
            low = Check("low_power_mode", None, "pmset -g lists no lowpowermode/powermode")
        else:
            low = Check(
                "low_power_mode",
                not low_power,
                "on: macOS holds the CPU and GPU back (`sudo pmset -a lowpowermode 0`)" if low_power else "off",
            )
        return [
            Check("power", on_ac, batt.splitlines()[0] if batt else "pmset gave no answer"),
            low,
            Check("thermal", not thermal.throttled, thermal.summary),
        ]
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    if battery is None:
        return [Check("power", None, "no battery: mains powered")]
    return [
        Check("power", bool(battery.power_plugged), f"battery {battery.percent:.0f}%, plugged={battery.power_plugged}")
    ]


def check_governor() -> Check:
    if not sys.platform.startswith("linux"):
        return Check("cpu_governor", None, "not Linux")
    files = sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor"))
    if not files:
        return Check("cpu_governor", None, "no cpufreq here (virtual machine or container)")
    governors = sorted({f.read_text().strip() for f in files})
    ok = governors == ["performance"]
    hint = "" if ok else ": `cpupower frequency-set -g performance` steadies clock speed"
    return Check("cpu_governor", ok, f"{', '.join(governors)}{hint}")


def check_load(sample_s: float = 1.0) -> list[Check]:
    cores = os.cpu_count() or 1
    load1 = os.getloadavg()[0]
    checks = [
        Check("load", load1 / cores <= LOAD_PER_CORE_MAX, f"1-minute load {load1:.2f} on {cores} cores"),
    ]
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.pid not in me]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(sample_s)
    heavy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct >= HEAVY_PROCESS_CPU_PCT:
            heavy.append(f"{p.info['name']} (pid {p.pid}, {pct:.0f}% CPU)")
    checks.append(Check("other_processes", not heavy, "; ".join(heavy[:5]) or "none above half a core"))
    return checks


def check_toolchain() -> list[Check]:
    checks = []
    for tool, cmd in (
        ("cmake", ["cmake", "--version"]),
        ("make", ["make", "--version"]),
        ("cc", [os.environ.get("CC", "cc"), "--version"]),
        ("c++", [os.environ.get("CXX", "c++"), "--version"]),
        ("git", ["git", "--version"]),
    ):
        out = _out(cmd)
        checks.append(Check(f"tool:{tool}", out is not None, out.splitlines()[0] if out else "not found"))
    if sys.platform == "darwin":
        metal = _out(["xcrun", "-f", "metal"])
        checks.append(
            Check("tool:metal", metal is not None, metal or "`xcrun -f metal` found no Metal compiler (Xcode)")
        )
    return checks


def check_database(db: str | None) -> Check:
    url = resolve_url(db)
    try:
        engine = make_engine(url, create=False)
    except PerfgateError as exc:
        if "no database there yet" in str(exc):
            return Check("database", True, f"{exc}; the first run creates it")
        return Check("database", False, str(exc))
    try:
        state = schema_state(engine)
        state.check_ours()
    except PerfgateError as exc:
        return Check("database", False, str(exc))
    finally:
        engine.dispose()
    where = shown(engine.url)
    if state.current:
        return Check("database", True, f"{where}: reachable, at the newest migration")
    if engine.dialect.name == "sqlite":
        return Check("database", True, f"{where}: older schema, upgraded by the next run")
    return Check("database", False, f"{where}: behind the newest migration: run `bench db upgrade --db {where}`")


def diagnose_machine(
    config: Config | None, db: str | None, *, probe: bool = True, python: str | None = None, sample_s: float = 1.0
) -> Report:
    info = machine_mod.collect()
    checks = [check_platform(info)]
    cuda = check_cuda()
    if cuda is not None:
        checks.append(cuda)
    elif info.gpu_kind == "metal":
        checks.append(Check("gpu", True, f"{info.gpu}, {info.host_mem_bytes or 0:_} bytes unified memory"))
        checks.append(check_working_set(info))
    else:
        checks.append(Check("gpu", None, f"no GPU found: a CPU runner ({platform.processor() or info.cpu})"))
    if probe:
        with tempfile.TemporaryDirectory(prefix="perfgate-doctor-") as tmp:
            checks.append(probe_offload(python or sys.executable, info.has_gpu, Path(tmp)))
    checks.append(check_disk(config))
    checks += check_power()
    checks.append(check_governor())
    checks += check_load(sample_s)
    checks += check_toolchain()
    checks.append(check_database(db))
    return Report(checks)

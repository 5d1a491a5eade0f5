"""What machine is this: a fingerprint for comparing like with like, and the device memory budget."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class MachineInfo:
    hostname: str
    os: str
    arch: str
    cpu: str
    gpu: str | None
    host_mem_bytes: int | None
    device_budget_bytes: int | None
    gpu_kind: str | None  # "cuda", "metal" or None
    # $PERFGATE_MACHINE_ID: runners on identical hardware (or containers on one host) kept apart on purpose
    machine_id: str | None = None
    # a Mac: what the GPU may wire (the fit check's budget) and where that figure came from
    gpu_working_set_bytes: int | None = None
    gpu_working_set_source: str | None = None  # iogpu.wired_limit_mb | recommendedMaxWorkingSetSize | estimate
    low_power_mode: bool | None = None  # pmset lowpowermode / powermode 1
    thermal: str | None = None  # pmset -g therm, summed up ("no thermal pressure recorded", "CPU_Speed_Limit 28")

    @property
    def fingerprint(self) -> str:
        # hardware and OS family only: a rebooted or renamed CI runner is the same machine
        key = "|".join([platform.system(), self.arch, self.cpu, self.gpu or "-", str(self.host_mem_bytes)])
        if self.machine_id:
            key = f"id|{self.machine_id}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def has_gpu(self) -> bool:
        return self.gpu_kind is not None

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "fingerprint": self.fingerprint}


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_name() -> str:
    if sys.platform == "darwin":
        return _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_mem_bytes() -> int | None:
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "hw.memsize"])
        return int(out) if out.isdigit() else None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def _cuda_gpus() -> tuple[str, int] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    rows = [r.split(",") for r in out.splitlines() if "," in r]
    if not rows:
        return None
    names = sorted({r[0].strip() for r in rows})
    total = sum(int(r[1].strip()) for r in rows if r[1].strip().isdigit()) * 1024 * 1024
    label = f"{len(rows)}x {names[0]}" if len(rows) > 1 else names[0]
    return label, total


# -- a Mac's GPU memory limit, power mode and thermal state ---------------------------------------------------

# Apple's recommendedMaxWorkingSetSize when nothing measured it: two thirds of unified memory up to 32 GiB
# (16 GB: 10922 MB, 32 GB M1 Max: 21845.34 MB — llama.cpp#2011), three quarters above; a load log's figure
# (ggml_metal_init prints it) replaces the estimate in the runner
_SMALL_MAC_BYTES = 32 * 2**30


def estimate_working_set(host_mem_bytes: int | None) -> int | None:
    if not host_mem_bytes:
        return None
    return host_mem_bytes * 2 // 3 if host_mem_bytes <= _SMALL_MAC_BYTES else host_mem_bytes * 3 // 4


def parse_wired_limit_mb(text: str) -> int | None:
    """`sysctl iogpu.wired_limit_mb` ("iogpu.wired_limit_mb: 0"), `sysctl -n …` ("0") or the answer to setting
    it ("iogpu.wired_limit_mb: 0 -> 14000"): the value in force, in MiB; 0 means macOS's default."""
    numbers = re.findall(r"(?<![\w.])(\d+)\b", text.split("iogpu.wired_limit_mb", 1)[-1])
    return int(numbers[-1]) if numbers else None


def parse_low_power_mode(pmset_g: str) -> bool | None:
    """`pmset -g`: "lowpowermode 1" (macOS 12-13) or "powermode 1" (14-: 0 automatic, 1 low power, 2 high
    power). None when neither is listed (a Mac without the setting)."""
    for key in ("lowpowermode", "powermode"):
        if m := re.search(rf"^\W*{key}\W+(\d+)", pmset_g, re.MULTILINE):
            return m.group(1) == "1"
    return None


@dataclass(frozen=True)
class ThermalState:
    throttled: bool
    cpu_speed_limit: int | None  # percent of full speed; below 100 the CPU is held back
    warning_level: int | None
    summary: str


def parse_thermal(pmset_therm: str) -> ThermalState:
    """`pmset -g therm` (or the same key = value lines of `pmset -g thermlog`): Apple silicon prints only
    "Note: No … has been recorded" until something is; Intel Macs print CPU_Speed_Limit and friends."""
    limits = [int(v) for v in re.findall(r"CPU_Speed_Limit\s*=\s*(\d+)", pmset_therm)]
    level_m = re.search(r"thermal warning level (?:set to|is|=)?\s*(\d+)", pmset_therm, re.IGNORECASE)
    level = int(level_m.group(1)) if level_m else None
    speed = limits[-1] if limits else None
    throttled = (speed is not None and speed < 100) or bool(level)
    if speed is not None:
        summary = f"CPU_Speed_Limit {speed}"
    elif level is not None:
        summary = f"thermal warning level {level}"
    elif "No thermal warning level has been recorded" in pmset_therm:
        summary = "no thermal pressure recorded"
    else:
        summary = "pmset reported no thermal state"
    return ThermalState(throttled, speed, level, summary)


def working_set_limit(host_mem_bytes: int | None, wired_limit_mb: int | None) -> tuple[int | None, str]:
    """What a Mac's GPU may wire: iogpu.wired_limit_mb when set (> 0: it overrides the default, and Metal's
    recommendedMaxWorkingSetSize reports it), else the estimate of that default."""
    if wired_limit_mb:
        return wired_limit_mb * 2**20, "iogpu.wired_limit_mb"
    return estimate_working_set(host_mem_bytes), "estimate"


@dataclass(frozen=True)
class MacFacts:
    wired_limit_mb: int | None
    working_set_bytes: int | None
    working_set_source: str
    low_power_mode: bool | None
    thermal: ThermalState


def mac_facts(host_mem_bytes: int | None) -> MacFacts:
    """This Mac's GPU working-set limit, low-power mode and thermal state, as sysctl and pmset say them."""
    wired = parse_wired_limit_mb(_run(["sysctl", "iogpu.wired_limit_mb"]))
    limit, source = working_set_limit(host_mem_bytes, wired)
    low_power = parse_low_power_mode(_run(["pmset", "-g"]))
    return MacFacts(wired, limit, source, low_power, parse_thermal(_run(["pmset", "-g", "therm"])))


def collect() -> MachineInfo:
    host_mem = _host_mem_bytes()
    gpu, budget, kind = None, host_mem, None
    if cuda := _cuda_gpus():
        gpu, budget, kind = cuda[0], cuda[1], "cuda"
    mac = None
    if cuda is None and sys.platform == "darwin" and platform.machine() == "arm64":
        gpu, kind = f"{_cpu_name()} GPU (Metal)", "metal"
        # the fit check judges a model against what the GPU may wire, not against unified memory
        mac = mac_facts(host_mem)
        budget = mac.working_set_bytes
    return MachineInfo(
        hostname=socket.gethostname(),
        os=platform.platform(),
        arch=platform.machine(),
        cpu=_cpu_name(),
        gpu=gpu,
        host_mem_bytes=host_mem,
        device_budget_bytes=budget,
        gpu_kind=kind,
        machine_id=os.environ.get("PERFGATE_MACHINE_ID") or None,
        gpu_working_set_bytes=mac.working_set_bytes if mac else None,
        gpu_working_set_source=mac.working_set_source if mac else None,
        low_power_mode=mac.low_power_mode if mac else None,
        thermal=mac.thermal.summary if mac else None,
    )

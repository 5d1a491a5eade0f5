"""What machine is this: a fingerprint for comparing like with like, and the device memory budget."""

from __future__ import annotations

import hashlib
import os
import platform
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


def collect() -> MachineInfo:
    host_mem = _host_mem_bytes()
    gpu, budget, kind = None, host_mem, None
    if cuda := _cuda_gpus():
        gpu, budget, kind = cuda[0], cuda[1], "cuda"
    elif sys.platform == "darwin" and platform.machine() == "arm64":
        gpu, kind = f"{_cpu_name()} GPU (Metal)", "metal"
        # Metal's recommendedMaxWorkingSetSize is about 3/4 of unified memory on Apple silicon;
        # the load log states the exact figure, which replaces this estimate once a model loads
        budget = int(host_mem * 0.75) if host_mem else None
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
    )

"""Load logs → status, the line that decided it, layers offloaded, memory per device.

Rules name kinds of failure, not particular logs: the same kind is written by llama.cpp (old
`llm_load_tensors:` and new `load_tensors:` prefixes), llama-cpp-python, llama-bench, KoboldCPP and
ollama in slightly different words. Failures are checked most specific first: a Metal shader that
does not compile also makes "failed to initialize Metal backend" and "failed to create context".
"""

from __future__ import annotations

import re
import signal as signal_module
from dataclasses import dataclass, field
from typing import Any

_FAILURE_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "build_failed",
        re.compile(
            r"Failed to load shared library|Shared library with base name '\w+' not found"
            r"|cannot open shared object file|No module named '?llama_cpp"
            r"|Library not loaded: .*llama|undefined symbol: (llama|ggml)_|duplicate symbols? for architecture",
            re.I,
        ),
    ),
    (
        "file_not_found",
        re.compile(
            r"model path does not exist|failed to open GGUF file .*(no such file|not found)"
            r"|gguf_init_from_file: failed to open .*No such file",
            re.I,
        ),
    ),
    (
        "shader_compile_failed",
        re.compile(
            r"program_source:\d+:\d+: (fatal )?error|MTLLibraryErrorDomain Code=3"
            r"|failed to compile (the )?(metal )?(shader|pipeline|library|kernel)|shader compil\w+ fail",
            re.I,
        ),
    ),
    (
        "out_of_memory",
        re.compile(
            r"out of memory|cudaMalloc failed|hipMalloc failed|Insufficient Memory|ErrorOutOfDeviceMemory"
            r"|ErrorOutOfMemory|failed to allocate \S+ buffer|unable to allocate \S+ buffer"
            r"|failed to allocate compute buffers|std::bad_alloc|not enough memory|cannot allocate memory",
            re.I,
        ),
    ),
    (
        "invalid_gguf",
        re.compile(
            r"invalid magic|not within the file bounds|model is corrupted or incomplete"
            r"|failed to read (key-value|tensor info|the header|magic)|invalid gguf"
            r"|gguf_init_from_\w+: .*(invalid|unsupported) (version|header)"
            r"|tensor '.*' has (invalid|wrong) (shape|number of elements)"
            r"|GGUF file version \d+ is (too new|unsupported)"
            r"|unexpectedly reached end of file|gguf_init_from_file_impl: failed to read",
            re.I,
        ),
    ),
    ("unsupported_architecture", re.compile(r"unknown (model )?architecture|unsupported (model )?architecture", re.I)),
    (
        "metal_init_failed",
        re.compile(
            r"failed to initialize Metal backend|ggml_metal_init: error|ggml_backend_metal_init: error"
            r"|failed to create Metal (device|library|command queue)"
            r"|Metal (device|backend) (not found|unavailable)",
            re.I,
        ),
    ),
    (
        "context_failed",
        re.compile(
            r"failed to create (llama_)?context|Failed to create llama_context|llama_init_from_model: failed"
            r"|failed to initialize the context|error: failed to create context",
            re.I,
        ),
    ),
]

_CRASH_LINE = re.compile(
    r"GGML_ASSERT\(.*\) failed|^\S+:\d+: .*\b(CUDA|Metal|Vulkan|HIP)? ?error\b|CUDA error: .*|ggml_abort"
    r"|Segmentation fault|Aborted \(core dumped\)|terminate called after",
    re.I,
)
_CRASH_DETAIL = re.compile(r"GGML_ASSERT\(.*\) failed|CUDA error: .+|no kernel image is available.*", re.I)
_LOAD_FAILED = re.compile(r"failed to load model|error loading model|Failed to load model|could not load", re.I)
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(
    r"(?P<dev>[A-Za-z][\w]*?)(?:_Mapped|_REPACK|_Private|_Shared)?\s+(?P<kind>model |KV |compute |)"
    r"buffer size\s*=\s*(?P<mib>[\d.]+) MiB"
)
_WORKING_SET = re.compile(r"recommendedMaxWorkingSetSize\s*=\s*([\d.]+) MB")
_GPU_INIT = re.compile(r"ggml_metal_init: found device|ggml_cuda_init: found \d+ CUDA devices")
_VRAM = re.compile(r"Device \d+: .*?VRAM: (\d+) MiB")
_GPU_DEVICE = re.compile(r"^(CUDA\d*|Metal|Vulkan\d*|ROCm\d*|SYCL\d*|MUSA\d*|CANN\d*|OpenCL)$", re.I)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Diagnosis:
    status: str
    reason: str
    offloaded: tuple[int, int] | None = None
    backend: str | None = None
    memory: dict[str, Any] = field(default_factory=dict)

    def as_json(self, file: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"file": file} if file is not None else {}
        out.update(
            status=self.status,
            reason=self.reason,
            offloaded=list(self.offloaded) if self.offloaded else None,
            memory=self.memory,
        )
        return out


@dataclass(frozen=True)
class ExitInfo:
    """How the process that wrote the log ended, when perfgate ran it."""

    returncode: int | None = None
    timed_out: bool = False
    timeout_s: float | None = None


def _device_family(dev: str) -> str:
    return re.sub(r"\d+$", "", dev)


def parse_memory(lines: list[str]) -> dict[str, Any]:
    """Model/KV/compute buffer bytes per device (max over contexts), plus device budgets."""
    buffers: dict[str, dict[str, int]] = {"model": {}, "kv": {}, "compute": {}}
    for line in lines:
        if "buffer size is" in line or "output buffer" in line:
            continue
        m = _BUFFER.search(line)
        if not m:
            continue
        kind = m["kind"].strip().lower() or "model"
        if kind == "kv" or "KV self" in line:
            kind = "kv"
        dev = m["dev"]
        size = int(float(m["mib"]) * MIB)
        slot = buffers[kind]
        if kind == "model":
            slot[dev] = slot.get(dev, 0) + size if _is_mapped_variant(line, dev) else max(slot.get(dev, 0), size)
        else:
            slot[dev] = max(slot.get(dev, 0), size)
    memory: dict[str, Any] = {k: v for k, v in buffers.items() if v}
    for line in lines:
        if m := _WORKING_SET.search(line):
            memory["device_budget_bytes"] = int(float(m[1]) * 1e6)
        elif m := _VRAM.search(line):
            memory["device_budget_bytes"] = memory.get("device_budget_bytes", 0) + int(m[1]) * MIB
    return memory


def _is_mapped_variant(line: str, dev: str) -> bool:
    # CPU_Mapped and CPU_REPACK are two buffers of one device: they add up
    return bool(re.search(rf"{dev}_(Mapped|REPACK)", line))


def gpu_devices(memory: dict[str, Any]) -> list[str]:
    devs = {d for kind in ("model", "kv", "compute") for d in memory.get(kind, {})}
    return sorted(d for d in devs if _GPU_DEVICE.match(d))


def _first(lines: list[str], pattern: re.Pattern[str]) -> str | None:
    # a Python traceback quotes its source ('raise ValueError(f"...")'): the message line says more
    return next(
        (line.strip() for line in lines if pattern.search(line) and not line.lstrip().startswith(("raise ", 'File "'))),
        None,
    )


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _crash(lines: list[str], exit_info: ExitInfo) -> Diagnosis | None:
    rc = exit_info.returncode
    sig_name = None
    if rc is not None and rc < 0:
        sig_name = signal_module.Signals(-rc).name if -rc in signal_module.valid_signals() else f"signal {-rc}"
    elif rc is not None and rc > 128 and rc - 128 in (6, 11, 7, 4, 8):  # a shell reporting a child's signal
        sig_name = signal_module.Signals(rc - 128).name
    crash_line = _first(lines, _CRASH_LINE)
    if sig_name is None and crash_line is None:
        return None
    detail = _first(lines, _CRASH_DETAIL) or crash_line
    parts = [p for p in (sig_name, detail) if p]
    return Diagnosis("crashed", _clip(": ".join(parts)))


def classify(
    text: str,
    *,
    expect_gpu: bool,
    layers_requested: int | None = None,
    exit_info: ExitInfo | None = None,
    layers_total: int | None = None,
) -> Diagnosis:
    """Classify one load log. `layers_requested` None means all layers were asked for; `layers_total`
    is the model's offloadable layer count when known from elsewhere (CPU builds do not log it)."""
    exit_info = exit_info or ExitInfo()
    lines = text.splitlines()
    memory = parse_memory(lines)
    off_line = _first(lines, _OFFLOADED)
    offloaded = tuple(int(x) for x in _OFFLOADED.search(off_line).groups()) if off_line else None  # type: ignore[union-attr]
    gpus = gpu_devices(memory)
    if gpus:
        backend: str | None = _device_family(gpus[0])
    elif init := _first(lines, _GPU_INIT):
        backend = "Metal" if "metal" in init.lower() else "CUDA"
    else:
        backend = "CPU" if any(k in memory for k in ("model", "kv", "compute")) else None

    def verdict(status: str, reason: str) -> Diagnosis:
        return Diagnosis(status, _clip(reason), offloaded, backend, memory)  # type: ignore[arg-type]

    if exit_info.timed_out:
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")
        return verdict("timeout", f"no result after {exit_info.timeout_s:g} s; last log line: {last}")
    for status, pattern in _FAILURE_RULES:
        if line := _first(lines, pattern):
            return verdict(status, line)
    if exit_info.returncode == -signal_module.SIGKILL:
        return verdict("out_of_memory", "killed by SIGKILL without a timeout: the kernel's OOM killer")
    if crash := _crash(lines, exit_info):
        return verdict(crash.status, crash.reason)
    if (exit_info.returncode not in (None, 0)) or _first(lines, _LOAD_FAILED):
        line = _first(lines, _LOAD_FAILED) or f"worker exited with code {exit_info.returncode}"
        return verdict("load_failed", line)
    if expect_gpu and not gpus:
        where = off_line or _first(lines, re.compile(r"buffer size\s*=")) or "no GPU buffer in the log"
        return verdict("cpu_fallback", f"a GPU was expected but no GPU buffer was used: {where}")
    if offloaded and offloaded[0] < offloaded[1] and (layers_requested is None or layers_requested >= offloaded[1]):
        return verdict("partial_offload", off_line or "")
    if layers_requested is not None:
        total = offloaded[1] if offloaded else layers_total
        if total is None or layers_requested < total:
            shown = f"{layers_requested}/{total}" if total else str(layers_requested)
            return verdict("partial_offload", f"only {shown} layers were asked to be offloaded (n_gpu_layers)")
    return verdict("ok", off_line or ("loaded on the CPU as expected" if not expect_gpu else "loaded"))

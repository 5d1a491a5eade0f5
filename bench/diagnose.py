"""Load logs → status, the phase the load reached, the line that decided it, offload, memory.

A load goes through phases: library/build → backend init → model file → tensors/offload → context →
first decode → done. Each rule names a kind of failure (not a particular log) and the phase it belongs
to; the earliest phase with a failure decides, and within a phase the most specific kind wins. So a
Metal shader that does not compile, which also makes "failed to initialize Metal backend" and "failed
to create context", is a shader failure; an assert after it is a consequence.

`ok` needs proof: the worker's `phase=done`, a context that was built, a benchmark result, KoboldCPP's
"Load Text Model OK: True"; and, where a GPU was expected, device buffers (recognised by the shape of
the buffer line, not by a list of backend names) or a llama-bench row on a GPU backend. A log that shows
a load under way but stops with neither proof nor a known cause, and whose process end is unknown (a
pasted excerpt), is `log_incomplete`: what it shows is reported, and that its end is missing. A log that
shows no load at all, or one whose process exited with neither, is `load_failed`.

Every pattern is compiled by RE2, whose matching time is linear in the input: a log is scanned once
for cue words (`_CUES`), and only the lines near one are matched against the rules.
"""

from __future__ import annotations

import signal as signal_module
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import re2  # type: ignore[import-untyped]

from bench.metrics import Status

MIB = 1024 * 1024
_MAX_LINE_BYTES = 64 * 1024


class Phase(IntEnum):
    """How far a load got. Ordered: a failure in an earlier phase explains the ones after it."""

    START = 0
    LIBRARY = 1
    BACKEND = 2
    MODEL = 3
    TENSORS = 4
    CONTEXT = 5
    DECODE = 6
    DONE = 7

    @property
    def label(self) -> str:
        return _PHASE_LABELS[self]


_PHASE_LABELS = {
    Phase.START: "start",
    Phase.LIBRARY: "library/build",
    Phase.BACKEND: "backend init",
    Phase.MODEL: "model file",
    Phase.TENSORS: "tensors/offload",
    Phase.CONTEXT: "context",
    Phase.DECODE: "first decode",
    Phase.DONE: "done",
}


@dataclass(frozen=True)
class _Failure:
    status: Status
    pattern: str
    phase: Phase | None = None  # None: the phase the log had reached at that line


# Most specific first: within one phase the first kind that matches decides.
_FAILURES: tuple[_Failure, ...] = (
    _Failure(
        Status.BUILD_FAILED,
        # every linker's words for one object twice, or a symbol missing
        r"duplicate symbols?\b|multiple definition of|undefined (symbol|reference)|Undefined symbols for architecture"
        r"|symbol\(s\) not found|ld returned \d+ exit status|linker command failed"
        # the library the engine needs is absent or unloadable
        r"|Library not loaded|cannot open shared object file|Failed to load shared library"
        r"|Shared library with base name|invalid ELF header|wrong ELF class|incompatible architecture \(have"
        r"|No module named '?llama_cpp|DLL load failed|error while loading shared libraries"
        r"|^(ImportError|ModuleNotFoundError): "
        # a GPU library installed without what this device needs
        r"|rocBLAS error: (Cannot read|Could not)|hipErrorNoBinaryForGpu|No compatible code objects found"
        # the compiler stopped
        r"|^\S+\.(c|cc|cpp|cxx|h|hpp|m|mm|cu|cuh):\d+:\d+: (fatal )?error:|make(\[\d+\])?: \*\*\*|CMake Error"
        r"|ninja: build stopped|Failed building wheel",
        Phase.LIBRARY,
    ),
    _Failure(
        Status.SHADER_COMPILE_FAILED,
        r"program_source:\d+:\d+: (fatal )?error|MTLLibraryErrorDomain Code=3|In file included from program_source"
        r"|\.metal:\d+:\d+: (fatal )?error"
        # the Metal 4 tensor API (MetalPerformancePrimitives) rejecting the shader source on a new macOS
        r"|MetalPerformancePrimitives[^\n]*error|MPPTensorOps\w*\.h:\d+|__tensor_ops_detail|cooperative tensor types"
        # the GPU compiler rejecting a kernel when its pipeline is built
        r"|load pipeline error|SC compilation failure|Error Domain=CompilerError|Compiler encountered an internal error"
        r"|unlowered function call|computeFunction must not be nil|failed to (create|build) (the )?(compute )?pipeline"
        r"|newComputePipelineState\w*[^\n]*(fail|error)"
        r"|failed to compile (the )?(metal |vulkan )?(shader|pipeline|library|kernel)|shader compil\w* (fail|error)"
        r"|error compiling (shader|pipeline)",
        Phase.BACKEND,
    ),
    _Failure(
        Status.METAL_INIT_FAILED,
        r"(?i)failed to initiali[sz]e (the )?Metal|ggml_metal_init\(\) failed|ggml_metal_init: error"
        r"|ggml_(backend_)?metal_\w*init: error|failed to create Metal (device|library|command queue)"
        r"|Metal (device|backend) (not found|unavailable)",
        Phase.BACKEND,
    ),
    _Failure(
        Status.SKIPPED_DOES_NOT_FIT,
        r"(?i)requires more (system |gpu |video )?memory \(",
        Phase.MODEL,
    ),
    _Failure(
        Status.FILE_NOT_FOUND,
        r"(?i)model path does not exist|cannot find (text )?model file|failed to open GGUF file"
        r"|gguf_init_from_file\w*: failed to open|failed to load GGUF split|model file (not found|does not exist)"
        r"|\.(gguf|bin)'?\"?:? \(?No such file|No such file or directory: '[^']*\.(gguf|bin)'",
        Phase.MODEL,
    ),
    _Failure(
        Status.INVALID_GGUF,
        r"(?i)invalid magic|bad magic|unknown \(magic, version\)|is this really a GGML file|not within the file bounds"
        r"|corrupted or incomplete|(invalid|illegal) split file|failed to read (key-value|tensor info|the header|magic)"
        r"|gguf_init_from_\w+: (invalid|failed to read)|GGUF file version \d+ is (too new|unsupported)"
        r"|unexpectedly reached end of file|Unidentified Model Encountered|Unknown Model, cannot load"
        r"|invalid model file|not a valid gguf|tensor '[^']*' has (invalid|wrong)"
        # the file lacks what the loader needs
        r"|error loading model (vocabulary|hyperparameters)|cannot find tokenizer|key not found in model"
        r"|missing tensor '|wrong number of tensors",
        Phase.MODEL,
    ),
    _Failure(
        Status.UNSUPPORTED_ARCHITECTURE,
        r"(?i)unknown (model )?architecture|unsupported (model )?architecture"
        r"|architecture '?[\w.-]+'? (is )?not supported",
        Phase.MODEL,
    ),
    _Failure(
        Status.OUT_OF_MEMORY,
        r"(?i)out of memory|(cuda|hip)Malloc failed|insufficient (device )?memory|ErrorOutOf(Device|Host)Memory"
        r"|OUT_OF_(HOST|DEVICE)_MEMORY|(failed|unable) to allocate (\w+ ){0,3}buffers?"
        r"|bad_alloc|not enough memory|cannot allocate memory|Device memory allocation of size \d+"
        r"|kv_cache_init\(\) failed|too large to fit in a \w+ buffer|MemoryError|can't allocate \d+ Bytes"
        # a buffer over the device's limit, and what a failed allocation leaves for the compute that follows
        r"|buffer[^\n]{0,60} is larger than (the )?(buffer )?max(imum)?|must not exceed \d+ ?[MG]i?B"
        r"|exceeds (the )?(device )?(memory allocation|max(imum)? buffer)|buffer is nil"
        # Metal: a command buffer that fails with status 5 (MTLCommandBufferStatusError) ran out of GPU memory
        r"|command buffer \d+ failed with status 5|CallbackErrorOutOfMemory",
    ),
    _Failure(
        Status.CONTEXT_FAILED,
        r"(?i)failed to (create|initiali[sz]e) (the |a )?(llama_)?context|llama_init_from_model: failed"
        r"|could not create context",
        Phase.CONTEXT,
    ),
    _Failure(
        Status.TIMEOUT,
        r"(?i)timed out waiting for|context deadline exceeded|timed out after \d+",
    ),
    _Failure(
        Status.CRASHED,
        r"GGML_ASSERT|ggml_abort|Assertion .* failed|Segmentation fault|SIGSEGV|SIGABRT|SIGBUS|SIGILL"
        r"|[Ii]llegal (hardware )?instruction|invalid opcode|Aborted|Abort trap|Bus error|terminate called|core dumped"
        r"|(CUDA|ROCm|HIP|SYCL|Vulkan|Metal) error|vk::\w+Error|no kernel image is available|double free"
        r"|stack smashing|^\S+:\d+: fatal error$|^panic:|EXCEPTION_ACCESS_VIOLATION|STATUS_\w+_(VIOLATION|OVERRUN)"
        r"|Trace/BPT trap|Native API failed|exit status 0xc0000\w+|\bhas crashed\b"
        r"|signal: (illegal|segmentation|abort|bus error|floating point)"
        # Windows crash codes however they are printed: illegal instruction, access violation, fail-fast abort
        r"|0x[cC]0000(01[dD]|005|409)\b|-107374(1795|1819|0791)\b"
        # a child's exit code as its parent reports it: 128 + SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV
        r"|(?i:exit code|exit status|exited with code)\W{0,3}(132|134|135|136|139)\b",
    ),
    _Failure(
        Status.LOAD_FAILED,
        r"(?i)error loading model|failed to load model|unable to load model|could not load (text )?model"
        r"|Load Text Model OK: False|unrecognized arguments|llama runner process has terminated|model_load_failed"
        r"|^\w*(Error|Exception): ",
    ),
)

# A line that matches one of these is a warning, whatever failure words it also has.
_BENIGN = (r"pinned memory|library file not found|Failsafe library",)

# A GPU backend that finds no device: with a GPU expected, the load went to the CPU.
_NO_GPU = (
    r"(?i)no CUDA-capable device|no CUDA devices found|CUDA will be disabled|ggml_vulkan: No devices found"
    r"|No GPU Backend found|(CuBLAS|CLBlast|Vulkan|hipBLAS|ROCm) library file not found|Attempting to use CPU library"
    r"|found 0 (CUDA|Vulkan|SYCL|ROCm) devices|no usable GPU"
    # a build without any GPU backend, asked for GPU layers
    r"|not compiled with GPU offload support|compiled without GPU support|gpu-layers option will be ignored"
)

# The first line of each phase: the log got at least that far.
_PROGRESS: tuple[tuple[Phase, str], ...] = (
    (Phase.LIBRARY, r"Initializing dynamic library|llama_cpp_python|system_info:|System Info:|build: \d+"),
    (
        Phase.BACKEND,
        r"ggml_cuda_init|ggml_init_cublas|ggml_metal_init|ggml_vulkan:|ggml_check_sycl|load_backend:"
        r"|found \d+ SYCL devices|using device|Initializing CUDA",
    ),
    (
        Phase.MODEL,
        r"llama_model_loader:|gguf_init_from|llama\.cpp: loading model|llama_model_load|print_info:"
        r"|llm_load_print_meta|perfgate-worker: phase=load|Loading (Text )?[Mm]odel|loading model",
    ),
    (Phase.TENSORS, r"load_tensors:|llm_load_tensors:|offloaded \d+/\d+ layers|print_backend_buffers_info"),
    (
        Phase.CONTEXT,
        r"llama_context|llama_new_context_with_model|llama_init_from_model|llama_kv_cache|kv self size"
        r"|perfgate-worker: phase=context",
    ),
    (
        Phase.DECODE,
        r"perfgate-worker: phase=decode|warming up the model|Starting model warm up|llama_decode|sampler seed:"
        r"|^generate: n_ctx",
    ),
)

# Proof that the load finished: a context was built, or a result came out.
_SUCCESS: tuple[tuple[Phase, str], ...] = (
    (Phase.CONTEXT, r"graph splits\s*=|compute buffer size\s*=|Load Text Model OK: True"),
    (
        Phase.DONE,
        r"perfgate-worker: phase=done|Benchmark Completed|\|\s*(pp|tg|pg) ?\d+[^|]*\|\s*[\d.]+ ± [\d.]+\s*(\||$)"
        r"|\"avg_ts\"\s*:|llama_print_timings:\s+eval time|llama_perf_context_print:\s+eval time"
        r"|llama_perf_sampler_print|decoded \d+ tokens in|llama runner started in|main: model loaded",
    ),
)

# Words one of which every per-line rule contains (case-insensitive). The scan looks for these plain words
# only, which RE2 does at memory speed; the full rules then run on the few lines that have one.
# tests/test_diagnose.py checks that no corpus line a rule matches is missed by these words.
# fmt: off
_CUES = (
    # failures and crashes
    "error", "fail", "fault", "ggml_abort", "aborted", "abort trap", "assert", "illegal", "terminate",
    "core dumped", "trap", "panic", "sigsegv", "sigabrt", "sigbus", "sigill", "kernel image", "double free",
    "stack smashing", "exception", "violation", "overrun", "exit status", "could not", "unable", "timed out",
    "deadline", "ok: false", "unrecognized", "crash", "opcode", "signal: ", "exit code", "exited with code",
    "0xc0000", "-107374",
    # library and build
    "duplicate symbol", "multiple definition", "undefined", "symbol(s) not found", "ld returned",
    "library not loaded", "shared object", "shared librar", "elf header", "elf class", "incompatible architecture",
    "no module named", "dll load", "***", "build stopped", "hiperror", "code objects",
    # backend
    "program_source", "mtllibrary", "shader", "metal", "no cuda", "will be disabled", "no devices", "no gpu",
    "library file not found", "cpu library", "found 0", "no usable", "pipeline", "compil", "tensor_ops",
    "cooperative tensor", "mpptensorops", "unlowered", "gpu offload", "gpu support", "will be ignored",
    # model file
    "requires more", "does not exist", "cannot find", "no such file", "model file", "invalid", "magic", "ggml file",
    "file bounds", "corrupted", "split file", "gguf file version", "end of file", "unidentified", "unknown",
    "unsupported", "not supported", "has wrong", "valid gguf", "tokenizer", "key not found", "missing tensor",
    "wrong number",
    # memory, buffers, offload, results
    "memory", "allocate", "bad_alloc", "too large", "buffer size", "offloaded", "vram", "larger than", "exceed",
    "buffer is nil", "layers.offload=",
    "recommendedmaxworkingsetsize", "| model", "| backend", "± ", '"model weights"', '"kv cache"', '"compute graph"',
)
# fmt: on

_OFFLOADED = re2.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# ollama's scheduler states its plan before the runner starts: layers.model=62 layers.offload=0
_OFFLOAD_PLAN = re2.compile(r"layers\.model=(\d+) layers\.offload=(\d+)")
_VRAM_USED = re2.compile(r"VRAM used: [\d.]+ M")
# ollama's own engine reports its buffers per device in its own words
_ENGINE_BUFFER = re2.compile(r'msg="(model weights|kv cache|compute graph)" device=(\S+) size="([\d.]+) ([KMG]i?B|B)"')
_ENGINE_KINDS = {"model weights": "model", "kv cache": "kv", "compute graph": "compute"}
_UNIT_BYTES = {"B": 1, "KB": 1024, "KiB": 1024, "MB": MIB, "MiB": MIB, "GB": 1024 * MIB, "GiB": 1024 * MIB}
_WORKING_SET = re2.compile(r"recommendedMaxWorkingSetSize\s*=\s*([\d.]+) MB")
_VRAM = re2.compile(r"Device \d+: .*VRAM: (\d+) MiB")
_LIBRARY_RAN = re2.compile(r"\blib(llama|ggml)[\w.-]*\.(so|dylib|dll)\b")
# a results table as llama-bench prints it, or pasted as GitHub markdown (no outer pipes)
_BENCH_HEADER = re2.compile(r"^\|?\s*model\s*\|.*\|\s*backend\s*\|")
_HOST_DEVICES = ("CPU", "BLAS", "AMX", "ACCELERATE")
_BUFFER_VARIANTS = ("_Mapped", "_REPACK", "_Split", "_AARCH64", "_Private", "_Shared")
_BUFFER_KINDS = {"model": "model", "kv": "kv", "compute": "compute", "output": "output", "rs": "kv", "input": "compute"}


def _compile_rules() -> tuple[Any, Any, list[tuple[str, Any]]]:
    """One RE2 pass finds the lines worth reading (any failure, warning, no-GPU, buffer or offload line);
    an RE2 set then says which rules a line matches."""
    per_line = [(f"fail:{i}", f.pattern) for i, f in enumerate(_FAILURES)]
    per_line += [("benign", p) for p in _BENIGN] + [("no_gpu", _NO_GPU)]
    per_line += [
        ("buffer", r"buffer size\s*=\s*[\d.,]+ ?MiB"),
        ("engine_buffer", _ENGINE_BUFFER.pattern),
        ("offload", _OFFLOADED.pattern),
        ("plan", _OFFLOAD_PLAN.pattern),
        ("vram", _VRAM_USED.pattern),
        ("budget", _WORKING_SET.pattern + "|" + _VRAM.pattern),
        ("bench", _BENCH_HEADER.pattern + r"|\|\s*(pp|tg|pg) ?\d+[^|]*\|\s*[\d.]+ ± "),
    ]
    options = re2.Options()
    options.max_mem = 256 << 20
    rule_set = re2.Set.SearchSet(options)
    for _, pattern in per_line:
        rule_set.Add(_inline_flags(pattern))
    rule_set.Compile()
    # lines with a cue, and up to three lines between two of them, are one match: an RE2 call costs
    # microseconds, so fewer, longer matches; the lines in between are read too (each distinct line once)
    cue_line = "[^\n]*(?:" + "|".join(re2.escape(c) for c in _CUES) + ")[^\n]*"
    trigger = re2.compile(f"(?im)^{cue_line}(?:(?:\n[^\n]*){{0,3}}\n{cue_line})*", options)
    return trigger, rule_set, per_line


def _inline_flags(pattern: str) -> str:
    # RE2 takes (?i) only at the start of a whole pattern; wrapped in a group it becomes (?i:...)
    return f"(?i:{pattern[4:]})" if pattern.startswith("(?i)") else f"(?m:{pattern})"


_TRIGGER, _RULE_SET, _RULES = _compile_rules()
_BUILD_RULE = f"fail:{next(i for i, f in enumerate(_FAILURES) if f.status is Status.BUILD_FAILED)}"
_SHADER_RULE = f"fail:{next(i for i, f in enumerate(_FAILURES) if f.status is Status.SHADER_COMPILE_FAILED)}"
_PROGRESS_RE = [(phase, p, False) for phase, p in _PROGRESS] + [(phase, p, True) for phase, p in _SUCCESS]


@dataclass(frozen=True)
class Diagnosis:
    status: str
    reason: str
    offloaded: tuple[int, int] | None = None
    backend: str | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    phase: str = Phase.START.label  # where the deciding failure happened, else the last phase the log shows
    line_no: int | None = None  # 1-based line of the deciding line, when one line decided

    def as_json(self, file: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"file": file} if file is not None else {}
        out.update(
            status=self.status,
            phase=self.phase,
            line_no=self.line_no,
            reason=self.reason,
            offloaded=list(self.offloaded) if self.offloaded else None,
            backend=self.backend,
            memory=self.memory,
        )
        return out


@dataclass(frozen=True)
class ExitInfo:
    """How the process that wrote the log ended, when perfgate ran it."""

    returncode: int | None = None
    timed_out: bool = False
    timeout_s: float | None = None


@dataclass
class _Buffer:
    device: str
    kind: str
    size_bytes: int
    summed: bool  # one of several buffers of one device (CPU_Mapped + CPU_REPACK, CUDA0_Split + CUDA0)


def _parse_buffer(line: str) -> _Buffer | None:
    """'<prefix>: <device> [model|KV|compute|output] buffer size = N MiB', where <device> may hold spaces
    (a GPU's marketing name); or ollama's 'msg="kv cache" device=CUDA0 size="1.3 GiB"'."""
    if engine := _ENGINE_BUFFER.search(line):
        kind, device, size, unit = engine.groups()
        return _Buffer(device, _ENGINE_KINDS[kind], int(float(size) * _UNIT_BYTES[unit]), False)
    head, sep, tail = line.partition("buffer size")
    if not sep or tail.lstrip().startswith("is"):
        return None
    value = tail.partition("=")[2].split(maxsplit=1)
    try:
        size_mib = float(value[0].replace(",", ".")) if value else None
    except ValueError:
        size_mib = None
    if size_mib is None:
        return None
    words = head.rsplit(":", 1)[-1].split()
    kind = "model"
    if words and words[-1].lower() in _BUFFER_KINDS:
        kind = _BUFFER_KINDS[words.pop().lower()]
    if not words:
        return None
    device = " ".join(words)
    summed = False
    for variant in _BUFFER_VARIANTS:
        if device.endswith(variant):
            device, summed = device[: -len(variant)], True
    return _Buffer(device, kind, int(size_mib * MIB), summed)


def is_device(name: str) -> bool:
    """A buffer on a GPU (CUDA0, ROCm0, Vulkan0, SYCL0, Metal, MTL0, 'NVIDIA GeForce RTX 4090'), not
    host memory (CPU, CPU_Mapped, CUDA_Host, Metal_Host...)."""
    upper = name.upper()
    return bool(name) and not upper.endswith("_HOST") and upper.split("_")[0] not in _HOST_DEVICES


def _add_buffer(buffers: dict[str, dict[str, int]], buf: _Buffer) -> None:
    if buf.kind == "output":
        return
    slot = buffers[buf.kind]
    if buf.kind == "model" and buf.summed:
        slot[buf.device] = slot.get(buf.device, 0) + buf.size_bytes
    else:
        slot[buf.device] = max(slot.get(buf.device, 0), buf.size_bytes)


def _budget(line: str, memory: dict[str, Any]) -> None:
    if m := _WORKING_SET.search(line):
        memory["device_budget_bytes"] = int(float(m.group(1)) * 1e6)
    elif m := _VRAM.search(line):
        memory["device_budget_bytes"] = memory.get("device_budget_bytes", 0) + int(m.group(1)) * MIB


def parse_memory(lines: list[str]) -> dict[str, Any]:
    """Model/KV/compute buffer bytes per device (max over contexts), plus device budgets."""
    return _scan("\n".join(lines)).memory


def gpu_devices(memory: dict[str, Any]) -> list[str]:
    devs = {d for kind in ("model", "kv", "compute") for d in memory.get(kind, {})}
    return sorted(d for d in devs if is_device(d))


@dataclass
class _Hit:
    status: Status
    phase: Phase
    priority: int
    line_no: int
    line: str


@dataclass
class _Scan:
    hits: list[_Hit] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    offloaded: tuple[int, int] | None = None
    offload_line: tuple[int, str] | None = None
    offload_from_log: bool = False  # the engine said what it offloaded (not only what it planned)
    kv_lines: dict[str, tuple[int, str]] = field(default_factory=dict)  # first KV buffer line per device
    no_gpu_line: tuple[int, str] | None = None
    gpu_seen_line: tuple[int, str] | None = None
    bench_backends: set[str] = field(default_factory=set)
    bench_gpu_layers: int | None = None
    phase_lines: dict[Phase, int] = field(default_factory=dict)  # first line of each phase reached
    success: tuple[Phase, int | None, str] | None = None  # line None: the proof came from outside the log
    last_line: tuple[int, str] | None = None

    def phase_at(self, line_no: int) -> Phase:
        reached = [p for p, n in self.phase_lines.items() if n <= line_no]
        return max(reached, default=Phase.START)

    @property
    def reached(self) -> Phase:
        return max(self.phase_lines, default=Phase.START)


def _scan(text: str) -> _Scan:
    data = text.encode("utf-8", "replace")
    reader = _LineReader()
    line_no, counted_to = 1, 0
    for m in _TRIGGER.finditer(data):
        run_start, run_end = m.span()
        line_no += data.count(b"\n", counted_to, run_start)
        counted_to = run_start
        for offset, raw in enumerate(data[run_start:run_end].split(b"\n")):
            reader.read(raw, line_no + offset)
    scan = reader.scan
    scan.memory = {**{k: v for k, v in reader.buffers.items() if v}, **scan.memory}
    _progress(data, scan)
    return scan


class _LineReader:
    """What the lines that hold a cue say, each distinct line read once."""

    def __init__(self) -> None:
        self.scan = _Scan()
        self.buffers: dict[str, dict[str, int]] = {"model": {}, "kv": {}, "compute": {}}
        self.bench_header: list[str] | None = None
        self._seen: set[bytes] = set()

    def read(self, raw: bytes, line_no: int) -> None:
        # a line seen before adds nothing: its first occurrence decides earlier, and a repeated buffer
        # line is the same buffer of a later context (or round), not a second one
        # a line longer than this is data (a token dump, a pasted binary), not a message: its head is read
        raw = raw[:_MAX_LINE_BYTES]
        if raw in self._seen:
            return
        self._seen.add(raw)
        line = raw.decode("utf-8", "replace").strip()
        names = [_RULES[i][0] for i in _RULE_SET.Match(raw) or ()]
        if _SHADER_RULE in names:
            # the Metal compiler's diagnostics quote a path:line:col like a C compiler's: not a build failure
            names = [n for n in names if n != _BUILD_RULE]
        # a traceback quotes its source ('raise ValueError(f"...")'): the message line says more
        benign = "benign" in names or line.startswith(("raise ", 'File "'))
        scan = self.scan
        for name in names:
            if name.startswith("fail:") and not benign:
                index = int(name[5:])
                failure = _FAILURES[index]
                scan.hits.append(_Hit(failure.status, failure.phase or Phase.START, index, line_no, line))
            elif name == "no_gpu" and scan.no_gpu_line is None:
                scan.no_gpu_line = (line_no, line)
            elif name in ("buffer", "engine_buffer") and (buf := _parse_buffer(line)):
                _add_buffer(self.buffers, buf)
                if is_device(buf.device) and scan.gpu_seen_line is None:
                    scan.gpu_seen_line = (line_no, line)
                if buf.kind == "kv":
                    scan.kv_lines.setdefault(buf.device, (line_no, line))
            elif name == "offload" and not scan.offload_from_log and (off := _OFFLOADED.search(line)):
                scan.offloaded = (int(off.group(1)), int(off.group(2)))
                scan.offload_line = (line_no, line)
                scan.offload_from_log = True
            elif name == "plan" and scan.offloaded is None and (plan := _OFFLOAD_PLAN.search(line)):
                # a plan only: what llama.cpp says it offloaded, when the log has it, decides
                scan.offloaded = (int(plan.group(2)), int(plan.group(1)))
                scan.offload_line = (line_no, line)
            elif name == "vram" and scan.gpu_seen_line is None:
                scan.gpu_seen_line = (line_no, line)
            elif name == "budget":
                _budget(line, scan.memory)
            elif name == "bench":
                self.bench_header = _bench_row(line, self.bench_header, scan)


def _bench_row(line: str, header: list[str] | None, scan: _Scan) -> list[str] | None:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if _BENCH_HEADER.search(line):
        return cells
    if header is None or len(cells) != len(header):
        return header
    row = dict(zip(header, cells, strict=True))
    scan.bench_backends.update(b.strip() for b in row.get("backend", "").split(","))
    if "ngl" in row and row["ngl"].lstrip("-").isdigit():
        scan.bench_gpu_layers = int(row["ngl"])
    return header


def _progress(data: bytes, scan: _Scan) -> None:
    """First line of each phase marker and of the proof of success, and the last non-empty line. One
    pass: each search resumes where the previous marker was found, with the markers still missing."""
    found: list[tuple[int, Phase, bool]] = []
    remaining = list(_PROGRESS_RE)
    pos = 0
    while remaining:
        combined = re2.compile("|".join(f"(?P<m{i}>{_inline_flags(p)})" for i, (_, p, _) in enumerate(remaining)))
        m = combined.search(data, pos)
        if m is None:
            break
        which = next(i for i in range(len(remaining)) if m.group(f"m{i}") is not None)
        phase, _, proves_success = remaining.pop(which)
        found.append((m.start(), phase, proves_success))
        pos = m.start()
    line_no, counted_to = 1, 0
    for start, phase, proves_success in sorted(found, key=lambda f: f[0]):
        line_no += data.count(b"\n", counted_to, start)
        counted_to = start
        scan.phase_lines[phase] = min(scan.phase_lines.get(phase, line_no), line_no)
        if proves_success and (scan.success is None or phase > scan.success[0]):
            scan.success = (phase, line_no, _line_at(data, start))
    end = len(data)
    while end and data[end - 1 : end].isspace():
        end -= 1
    if end:
        start = data.rfind(b"\n", 0, end) + 1
        scan.last_line = (
            line_no + data.count(b"\n", counted_to, start),
            data[max(start, end - _MAX_LINE_BYTES) : end].decode("utf-8", "replace").strip(),
        )


def _line_at(data: bytes, pos: int) -> str:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    end = min(end if end != -1 else len(data), start + _MAX_LINE_BYTES)
    return data[start:end].decode("utf-8", "replace").strip()


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(text[: limit * 8].split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _signal_name(returncode: int | None) -> str | None:
    if returncode is None:
        return None
    if returncode < 0:
        return signal_module.Signals(-returncode).name if -returncode in signal_module.valid_signals() else None
    if returncode > 128 and returncode - 128 in (4, 6, 7, 8, 11):  # a shell reporting its child's signal
        return signal_module.Signals(returncode - 128).name
    return None


def _exit_hit(scan: _Scan, exit_info: ExitInfo) -> _Hit | None:
    """What the exit status says when the log itself may not: a signal, a timeout, the OOM killer."""
    line_no, last = scan.last_line or (0, "no output")
    phase = scan.reached
    if exit_info.timed_out:
        limit = f"{exit_info.timeout_s:g} s" if exit_info.timeout_s is not None else "the time limit"
        return _Hit(Status.TIMEOUT, phase, 0, line_no, f"no result after {limit}; last log line: {last}")
    name = _signal_name(exit_info.returncode)
    if name == "SIGKILL":
        return _Hit(
            Status.OUT_OF_MEMORY,
            phase,
            0,
            line_no,
            f"killed by SIGKILL without a timeout: the kernel's OOM killer; last log line: {last}",
        )
    if name is not None:
        return _Hit(
            Status.CRASHED,
            phase,
            len(_FAILURES),
            line_no,
            f"{name} (exit {exit_info.returncode}); last log line: {last}",
        )
    return None


def _decide(hits: list[_Hit], scan: _Scan) -> _Hit | None:
    for hit in hits:
        if hit.phase is Phase.START:  # a failure without a phase of its own happened where the log was
            hit.phase = scan.phase_at(hit.line_no)
    # before any phase marker (a pasted fragment) a failure's place is unknown; a log is written in time
    # order, so it happened no later than the failures after it (on its own line too) that know their phase
    placed = [h for h in hits if h.phase > Phase.START]
    for hit in hits:
        if hit.phase is Phase.START:
            hit.phase = min((h.phase for h in placed if h.line_no >= hit.line_no), default=Phase.DONE)
    # a fault inside libllama/libggml proves the library was built and ran: a build message is not the cause
    if any(h.status is Status.CRASHED and _LIBRARY_RAN.search(h.line) for h in hits):
        hits = [h for h in hits if h.status is not Status.BUILD_FAILED]
    return min(hits, key=lambda h: (h.phase, h.priority, h.line_no), default=None)


def _backend(scan: _Scan) -> str | None:
    gpus = gpu_devices(scan.memory)
    if gpus:
        return gpus[0].rstrip("0123456789")
    gpu_bench = sorted(b for b in scan.bench_backends if b and is_device(b))
    if gpu_bench:
        return gpu_bench[0]
    if any(k in scan.memory for k in ("model", "kv", "compute")) or scan.bench_backends:
        return "CPU"
    return None


def classify(
    text: str,
    *,
    expect_gpu: bool,
    layers_requested: int | None = None,
    exit_info: ExitInfo | None = None,
    layers_total: int | None = None,
    proof: str | None = None,
) -> Diagnosis:
    """Classify one load log. `layers_requested` None means all layers were asked for; `layers_total`
    is the model's offloadable layer count when known from elsewhere (CPU builds do not log it).
    `proof` says the load finished when the evidence is not in the log: the engine read a result file
    (llama-bench's JSON goes to its own file, not to the log)."""
    exit_info = exit_info or ExitInfo()
    scan = _scan(text)
    if proof and scan.success is None:
        scan.success = (Phase.DONE, None, proof)
        scan.phase_lines.setdefault(Phase.DONE, scan.last_line[0] if scan.last_line else 1)
    hits = list(scan.hits)
    if (exit_hit := _exit_hit(scan, exit_info)) is not None:
        hits.append(exit_hit)
    base = Diagnosis(
        Status.LOAD_FAILED.value, "", scan.offloaded, _backend(scan), scan.memory, scan.reached.label, None
    )
    if (hit := _decide(hits, scan)) is not None:
        return replace(
            base, status=hit.status.value, reason=_clip(hit.line), phase=hit.phase.label, line_no=hit.line_no
        )
    if exit_info.returncode not in (None, 0):
        line_no, last = scan.last_line or (None, "no output")
        return replace(
            base,
            reason=_clip(f"exited with code {exit_info.returncode}; the log names no cause; last line: {last}"),
            line_no=line_no,
        )
    return _judge_load(
        base,
        scan,
        expect_gpu=expect_gpu,
        layers_requested=layers_requested,
        layers_total=layers_total,
        end_known=exit_info.returncode is not None,
    )


def _judge_load(
    base: Diagnosis,
    scan: _Scan,
    *,
    expect_gpu: bool,
    layers_requested: int | None,
    layers_total: int | None,
    end_known: bool,
) -> Diagnosis:
    """No failure in the log: where did the model go, and is there proof that the load finished?
    `end_known`: the process that wrote the log was seen to end (an exit status), so the log is whole."""

    def verdict(status: Status, where: tuple[int | None, str] | None, reason: str | None = None) -> Diagnosis:
        line_no, line = where or (None, "")
        return replace(base, status=status.value, reason=_clip(reason or line), line_no=line_no)

    bench_on_gpu = any(is_device(b) for b in scan.bench_backends if b) and (
        scan.bench_gpu_layers is None or scan.bench_gpu_layers > 0
    )
    gpu_used = scan.gpu_seen_line is not None or bench_on_gpu
    if scan.offloaded and scan.offloaded[0] == 0 and not (scan.bench_gpu_layers or 0) > 0:
        gpu_used = False
    if expect_gpu and not gpu_used and scan.no_gpu_line is not None:
        return verdict(
            Status.CPU_FALLBACK,
            scan.no_gpu_line,
            f"a GPU was expected but the backend found none: {scan.no_gpu_line[1]}",
        )
    off = scan.offloaded
    if off and 0 < off[0] < off[1] and (layers_requested is None or layers_requested >= off[1]):
        return verdict(Status.PARTIAL_OFFLOAD, scan.offload_line)
    gpu_kv = [d for d in scan.kv_lines if is_device(d)]
    if off is None and gpu_kv and "CPU" in scan.kv_lines:
        # a layer's KV cache lives where the layer runs: KV in plain CPU memory beside a GPU's means some
        # layers stayed on the CPU (KV kept off the GPU on purpose goes to pinned host memory, not here)
        cpu_kv = scan.kv_lines["CPU"]
        return verdict(
            Status.PARTIAL_OFFLOAD,
            cpu_kv,
            f"the KV cache is split between {', '.join(gpu_kv)} and the CPU, some layers ran on the CPU: {cpu_kv[1]}",
        )
    if expect_gpu and not gpu_used and (scan.offloaded or scan.memory or scan.bench_backends or scan.success):
        where = scan.offload_line or (scan.success[1:] if scan.success else None)
        shown = where[1] if where else "only host buffers"
        return verdict(Status.CPU_FALLBACK, where, f"a GPU was expected but no GPU buffer was used: {shown}")
    if layers_requested is not None:
        total = off[1] if off else layers_total
        if total is not None and layers_requested < total:
            return verdict(
                Status.PARTIAL_OFFLOAD,
                None,
                f"only {layers_requested}/{total} layers were asked to be offloaded (n_gpu_layers)",
            )
    if scan.success is None:
        reached = scan.last_line
        last = reached[1] if reached else "none"
        shows_load = scan.reached > Phase.START or scan.offloaded or scan.memory or scan.bench_backends
        if shows_load and not end_known:
            return verdict(
                Status.LOG_INCOMPLETE,
                reached,
                f"the end of the log is missing: it stops in {scan.reached.label} with no error and no proof the "
                f"load finished; last line: {last}",
            )
        return verdict(
            Status.LOAD_FAILED,
            reached,
            f"the log stops in {scan.reached.label} with no sign the load finished and no known cause; last line: "
            f"{last}",
        )
    _, success_line_no, success_line = scan.success
    evidence = (scan.offload_line or scan.gpu_seen_line) if expect_gpu else None
    reason = success_line if evidence is None else f"{success_line} (GPU: {evidence[1]})"
    return verdict(Status.OK, (success_line_no, success_line), reason)

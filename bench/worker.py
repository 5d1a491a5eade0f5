"""Measure one model with one build, inside that build's own interpreter.

Runs as a script (`python worker.py identity|measure SPEC OUT`) and needs only the standard
library and `llama_cpp`: the build's interpreter may not have perfgate installed. Everything
llama.cpp logs goes to stderr (fd 2), which the runner captures as the load log; the result is a
JSON file written atomically at the end, so a crash leaves no half result.

Measurement follows tools/llama-bench in the vendored llama.cpp: one load, then a pp context
(n_ctx = n_prompt) and a tg context (n_ctx = n_gen), each with a warmup and N repetitions, the KV
cache cleared before each, timed with perf_counter_ns around the raw decode calls.
"""

from __future__ import annotations

import os
import sys

# run as a script, this file's folder (bench/) is first on sys.path, and perfgate module names there
# (site/, bisection.py …) must never shadow the standard library of the build's interpreter
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import ctypes
import hashlib
import json
import random
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import llama_cpp


def _log(text: str) -> None:
    os.write(2, text.encode("utf-8", "replace"))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identity() -> dict[str, Any]:
    lib = getattr(llama_cpp.llama_cpp, "_lib", None)
    lib_path = Path(lib._name if lib is not None else llama_cpp.llama_cpp.__file__).resolve()
    ggml_libs = sorted(p for p in lib_path.parent.glob("libggml*") if p.is_file())
    ggml_digest = hashlib.sha256()
    for lib in ggml_libs:
        ggml_digest.update(lib.name.encode() + _file_sha256(lib).encode())
    return {
        "llama_cpp_version": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        "lib_path": str(lib_path),
        "lib_sha256": _file_sha256(lib_path),
        "ggml_sha256": ggml_digest.hexdigest() if ggml_libs else None,
        "supports_gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "api": _Api().generation(),
        "python": sys.executable,
    }


def _smi(query: str) -> list[list[str]]:
    """Rows of an nvidia-smi CSV query; empty where there is no NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [[p.strip() for p in line.split(",")] for line in out.splitlines() if line.strip()]


def _gpu_used_bytes() -> int | None:
    """GPU memory held by this process (CUDA via nvidia-smi); None where that cannot be read."""
    mine = [
        int(r[1])
        for r in _smi("--query-compute-apps=pid,used_memory")
        if len(r) == 2 and r[0] == str(os.getpid()) and r[1].isdigit()
    ]
    if mine:
        return sum(mine) * 1024 * 1024
    # some containers hide per-process accounting: fall back to the device-wide figure
    used = [int(r[0]) for r in _smi("--query-gpu=memory.used") if r and r[0].isdigit()]
    return sum(used) * 1024 * 1024 if used else None


def _rss_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


class _Api:
    """llama.cpp's C API as this release of llama-cpp-python binds it, found by feature detection.

    0.2.7x-0.2.9x: llama_load_model_from_file, llama_new_context_with_model, llama_kv_cache_clear,
    llama_batch_get_one(tokens, n, pos0, seq_id), vocab functions on the model, flash_attn a bool.
    0.3.x: llama_model_load_from_file, llama_init_from_model, llama_kv_self_clear then
    llama_memory_clear, llama_batch_get_one(tokens, n), a vocab object, flash_attn_type -1/0/1."""

    def __init__(self) -> None:
        lib = llama_cpp
        self.load_model = getattr(lib, "llama_model_load_from_file", None) or lib.llama_load_model_from_file
        self.free_model = getattr(lib, "llama_model_free", None) or lib.llama_free_model
        self.new_context = getattr(lib, "llama_init_from_model", None) or lib.llama_new_context_with_model
        self.n_layer = getattr(lib, "llama_model_n_layer", None) or lib.llama_n_layer
        self.synchronize = getattr(lib, "llama_synchronize", None) or (lambda ctx: None)
        self.batch_args = len(getattr(lib.llama_batch_get_one, "argtypes", None) or [None, None])
        if hasattr(lib, "llama_memory_clear"):
            self.clear_name = "llama_memory_clear"
            self.clear = lambda ctx: lib.llama_memory_clear(lib.llama_get_memory(ctx), False)
        elif hasattr(lib, "llama_kv_self_clear"):
            self.clear_name = "llama_kv_self_clear"
            self.clear = lib.llama_kv_self_clear
        else:
            self.clear_name = "llama_kv_cache_clear"
            self.clear = getattr(lib, "llama_kv_cache_clear")  # noqa: B009 (absent from the new bindings' stubs)
        fields = {f[0] for f in lib.llama_context_params._fields_}
        self.flash_attn_field = next((f for f in ("flash_attn_type", "flash_attn") if f in fields), None)
        self.has_no_perf = "no_perf" in fields
        self.vocab_object = hasattr(lib, "llama_model_get_vocab")

    def generation(self) -> dict[str, Any]:
        return {
            "load": self.load_model.__name__,
            "context": self.new_context.__name__,
            "kv_clear": self.clear_name,
            "batch_get_one_args": self.batch_args,
            "flash_attn": self.flash_attn_field,
            "vocab": "object" if self.vocab_object else "model",
        }

    def vocab(self, model: Any) -> tuple[int, int | None]:
        """(vocabulary size, BOS token when the model adds one)."""
        lib = llama_cpp
        if self.vocab_object:
            vocab = lib.llama_model_get_vocab(model)
            return lib.llama_vocab_n_tokens(vocab), (
                lib.llama_vocab_bos(vocab) if lib.llama_vocab_get_add_bos(vocab) else None
            )
        add_bos = getattr(lib, "llama_add_bos_token", None)
        adds = add_bos(model) if add_bos else -1
        bos = lib.llama_token_bos(model)
        return lib.llama_n_vocab(model), (bos if adds != 0 and bos >= 0 else None)

    def set_flash_attn(self, params: Any, mode: int) -> None:
        if self.flash_attn_field == "flash_attn_type":
            params.flash_attn_type = mode
        elif self.flash_attn_field == "flash_attn" and mode >= 0:  # bool: no "auto"; auto keeps the default
            params.flash_attn = bool(mode)

    def batch(self, tokens: Any, n: int, pos0: int) -> Any:
        if self.batch_args >= 4:
            return llama_cpp.llama_batch_get_one(tokens, n, pos0, 0)
        return llama_cpp.llama_batch_get_one(tokens, n)


class _Bench:
    def __init__(self, model: Any, spec: dict[str, Any]) -> None:
        self.model = model
        self.spec = spec
        self.api = api = _Api()
        self.n_vocab, self.bos = api.vocab(model)
        self.rand = random.Random(spec.get("seed", 0))

    def context(self, n_ctx: int) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = self.spec["n_batch"]
        params.n_ubatch = self.spec["n_ubatch"]
        params.n_threads = params.n_threads_batch = self.spec["threads"]
        self.api.set_flash_attn(params, self.spec["flash_attn"])
        if self.api.has_no_perf:
            params.no_perf = True
        ctx = self.api.new_context(self.model, params)
        if not ctx:
            _log("perfgate-worker: error: failed to create context\n")
            raise SystemExit(4)
        return ctx

    def _token(self, first: bool) -> int:
        return self.bos if first and self.bos is not None else self.rand.randrange(self.n_vocab)

    def _decode(self, ctx: Any, tokens: Any, n: int, pos0: int) -> None:
        rc = llama_cpp.llama_decode(ctx, self.api.batch(tokens, n, pos0))
        if rc != 0:
            _log(f"perfgate-worker: error: llama_decode returned {rc}\n")
            raise SystemExit(5)

    def prompt(self, ctx: Any, n_prompt: int) -> int:
        n_batch = self.spec["n_batch"]
        buf = (llama_cpp.llama_token * n_batch)()
        draws = [
            [self._token(i == 0 and b == 0) for i in range(min(n_batch, n_prompt - b))]
            for b in range(0, n_prompt, n_batch)
        ]
        self.api.clear(ctx)
        start = time.perf_counter_ns()
        pos = 0
        for chunk in draws:
            for i, tok in enumerate(chunk):
                buf[i] = tok
            self._decode(ctx, buf, len(chunk), pos)
            pos += len(chunk)
        # synchronize: decode is asynchronous on GPU backends
        self.api.synchronize(ctx)
        return time.perf_counter_ns() - start

    def generate(self, ctx: Any, n_gen: int) -> int:
        draws = [self._token(i == 0) for i in range(n_gen)]
        tok = (llama_cpp.llama_token * 1)()
        batch = self.api.batch(tok, 1, 0)
        # the old batch API takes each token's position; the new one tracks it
        explicit_pos = self.api.batch_args >= 4
        decode, synchronize = llama_cpp.llama_decode, self.api.synchronize
        self.api.clear(ctx)
        start = time.perf_counter_ns()
        for pos, t in enumerate(draws):
            tok[0] = t
            if explicit_pos:
                batch.all_pos_0 = pos
            if decode(ctx, batch) != 0:
                _log("perfgate-worker: error: llama_decode failed during generation\n")
                raise SystemExit(5)
            synchronize(ctx)
        return time.perf_counter_ns() - start


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    # NULL restores llama.cpp's own logger: unbuffered C writes to stderr, so the lines before a
    # crash are in the log, and no Python callback runs on the backend's threads
    llama_cpp.llama_log_set(llama_cpp.llama_log_callback(), ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    path = spec["model_path"]
    if not os.path.exists(path):
        _log(f"perfgate-worker: error: model path does not exist: {path}\n")
        raise SystemExit(3)
    mparams = llama_cpp.llama_model_default_params()
    api = _Api()
    # "all" is -1 since late 2024; older releases index layers with it and corrupt the heap: ask for
    # more layers than any model has instead, as llama-bench does
    mparams.n_gpu_layers = spec["n_gpu_layers"] if spec["n_gpu_layers"] >= 0 or api.batch_args < 4 else 100_000
    mparams.use_mmap = True
    _log("perfgate-worker: phase=load\n")
    t0 = time.perf_counter_ns()
    model = api.load_model(path.encode(), mparams)
    if not model:
        _log(f"perfgate-worker: error: failed to load model from {path}\n")
        raise SystemExit(3)
    result: dict[str, Any] = {
        "layers_model": api.n_layer(model),
        "api": api.generation(),
        "model_bytes": llama_cpp.llama_model_size(model),
        "model_params": llama_cpp.llama_model_n_params(model),
    }
    desc = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, desc, len(desc))
    result["model_desc"] = desc.value.decode("utf-8", "replace")
    bench = _Bench(model, spec)
    samples_pp: list[int] = []
    samples_tg: list[int] = []
    if spec.get("load_only"):  # one more fresh-process load (suite.load_repetitions): load, a context, done
        _log("perfgate-worker: phase=context_pp\n")
        llama_cpp.llama_free(bench.context(max(spec["n_prompt"], spec["n_gen"], 1)))
        result["load_s"] = (time.perf_counter_ns() - t0) / 1e9
    elif spec["n_prompt"] > 0:
        _log("perfgate-worker: phase=context_pp\n")
        ctx = bench.context(spec["n_prompt"])
        result["load_s"] = (time.perf_counter_ns() - t0) / 1e9
        result["gpu_used_bytes"] = _gpu_used_bytes()
        _log("perfgate-worker: phase=decode_pp\n")
        for _ in range(spec["warmup"]):
            bench.prompt(ctx, spec["n_prompt"])
        samples_pp = [bench.prompt(ctx, spec["n_prompt"]) for _ in range(spec["repetitions"])]
        llama_cpp.llama_free(ctx)
    if spec["n_gen"] > 0:
        _log("perfgate-worker: phase=context_tg\n")
        ctx = bench.context(spec["n_gen"])
        result.setdefault("load_s", (time.perf_counter_ns() - t0) / 1e9)
        if result.get("gpu_used_bytes") is None:
            result["gpu_used_bytes"] = _gpu_used_bytes()
        _log("perfgate-worker: phase=decode_tg\n")
        for _ in range(spec["warmup"]):
            bench.generate(ctx, 1)
        samples_tg = [bench.generate(ctx, spec["n_gen"]) for _ in range(spec["repetitions"])]
        llama_cpp.llama_free(ctx)
    api.free_model(model)
    _log("perfgate-worker: phase=done\n")
    result.update(samples_pp_ns=samples_pp, samples_tg_ns=samples_tg, rss_peak_bytes=_rss_peak_bytes())
    return result


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    if str(path).startswith("/dev/fd/"):  # the runner's unlinked file: it reads it only after we exit
        path.write_text(json.dumps(payload))
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


def main(argv: list[str]) -> int:
    mode, out = argv[1], Path(argv[-1])
    if mode == "identity":
        _write_atomic(out, identity())
        return 0
    spec = json.loads(Path(argv[2]).read_text())
    _write_atomic(out, measure(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

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

import ctypes
import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
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
    lib_path = Path(llama_cpp.llama_cpp._lib._name).resolve()
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


class _Bench:
    def __init__(self, model: Any, spec: dict[str, Any]) -> None:
        self.model = model
        self.spec = spec
        vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self.bos = llama_cpp.llama_vocab_bos(vocab) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self.rand = random.Random(spec.get("seed", 0))

    def context(self, n_ctx: int) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = self.spec["n_batch"]
        params.n_ubatch = self.spec["n_ubatch"]
        params.n_threads = params.n_threads_batch = self.spec["threads"]
        params.flash_attn_type = self.spec["flash_attn"]
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not ctx:
            _log("perfgate-worker: error: failed to create context\n")
            raise SystemExit(4)
        return ctx

    def _token(self, first: bool) -> int:
        return self.bos if first and self.bos is not None else self.rand.randrange(self.n_vocab)

    def _decode(self, ctx: Any, tokens: Any, n: int) -> None:
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, n))
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
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(mem, False)
        start = time.perf_counter_ns()
        for chunk in draws:
            for i, tok in enumerate(chunk):
                buf[i] = tok
            self._decode(ctx, buf, len(chunk))
        # synchronize: decode is asynchronous on GPU backends
        llama_cpp.llama_synchronize(ctx)
        return time.perf_counter_ns() - start

    def generate(self, ctx: Any, n_gen: int) -> int:
        draws = [self._token(i == 0) for i in range(n_gen)]
        tok = (llama_cpp.llama_token * 1)()
        batch = llama_cpp.llama_batch_get_one(tok, 1)
        decode, synchronize = llama_cpp.llama_decode, llama_cpp.llama_synchronize
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), False)
        start = time.perf_counter_ns()
        for t in draws:
            tok[0] = t
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
    mparams.n_gpu_layers = spec["n_gpu_layers"]
    mparams.use_mmap = True
    _log("perfgate-worker: phase=load\n")
    t0 = time.perf_counter_ns()
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        _log(f"perfgate-worker: error: failed to load model from {path}\n")
        raise SystemExit(3)
    result: dict[str, Any] = {
        "layers_model": llama_cpp.llama_model_n_layer(model),
        "model_bytes": llama_cpp.llama_model_size(model),
        "model_params": llama_cpp.llama_model_n_params(model),
    }
    desc = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, desc, len(desc))
    result["model_desc"] = desc.value.decode("utf-8", "replace")
    bench = _Bench(model, spec)
    samples_pp: list[int] = []
    samples_tg: list[int] = []
    if spec["n_prompt"] > 0:
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
    llama_cpp.llama_model_free(model)
    _log("perfgate-worker: phase=done\n")
    result.update(samples_pp_ns=samples_pp, samples_tg_ns=samples_tg, rss_peak_bytes=_rss_peak_bytes())
    return result


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
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

"""The llama-cpp-python engine: perfgate's own worker, run by the build's interpreter.

The interpreter is a user's (`python:` + optional `lib:` → LLAMA_CPP_LIB_PATH), the venv of a
`source: {pip: ...}` release, or this project's interpreter pointed at a built libllama.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.builds.identity import BuildIdentity
from bench.engines.base import FileNamer, ItemSpec, Judge, ProcessOutcome, ProcessSpec, measurement_of
from bench.engines.paths import with_library_dir
from bench.store.records import Measurement

WORKER = Path(__file__).parents[1] / "worker.py"
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}


class LlamaCppPython:
    name = "llama-cpp-python"

    def __init__(self, build_name: str, python: str, lib: str | None, env: dict[str, str], details: dict) -> None:
        self.build_name = build_name
        self.python = python
        self.env = dict(env)
        if lib is not None:
            self.env = with_library_dir(self.env, Path(lib) if Path(lib).is_dir() else Path(lib).parent)
            self.env["LLAMA_CPP_LIB_PATH"] = lib
        self.env["PYTHONUNBUFFERED"] = "1"
        self.lib = lib
        self.details = details

    def identify(self, timeout_s: float = 120) -> BuildIdentity:
        """Ask the build itself who it is; a build that cannot even import is recorded, not fatal."""
        with tempfile.TemporaryDirectory(prefix="perfgate-id-") as tmp:
            out = Path(tmp) / "identity.json"
            try:
                proc = subprocess.run(
                    [self.python, str(WORKER), "identity", str(out)],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
                log = f"identity check timed out after {timeout_s:g} s\n{err}"
                return BuildIdentity(self.build_name, False, python=self.python, error_log=log)
            except OSError as exc:
                log = f"cannot start {self.python}: {exc}\n"
                return BuildIdentity(self.build_name, False, python=self.python, error_log=log)
            if proc.returncode != 0 or not out.exists():
                log = proc.stderr + f"\nworker exited with code {proc.returncode}\n"
                return BuildIdentity(self.build_name, False, python=self.python, error_log=log)
            data = json.loads(out.read_text())
        return BuildIdentity(
            name=self.build_name,
            ok=True,
            llama_cpp_version=data["llama_cpp_version"],
            system_info=data["system_info"],
            lib_path=data["lib_path"],
            lib_sha256=data["lib_sha256"],
            ggml_sha256=data["ggml_sha256"],
            python=data["python"],
            supports_gpu_offload=data["supports_gpu_offload"],
            details={**self.details, "engine": self.name, "lib_dir": self.lib, "api": data.get("api")},
        )

    def processes(self, item: ItemSpec) -> list[Callable[[FileNamer], ProcessSpec]]:
        spec = {
            "model_path": str(item.model_path),
            "n_gpu_layers": item.n_gpu_layers,
            "n_prompt": item.n_prompt,
            "n_gen": item.n_gen,
            "repetitions": item.repetitions,
            "warmup": item.warmup,
            "n_batch": item.n_batch,
            "n_ubatch": item.n_ubatch,
            "threads": item.threads,
            "flash_attn": FLASH_ATTN[item.flash_attn],
            "seed": item.seed,
        }

        def maker(job: dict[str, Any]) -> Callable[[FileNamer], ProcessSpec]:
            def make(path: FileNamer) -> ProcessSpec:
                return ProcessSpec(
                    [self.python, str(WORKER), "measure", path("spec.json"), path("result.json")],
                    self.env,
                    files={"spec.json": json.dumps(job)},
                    read=("result.json",),
                )

            return make

        # the measuring process loads once; suite.load_repetitions adds loads in fresh processes
        return [maker(spec)] + [maker({**spec, "load_only": True})] * (item.load_repetitions - 1)

    def measurement(self, item: ItemSpec, outcomes: list[ProcessOutcome], judge: Judge) -> Measurement:
        outcome = outcomes[0]
        r = _result(outcome)
        layers_total = r["layers_model"] + 1 if "layers_model" in r else None
        diag = judge(outcome, layers_total=layers_total)
        loads = [_result(o).get("load_s") for o in outcomes] if r else []
        return measurement_of(
            item,
            diag,
            outcome,
            wrote_result=bool(r),
            layers_total=layers_total,
            samples_pp_ns=r.get("samples_pp_ns", []),
            samples_tg_ns=r.get("samples_tg_ns", []),
            samples_load_ns=[int(s * 1e9) for s in loads if s],
            fields={
                "load_s": r.get("load_s"),
                "model_bytes": r.get("model_bytes"),
                "rss_peak_bytes": r.get("rss_peak_bytes"),
                "gpu_used_bytes": r.get("gpu_used_bytes"),
            },
        )


def _result(outcome: ProcessOutcome) -> dict[str, Any]:
    if outcome.returncode != 0 or "result.json" not in outcome.files:
        return {}
    try:
        data = json.loads(outcome.files["result.json"])
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def build_python_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    env.update(extra)
    return env

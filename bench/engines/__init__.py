"""Engines: who a build is, which processes measure one item, and how to read them.

`make_engine` is the one place that turns a configured build (and its cached build, when it was
built from source) into an engine; the runner never asks which engine it holds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.builds.cache import BuildRecord
from bench.config import DEFAULT_PYTHON, BuildConfig, Config
from bench.engines.base import Engine, ItemSpec, ProcessOutcome, ProcessSpec, run_isolated
from bench.engines.kobold import KoboldCpp
from bench.engines.llama_bench import LlamaBench
from bench.engines.llama_cpp_python import LlamaCppPython
from bench.engines.paths import locate_engine_path
from bench.errors import ConfigError

__all__ = ["Engine", "ItemSpec", "ProcessOutcome", "ProcessSpec", "make_engine", "run_isolated"]


def make_engine(config: Config, build: BuildConfig, record: BuildRecord | None = None) -> Engine:
    """The engine for a build; `record` is its cached build when it has a `source`."""
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    env.update(build.env)
    details: dict[str, Any] = record.details() if record is not None else {}
    if build.library_of is not None:
        details["library_of"] = build.library_of
    if build.engine == "llama-cpp-python":
        if record is not None and record.system == "pip":
            return LlamaCppPython(build.name, str(record.python), None, env, details)
        if record is not None:  # a built libllama, loaded by this project's own llama_cpp bindings
            return LlamaCppPython(build.name, sys.executable, str(record.bin_dir), env, details)
        python = str(config.resolve(build.python or DEFAULT_PYTHON))
        lib = str(config.resolve(build.lib)) if build.lib is not None else None
        return LlamaCppPython(build.name, python, lib, env, details)
    if record is not None:
        # KoboldCPP runs from its own layout: the tree itself when built in place, else the copy in the cache
        in_place = build.engine == "koboldcpp" and record.source.get("in_place")
        program = Path(record.source["location"]) if in_place else record.bin_dir
        located, problem = locate_engine_path(build.engine, program)
    else:
        assert build.path is not None
        located, problem = locate_engine_path(build.engine, config.resolve(build.path))
    if located is None:
        raise ConfigError(f"build {build.name!r}: {problem}")
    if build.engine == "llama-bench":
        return LlamaBench(build.name, located, env, details)
    return KoboldCpp(build.name, located, build.args, env, details)

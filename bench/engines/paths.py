"""Where an engine's program lives inside a path a user gave (no config, no store: config imports this)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

LIBRARY_PATH = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"


def with_library_dir(env: dict[str, str], directory: Path) -> dict[str, str]:
    """`env` with `directory` first on the loader's search path. A cached build keeps its libraries beside its
    programs, but their RUNPATH names the build tree that is gone: libllama's own libggml is found here."""
    dirs = [str(directory), *filter(None, [env.get(LIBRARY_PATH)])]
    return {**env, LIBRARY_PATH: ":".join(dirs)}


def _executable(p: Path) -> bool:
    return p.is_file() and os.access(p, os.X_OK)


def locate_engine_path(engine: str, path: Path) -> tuple[Path | None, str | None]:
    """(the program to run, None) or (None, what is wrong with the path)."""
    if not path.exists():
        return None, f"no such file or directory: {path}"
    if engine == "llama-bench":
        candidates = [path] if path.is_file() else [path / "llama-bench", path / "bin" / "llama-bench"]
        found = next((c for c in candidates if _executable(c) and c.name.startswith("llama-bench")), None)
        return (found, None) if found else (None, f"no llama-bench executable in {path}")
    if engine == "koboldcpp":
        if path.is_dir():
            script = path / "koboldcpp.py"
            return (
                (script, None) if script.is_file() else (None, f"{path} is not a KoboldCPP checkout (no koboldcpp.py)")
            )
        if path.suffix == ".py" or _executable(path):
            return path, None
        return None, f"{path} is neither a KoboldCPP checkout nor an executable release binary"
    return None, f"engine {engine} takes no 'path'"

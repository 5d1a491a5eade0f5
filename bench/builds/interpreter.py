"""A build is an interpreter with `llama_cpp`, optionally pointed at another libllama directory."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BuildConfig, Config

WORKER = Path(__file__).parents[1] / "worker.py"


@dataclass(frozen=True)
class BuildIdentity:
    name: str
    ok: bool
    llama_cpp_version: str | None = None
    system_info: str | None = None
    lib_path: str | None = None
    lib_sha256: str | None = None
    ggml_sha256: str | None = None
    python: str | None = None
    supports_gpu_offload: bool | None = None
    error_log: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    recorded_sha: str | None = None  # an identity recorded elsewhere (imports): taken as it is

    @property
    def identity_sha(self) -> str:
        if self.recorded_sha is not None:
            return self.recorded_sha
        if not self.ok:
            return "unusable-" + hashlib.sha256(self.error_log.encode()).hexdigest()[:16]
        key = "|".join(str(x) for x in (self.llama_cpp_version, self.lib_sha256, self.ggml_sha256, self.system_info))
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_env(config: Config, build: BuildConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    env.update(build.env)
    if build.lib is not None:
        env["LLAMA_CPP_LIB_PATH"] = str(config.resolve(build.lib))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def identify(config: Config, build: BuildConfig, timeout_s: float = 120) -> BuildIdentity:
    """Ask the build itself who it is; a build that cannot even import is recorded, not fatal."""
    python = str(config.resolve(build.python))
    with tempfile.TemporaryDirectory(prefix="perfgate-id-") as tmp:
        out = Path(tmp) / "identity.json"
        try:
            proc = subprocess.run(
                [python, str(WORKER), "identity", str(out)],
                env=build_env(config, build),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return BuildIdentity(
                build.name,
                False,
                python=python,
                error_log=f"identity check timed out after {timeout_s:g} s\n{_text(exc.stderr)}",
            )
        if proc.returncode != 0 or not out.exists():
            return BuildIdentity(
                build.name,
                False,
                python=python,
                error_log=proc.stderr + f"\nworker exited with code {proc.returncode}\n",
            )
        data = json.loads(out.read_text())
    return BuildIdentity(
        name=build.name,
        ok=True,
        llama_cpp_version=data["llama_cpp_version"],
        system_info=data["system_info"],
        lib_path=data["lib_path"],
        lib_sha256=data["lib_sha256"],
        ggml_sha256=data["ggml_sha256"],
        python=data["python"],
        supports_gpu_offload=data["supports_gpu_offload"],
        details={"lib_dir": str(config.resolve(build.lib)) if build.lib else None},
    )

"""Who a build is: the identity record every engine fills and the store keeps."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
        parts = [self.llama_cpp_version, self.lib_sha256, self.ggml_sha256, self.system_info]
        # built and non-default-engine builds add what sets them apart (absent for round-one builds)
        parts += [x for x in (self.details.get("engine_key"), self.details.get("build", {}).get("key")) if x]
        key = "|".join(str(x) for x in parts)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (libraries and GGUF files are large)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

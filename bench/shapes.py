"""What a synthetic model is, by name: its shapes, quant names and file name (bench.synth writes the file).

Apart from bench.synth so that reading a config (which checks these names) imports neither numpy nor gguf.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

VOCAB_SIZE = 32000


@dataclass(frozen=True)
class Shape:
    n_layer: int
    d_model: int
    d_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int = VOCAB_SIZE

    @property
    def kv_dim(self) -> int:
        return self.d_model // self.n_head * self.n_head_kv


SHAPES: dict[str, Shape] = {
    "tiny": Shape(4, 256, 704, 4, 4),
    "small": Shape(8, 1024, 2816, 8, 8),
    "7B": Shape(32, 4096, 11008, 32, 32),
    "13B": Shape(40, 5120, 13824, 40, 40),
    "34B": Shape(48, 8192, 22016, 64, 8),
    "70B": Shape(80, 8192, 28672, 64, 8),
}

QUANT_NAMES = ("F16", "Q8_0", "Q4_0")


@dataclass(frozen=True)
class SynthSpec:
    shape: str
    quant: str
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def default_filename(spec: SynthSpec) -> str:
    """One name per spec: two seeds never share a file (seed 0 keeps the short name)."""
    return f"{spec.shape}-{spec.quant}.gguf" if spec.seed == 0 else f"{spec.shape}-{spec.quant}-seed{spec.seed}.gguf"

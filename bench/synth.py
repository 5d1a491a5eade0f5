"""Deterministic synthetic llama-architecture GGUF files.

Weights are random but seeded, so the same spec always gives the same bytes; the tokenizer is a
valid SentencePiece-style vocabulary of 32000 pieces. Tensors are streamed one at a time, so a 70B
file (38.8 GB at Q4_0) never has to fit in memory.
"""

from __future__ import annotations

import os
import stat
import struct
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

from bench.errors import SynthError
from bench.gguf_header import HeaderError, read_fields
from bench.shapes import QUANT_NAMES, SHAPES, VOCAB_SIZE, Shape, SynthSpec

SPEC_KEY = "perfgate.synth_spec"
QK = 32  # elements per Q4_0 / Q8_0 block

QUANTS: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = dict(
    zip(
        QUANT_NAMES,
        [
            (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
            (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
            (GGMLQuantizationType.Q4_0, LlamaFileType.MOSTLY_Q4_0),
        ],
        strict=True,
    )
)

# bytes per block of QK elements: an fp16 scale, then the quants
_BLOCK_BYTES = {GGMLQuantizationType.Q4_0: 2 + QK // 2, GGMLQuantizationType.Q8_0: 2 + QK}
_POOL_BLOCKS = 1 << 20


def _tensor_plan(shape: Shape) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy shape (rows, cols), quantized?) in file order."""
    d, v = shape.d_model, shape.n_vocab
    plan: list[tuple[str, tuple[int, ...], bool]] = [("token_embd.weight", (v, d), True)]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (d,), False),
            (p + "attn_q.weight", (d, d), True),
            (p + "attn_k.weight", (shape.kv_dim, d), True),
            (p + "attn_v.weight", (shape.kv_dim, d), True),
            (p + "attn_output.weight", (d, d), True),
            (p + "ffn_norm.weight", (d,), False),
            (p + "ffn_gate.weight", (shape.d_ff, d), True),
            (p + "ffn_up.weight", (shape.d_ff, d), True),
            (p + "ffn_down.weight", (d, shape.d_ff), True),
        ]
    plan += [("output_norm.weight", (d,), False), ("output.weight", (v, d), True)]
    return plan


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(tokens) < VOCAB_SIZE:
        n, piece = i, ""
        while True:
            piece = letters[n % 26] + piece
            n = n // 26 - 1
            if n < 0:
                break
        tokens.append("\u2581" + piece)
        types.append(TokenType.NORMAL)
        i += 1
    scores = [0.0] * 3 + [0.0] * 256 + [-float(k) for k in range(VOCAB_SIZE - 259)]
    return tokens, scores, [int(t) for t in types]


class _WeightSource:
    """Seeded random weights, drawn from a fixed pool so 40 GB are written at disk speed."""

    def __init__(self, seed: int, qtype: GGMLQuantizationType) -> None:
        self.rng = np.random.default_rng(seed)
        self.qtype = qtype
        if qtype in _BLOCK_BYTES:
            pool = self.rng.integers(0, 256, size=(_POOL_BLOCKS, _BLOCK_BYTES[qtype]), dtype=np.uint8)
            # a small positive fp16 scale keeps activations finite: weight std ~0.02
            scale = 0.02 / (4.6 if qtype == GGMLQuantizationType.Q4_0 else 73.0)
            scales = (scale * self.rng.uniform(0.5, 1.5, size=_POOL_BLOCKS)).astype(np.float16)
            pool[:, :2] = scales.view(np.uint8).reshape(-1, 2)
            self.pool = pool
        else:
            self.pool = (self.rng.standard_normal(_POOL_BLOCKS * QK) * 0.02).astype(np.float16)

    def tensor(self, index: int, shape: tuple[int, ...], quantized: bool) -> np.ndarray:
        if not quantized:
            return np.ones(shape, dtype=np.float32)
        rows, cols = shape
        offset = (index * 7919) % (len(self.pool) // 2)
        if self.qtype in _BLOCK_BYTES:
            blocks = rows * cols // QK
            data = np.resize(self.pool[offset:], (blocks, _BLOCK_BYTES[self.qtype]))
            return data.reshape(rows, cols // QK * _BLOCK_BYTES[self.qtype])
        return np.resize(self.pool[offset:], (rows, cols))


def existing_spec(path: Path) -> str | None:
    """The synth digest stored in a GGUF file, or None when absent or unreadable (header only, streamed)."""
    try:
        with path.open("rb") as fh:
            value = read_fields(fh).get(SPEC_KEY)
    except (OSError, HeaderError, struct.error):
        return None
    return value if isinstance(value, str) else None


def _check_target(out: Path) -> None:
    """perfgate writes only regular files it made: never through a link, onto a device, or over a user's GGUF."""
    try:
        st = out.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SynthError(f"{out}: cannot inspect: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise SynthError(f"{out} is a symbolic link: perfgate writes only regular files it made; choose another --out")
    if not stat.S_ISREG(st.st_mode):
        raise SynthError(f"{out} exists and is not a regular file: refusing to write over it")
    if existing_spec(out) is None:
        raise SynthError(f"{out} exists and was not made by `bench synth` (no {SPEC_KEY}): refusing to overwrite it")


def synthesize(spec: SynthSpec, out: Path) -> bool:
    """Write the model for `spec` to `out`. Returns False when an identical file already exists."""
    if spec.shape not in SHAPES:
        raise SynthError(f"unknown shape {spec.shape!r}; choose one of {', '.join(SHAPES)}")
    if spec.quant not in QUANTS:
        raise SynthError(f"unknown quant {spec.quant!r}; choose one of {', '.join(QUANTS)}")
    if not 0 <= spec.seed < 2**32:
        raise SynthError(f"seed: expected 0 to {2**32 - 1}, got {spec.seed}")
    _check_target(out)
    if out.exists() and existing_spec(out) == spec.digest():
        return False
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # a fresh, exclusive temp file beside the target: no link or earlier leftover is followed
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    except OSError as exc:
        raise SynthError(f"{out}: cannot write here: {exc.strerror}") from exc
    os.close(fd)
    partial = Path(name)
    try:
        _write(spec, partial)
        partial.replace(out)
    except OSError as exc:
        raise SynthError(f"{out}: writing failed: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return True


def _write(spec: SynthSpec, partial: Path) -> None:
    shape = SHAPES[spec.shape]
    qtype, ftype = QUANTS[spec.quant]

    writer = GGUFWriter(partial, "llama")
    writer.add_name(f"perfgate-synth-{spec.shape}-{spec.quant}")
    writer.add_string(SPEC_KEY, spec.digest())
    writer.add_context_length(4096)
    writer.add_embedding_length(shape.d_model)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.d_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.d_model // shape.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(int(ftype))
    writer.add_vocab_size(shape.n_vocab)
    writer.add_quantization_version(2)
    tokens, scores, types = _vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    source = _WeightSource(spec.seed, qtype)
    plan = _tensor_plan(shape)
    for name, tshape, quantized in plan:
        if quantized and qtype in _BLOCK_BYTES:
            rows, cols = tshape
            nbytes = rows * cols // QK * _BLOCK_BYTES[qtype]
            writer.add_tensor_info(name, (rows, cols // QK * _BLOCK_BYTES[qtype]), np.dtype(np.uint8), nbytes, qtype)
        elif quantized:
            writer.add_tensor_info(name, tshape, np.dtype(np.float16), int(np.prod(tshape)) * 2)
        else:
            writer.add_tensor_info(name, tshape, np.dtype(np.float32), int(np.prod(tshape)) * 4)
    writer.write_header_to_file(partial)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (_name, tshape, quantized) in enumerate(plan):
        writer.write_tensor_data(source.tensor(index, tshape, quantized))
    writer.close()

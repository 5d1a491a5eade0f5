from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from gguf import GGUFReader

from bench.errors import SynthError
from bench.synth import _BLOCK_BYTES, QK, QUANTS, SHAPES, SynthSpec, _tensor_plan, synthesize


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_spec_gives_same_bytes_and_is_skipped_when_present(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert synthesize(SynthSpec("tiny", "Q4_0"), a) is True
    assert synthesize(SynthSpec("tiny", "Q4_0"), b) is True
    assert _sha(a) == _sha(b)
    mtime = a.stat().st_mtime_ns
    assert synthesize(SynthSpec("tiny", "Q4_0"), a) is False
    assert a.stat().st_mtime_ns == mtime


def test_other_seed_or_quant_rewrites_the_file(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    synthesize(SynthSpec("tiny", "Q4_0"), p)
    first = _sha(p)
    assert synthesize(SynthSpec("tiny", "Q4_0", seed=1), p) is True
    assert _sha(p) != first


def test_file_is_a_llama_gguf_with_the_asked_shape_and_tokenizer(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    synthesize(SynthSpec("tiny", "Q8_0"), p)
    reader = GGUFReader(p)
    assert reader.get_field("general.architecture").contents() == "llama"
    assert reader.get_field("llama.block_count").contents() == SHAPES["tiny"].n_layer
    assert reader.get_field("llama.feed_forward_length").contents() == SHAPES["tiny"].d_ff
    assert len(reader.get_field("tokenizer.ggml.tokens").data) == 32000
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"


@pytest.mark.parametrize(("shape", "expected_gb"), [("7B", 3.79), ("70B", 38.8)])
def test_q4_0_ladder_sizes_match_the_published_ones(shape: str, expected_gb: float) -> None:
    plan = _tensor_plan(SHAPES[shape])
    q4 = QUANTS["Q4_0"][0]
    total = sum(
        r * c // QK * _BLOCK_BYTES[q4] if quant else r * 4
        for name, (r, *rest), quant in plan
        for c in (rest[0] if rest else 1,)
    )
    assert total / 1e9 == pytest.approx(expected_gb, rel=0.01)


def test_unknown_shape_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="unknown shape '9B'"):
        synthesize(SynthSpec("9B", "Q4_0"), tmp_path / "x.gguf")

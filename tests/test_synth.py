from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader

from bench.config import load_config
from bench.errors import SynthError
from bench.shapes import SHAPES, SynthSpec, default_filename
from bench.synth import _BLOCK_BYTES, QK, QUANTS, _tensor_plan, synthesize
from tests.conftest import bench_cli


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


def test_synth_never_writes_through_a_symlink_onto_a_device_or_over_a_users_gguf(
    tmp_path: Path, models_dir: Path
) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's own file\n")
    link = tmp_path / "link.gguf"
    link.symlink_to(victim)
    with pytest.raises(SynthError, match="symbolic link"):
        synthesize(SynthSpec("tiny", "Q4_0"), link)
    assert victim.read_text() == "the user's own file\n"
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    with pytest.raises(SynthError, match="not a regular file"):
        synthesize(SynthSpec("tiny", "Q4_0"), fifo)
    with pytest.raises(SynthError, match="not a regular file"):
        synthesize(SynthSpec("tiny", "Q4_0"), Path("/dev/null"))
    # a real GGUF that bench synth did not make (the architecture rewritten keeps it a valid file)
    users = tmp_path / "users-model.gguf"
    good = (models_dir / "tiny-Q4_0.gguf").read_bytes()
    users.write_bytes(good.replace(b"perfgate.synth_spec", b"someone.else_s_key!"))
    before = _sha(users)
    with pytest.raises(SynthError, match="not made by `bench synth`"):
        synthesize(SynthSpec("tiny", "Q8_0"), users)
    assert _sha(users) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.gguf", "link.gguf", "precious.txt", "users-model.gguf"]


def test_two_seeds_never_share_a_default_file_name(tmp_path: Path, write_config: Any) -> None:
    names = {default_filename(SynthSpec("tiny", "Q4_0", seed)) for seed in (0, 1, 2)}
    assert len(names) == 3
    cfg = write_config(
        [{"name": "a", "synth": {"shape": "tiny", "seed": 1}}, {"name": "b", "synth": {"shape": "tiny", "seed": 2}}]
    )
    config = load_config(cfg)
    assert config.model_path(config.models[0]) != config.model_path(config.models[1])


def test_bench_synth_refusal_is_one_error_line_exit_2(tmp_path: Path) -> None:
    link = tmp_path / "l.gguf"
    link.symlink_to(tmp_path / "elsewhere")
    proc = bench_cli("synth", "--shape", "tiny", "--out", str(link))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "elsewhere").exists()
    proc = bench_cli("synth", "--shape", "tiny", "--seed", "-1", "--out", str(tmp_path / "x.gguf"))
    assert proc.returncode == 2 and "seed" in proc.stderr and "Traceback" not in proc.stderr

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import load_config
from bench.errors import ConfigError
from tests.conftest import PYTHON, bench_cli

GOOD = f"""\
models:
  - name: tiny-q4
    synth: {{shape: tiny, quant: Q4_0}}
builds:
  - name: local
    python: {PYTHON}
suite: {{n_prompt: 512, n_gen: 128, repetitions: 5}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "models.yaml"
    p.write_text(text)
    return p


def test_the_documented_shape_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.suite.repetitions == 5 and cfg.suite.n_gpu_layers == "all" and cfg.suite.warmup == 1
    assert cfg.model_path(cfg.models[0]) == tmp_path / "models" / "tiny-Q4_0.gguf"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("repetitions: 5", "repetitions: three", r"models.yaml:7: suite.repetitions: .*integer.*'three'"),
        ("repetitions: 5", "repetitions: 5, colour: red", r"models.yaml:7: suite.colour: unknown key 'colour'"),
        ("quant: Q4_0", "quant: Q3_X", r"models.yaml:3: models\[0\].synth.quant: unknown quant 'Q3_X'"),
        (
            "synth: {shape: tiny, quant: Q4_0}",
            "path: nowhere/missing.gguf",
            r"models.yaml:3: models\[0\].path: file not found: .*nowhere/missing.gguf",
        ),
        (f"python: {PYTHON}", "python: /no/such/python", r"models.yaml:6: builds\[0\].python: no executable"),
    ],
)
def test_bad_config_names_file_line_and_field(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, GOOD.replace(old, new)))


def test_cli_exits_2_with_the_message_and_writes_nothing(tmp_path: Path) -> None:
    cfg = _write(tmp_path, GOOD.replace("repetitions: 5", "repetitions: three"))
    db = tmp_path / "store.sqlite"
    proc = bench_cli("run", "--config", str(cfg), "--db", str(db))
    assert proc.returncode == 2
    assert "models.yaml:7: suite.repetitions" in proc.stderr
    assert not db.exists()


def test_unknown_command_option_is_a_usage_error(tmp_path: Path) -> None:
    proc = bench_cli("results", "--format", "yaml", "--db", str(tmp_path / "s.sqlite"))
    assert proc.returncode == 2
    assert "--format" in proc.stderr

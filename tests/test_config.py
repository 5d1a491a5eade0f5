from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def test_a_model_path_that_is_not_a_regular_file_is_refused_at_config_time(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    cfg = write_config([{"name": "fifo", "path": str(fifo)}], on_missing_model="record")
    with pytest.raises(ConfigError, match=r"models\[0\]\.path: not a regular file"):
        load_config(cfg)


@pytest.mark.parametrize(
    ("suite", "field"),
    [
        ({"repetitions": 10**9}, "suite.repetitions"),
        ({"warmup": -1}, "suite.warmup"),
        ({"n_gpu_layers": -5}, "n_gpu_layers"),
    ],
)
def test_values_out_of_range_are_refused_at_config_time(
    write_config: Callable[..., Path], models_dir: Path, suite: dict[str, Any], field: str
) -> None:
    cfg = write_config([{"name": "m", "path": str(models_dir / "tiny-Q4_0.gguf")}], **suite)
    with pytest.raises(ConfigError, match=field):
        load_config(cfg)


def test_duplicate_yaml_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("models:\n  - name: a\n    path: x.gguf\nbuilds:\n  - name: b\nsuite:\n  n_gen: 1\n  n_gen: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:8: invalid YAML: duplicate key 'n_gen'"):
        load_config(cfg)


def test_negative_rounds_is_a_usage_error(write_config: Callable[..., Path], models_dir: Path, tmp_path: Path) -> None:
    cfg = write_config([{"name": "m", "path": str(models_dir / "tiny-Q4_0.gguf")}])
    proc = bench_cli("run", "--config", str(cfg), "--db", str(tmp_path / "r.sqlite"), "--interleave", "--rounds", "-1")
    assert proc.returncode == 2 and "--rounds" in proc.stderr and "Traceback" not in proc.stderr

"""models.yaml → validated, typed configuration. Every error names file:line: field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.errors import ConfigError
from bench.metrics import METRICS
from bench.synth import QUANTS, SHAPES, SynthSpec, default_filename

DEFAULT_CONFIG = Path("models.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthConfig(_Strict):
    shape: str
    quant: str = "Q4_0"
    seed: int = 0

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, v: str) -> str:
        if v not in SHAPES:
            raise ValueError(f"unknown shape {v!r}; choose one of {', '.join(SHAPES)}")
        return v

    @field_validator("quant")
    @classmethod
    def _known_quant(cls, v: str) -> str:
        if v not in QUANTS:
            raise ValueError(f"unknown quant {v!r}; choose one of {', '.join(QUANTS)}")
        return v

    def spec(self) -> SynthSpec:
        return SynthSpec(self.shape, self.quant, self.seed)


class Thresholds(_Strict):
    """Allowed change in percent before a significant change fails the gate, one field per registered
    metric: negative for throughput (t/s may drop this much), positive for costs (load time, memory)."""

    pp_ts: float | None = None
    tg_ts: float | None = None
    load_s: float | None = None
    rss_peak_bytes: float | None = None


# typed fields for readers, the registry for the names: a metric added there must be added here
assert tuple(Thresholds.model_fields) == tuple(METRICS), "Thresholds must name every registered metric"


class ModelConfig(_Strict):
    name: str = Field(min_length=1)
    path: Path | None = None
    synth: SynthConfig | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    thresholds: Thresholds | None = None

    @model_validator(mode="after")
    def _path_or_synth(self) -> ModelConfig:
        if self.path is None and self.synth is None:
            raise ValueError("give either 'path' or 'synth'")
        return self


class BuildConfig(_Strict):
    name: str = Field(min_length=1)
    python: Path = Path(".venv/bin/python")
    lib: Path | None = None
    env: dict[str, str] = {}


class SuiteConfig(_Strict):
    n_prompt: int = Field(default=512, ge=0)
    n_gen: int = Field(default=128, ge=0)
    repetitions: int = Field(default=5, ge=1)
    warmup: int = Field(default=1, ge=0)
    n_gpu_layers: int | Literal["all"] = "all"
    n_batch: int = Field(default=2048, ge=1)
    n_ubatch: int = Field(default=512, ge=1)
    threads: int | None = Field(default=None, ge=1)
    flash_attn: Literal["auto", "on", "off"] = "auto"
    timeout_s: float | None = Field(default=None, gt=0)
    expect_gpu: bool | Literal["auto"] = "auto"
    on_missing_model: Literal["error", "record"] = "error"
    models_dir: Path = Path("models")
    device_budget_bytes: int | None = Field(default=None, gt=0)  # overrides the detected budget


class GateConfig(_Strict):
    thresholds: Thresholds = Thresholds(**{m.name: m.default_threshold_pct for m in METRICS.values()})
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # per model, merged over `thresholds` (filled from models[].thresholds)
    per_model: dict[str, Thresholds] = {}

    def limits(self, model: str) -> dict[str, float]:
        merged = self.thresholds.model_dump(exclude_none=True)
        if model in self.per_model:
            merged.update(self.per_model[model].model_dump(exclude_none=True))
        return merged


class Config(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    builds: list[BuildConfig] = Field(min_length=1)
    suite: SuiteConfig = SuiteConfig()
    gate: GateConfig = GateConfig()
    source: Path = DEFAULT_CONFIG
    base_dir: Path = Path(".")

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for kind, names in (("models", [m.name for m in self.models]), ("builds", [b.name for b in self.builds])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name {dupes[0]!r}")
        return self

    def resolve(self, p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def model_path(self, model: ModelConfig) -> Path:
        if model.path is not None:
            return self.resolve(model.path)
        assert model.synth is not None
        return self.resolve(self.suite.models_dir) / default_filename(model.synth.spec())

    def gate_settings(self) -> GateConfig:
        """The gate section with each model's own thresholds folded in."""
        per_model = {m.name: m.thresholds for m in self.models if m.thresholds is not None}
        return self.gate.model_copy(update={"per_model": per_model})


def load_gate(path: Path) -> GateConfig:
    """The gate's settings from a config file; the defaults when the default file is absent."""
    if not path.exists():
        if path != DEFAULT_CONFIG:
            raise ConfigError(f"{path}: no such config file")
        return GateConfig()
    return load_config(path, check_files=False).gate_settings()


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its nearest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_config(path: Path | str = DEFAULT_CONFIG, *, check_files: bool = True) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: (top level): expected a mapping with 'models' and 'builds'")
    try:
        config = Config.model_validate({**data, "source": path, "base_dir": path.parent.resolve()})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.endswith("]")))
        # pydantic names union branches ("int", "literal['all']"); they are not YAML keys
        loc = tuple(p for p in loc if p in _keys_of(data, loc) or isinstance(p, int))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
        got = (
            f", got {err['input']!r}"
            if err["type"] not in ("extra_forbidden", "missing") and not isinstance(err.get("input"), dict | list)
            else ""
        )
        raise ConfigError(f"{path}:{_line_of(root, loc)}: {_dotted(loc)}: {msg}{got}") from exc
    if check_files:
        _check_files(config, root)
    return config


def _keys_of(data: Any, loc: tuple[Any, ...]) -> set[Any]:
    keys: set[Any] = set()
    node = data
    for part in loc:
        if isinstance(node, dict):
            keys.update(node.keys())
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return keys


def _check_files(config: Config, root: yaml.Node | None) -> None:
    for i, build in enumerate(config.builds):
        python = config.resolve(build.python)
        if not (python.exists() and os.access(python, os.X_OK)):
            loc = ("builds", i, "python")
            raise ConfigError(f"{config.source}:{_line_of(root, loc)}: {_dotted(loc)}: no executable at {python}")
        if build.lib is not None and not config.resolve(build.lib).is_dir():
            loc = ("builds", i, "lib")
            raise ConfigError(
                f"{config.source}:{_line_of(root, loc)}: {_dotted(loc)}: no directory at {config.resolve(build.lib)}"
            )
    if config.suite.on_missing_model == "record":
        return
    for i, model in enumerate(config.models):
        if model.path is not None and not config.model_path(model).exists():
            loc = ("models", i, "path")
            raise ConfigError(
                f"{config.source}:{_line_of(root, loc)}: {_dotted(loc)}: file not found: {config.model_path(model)}"
            )

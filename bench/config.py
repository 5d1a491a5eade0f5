"""models.yaml → validated, typed configuration. Every error names file:line: field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from bench.defaults import DEFAULT_CONFIG
from bench.errors import ConfigError
from bench.metrics import METRICS
from bench.shapes import QUANT_NAMES, SHAPES, SynthSpec, default_filename

DEFAULT_PYTHON = Path(".venv/bin/python")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthConfig(_Strict):
    shape: str
    quant: str = "Q4_0"
    seed: int = Field(default=0, ge=0, le=2**32 - 1)

    @field_validator("shape")
    @classmethod
    def _known_shape(cls, v: str) -> str:
        if v not in SHAPES:
            raise ValueError(f"unknown shape {v!r}; choose one of {', '.join(SHAPES)}")
        return v

    @field_validator("quant")
    @classmethod
    def _known_quant(cls, v: str) -> str:
        if v not in QUANT_NAMES:
            raise ValueError(f"unknown quant {v!r}; choose one of {', '.join(QUANT_NAMES)}")
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


ENGINES = ("llama-cpp-python", "llama-bench", "koboldcpp")
_PIP_SPEC = r"^[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?==[A-Za-z0-9_.+\-]+$"


class SourceConfig(_Strict):
    """Where a build's code comes from: exactly one of git, dir, sdist, pip."""

    git: str | None = None  # a repository the runner can reach (path or URL)
    ref: str | None = None  # tag, branch or sha (git only; default HEAD)
    dir: Path | None = None  # a working tree, taken as it is
    in_place: bool = False  # dir only: build inside the tree instead of a copy
    sdist: str | None = Field(default=None, pattern=_PIP_SPEC)  # llama-cpp-python==0.2.57: its vendored llama.cpp
    pip: str | None = Field(default=None, pattern=_PIP_SPEC)  # llama-cpp-python==0.2.90 in its own venv

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        given = [k for k in ("git", "dir", "sdist", "pip") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of git, dir, sdist, pip (got {', '.join(given) or 'none'})")
        if self.ref is not None and self.git is None:
            raise ValueError("'ref' goes with 'git'")
        if self.in_place and self.dir is None:
            raise ValueError("'in_place' goes with 'dir'")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("git", "dir", "sdist", "pip") if getattr(self, k) is not None)


class BuildConfig(_Strict):
    name: str = Field(min_length=1, max_length=200)
    engine: Literal["llama-cpp-python", "llama-bench", "koboldcpp"] = "llama-cpp-python"
    python: Path | None = None  # llama-cpp-python: an interpreter with llama_cpp (default .venv/bin/python)
    lib: Path | None = None  # llama-cpp-python: LLAMA_CPP_LIB_PATH
    path: Path | None = None  # llama-bench: the binary or its directory; koboldcpp: its checkout or binary
    source: SourceConfig | None = None  # built by `bench build`
    # llama-cpp-python: load the libllama of this other build of the config (built from its source), by name
    library_of: str | None = None
    system: Literal["cmake", "make"] = "cmake"
    cmake_args: list[str] | None = None  # None: suite.cmake_args
    make_vars: dict[str, str | int] = {}
    targets: list[str] | None = None  # None: what the engine needs
    args: list[str] = []  # extra engine arguments (KoboldCPP backend flags such as --usecublas)
    env: dict[str, str] = {}

    @model_validator(mode="after")
    def _fits_engine(self) -> BuildConfig:
        built = self.source is not None
        if self.engine == "llama-cpp-python":
            if self.path is not None:
                raise ValueError("'path' is for the llama-bench and koboldcpp engines; use 'python'/'lib'")
            if built and (self.python is not None or self.lib is not None):
                raise ValueError("a built llama-cpp-python build gets its 'python'/'lib' from 'source'")
            if self.library_of is not None and (built or self.python is not None or self.lib is not None):
                raise ValueError("'library_of' takes the library of another build: give no 'source', 'python' or 'lib'")
        else:
            if self.library_of is not None:
                raise ValueError(f"'library_of' is for the llama-cpp-python engine, not {self.engine}")
            if self.python is not None or self.lib is not None:
                raise ValueError(f"'python'/'lib' are for the llama-cpp-python engine, not {self.engine}")
            if built == (self.path is not None):
                raise ValueError(f"the {self.engine} engine needs exactly one of 'path' or 'source'")
            if self.source is not None and self.source.pip is not None:
                raise ValueError(f"source.pip installs llama-cpp-python; the {self.engine} engine needs git/dir/sdist")
        return self


_TOKENS_MAX = 1 << 20  # far above any context a GGUF of today declares


class SuiteConfig(_Strict):
    # bounds are refused at config time: a run must never start what it cannot finish or store
    n_prompt: int = Field(default=512, ge=0, le=_TOKENS_MAX)
    n_gen: int = Field(default=128, ge=0, le=_TOKENS_MAX)
    repetitions: int = Field(default=5, ge=1, le=1000)
    warmup: int = Field(default=1, ge=0, le=100)
    # loads per (build, model), each in a fresh process, so load time has samples to gate (1: reported, not gated)
    load_repetitions: int = Field(default=1, ge=1, le=100)
    n_gpu_layers: int | Literal["all"] = Field(default="all", union_mode="left_to_right")
    n_batch: int = Field(default=2048, ge=1, le=_TOKENS_MAX)
    n_ubatch: int = Field(default=512, ge=1, le=_TOKENS_MAX)
    threads: int | None = Field(default=None, ge=1, le=4096)
    flash_attn: Literal["auto", "on", "off"] = "auto"
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    expect_gpu: bool | Literal["auto"] = "auto"
    on_missing_model: Literal["error", "record"] = "error"
    models_dir: Path = Path("models")
    device_budget_bytes: int | None = Field(default=None, gt=0)  # overrides the detected budget
    cmake_args: list[str] = []  # every built build's default (a build's own cmake_args replace it)
    build_cache: Path | None = None  # default $PERFGATE_BUILD_CACHE or ~/.cache/perfgate/builds

    @field_validator("n_gpu_layers")
    @classmethod
    def _layers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not -1 <= v <= 100_000:
            raise ValueError("expected 'all', -1 (all) or a layer count from 0 to 100000")
        return v

    def settings_key(self) -> dict[str, object]:
        """What makes two runs' numbers comparable: the suite settings that change the measurement."""
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if k in ("n_prompt", "n_gen", "n_gpu_layers", "n_batch", "n_ubatch", "threads", "flash_attn")
        }


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


class DashboardConfig(_Strict):
    """What the site compares against (policy, not page building)."""

    baseline: str | None = None  # a build name every newest run is held to
    baseline_pattern: str | None = None  # or: the newest earlier build whose name matches this glob ("v*")
    # GB/s by machine hostname, fingerprint or GPU name, over the table of known chips (bench.report.site.roofline)
    bandwidth_gbs: dict[str, float] = {}
    # each machine × build's newest nightlies get a page against the night before (comparing costs time)
    nightly_pages: int = Field(default=7, ge=0, le=10_000)

    @model_validator(mode="after")
    def _one_baseline(self) -> DashboardConfig:
        if self.baseline is not None and self.baseline_pattern is not None:
            raise ValueError("give either 'baseline' or 'baseline_pattern'")
        return self


class Config(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    builds: list[BuildConfig] = Field(min_length=1)
    suite: SuiteConfig = SuiteConfig()
    gate: GateConfig = GateConfig()
    dashboard: DashboardConfig = DashboardConfig()
    source: Path = DEFAULT_CONFIG
    base_dir: Path = Path(".")
    _root: Any = PrivateAttr(default=None)  # the YAML node tree, for file:line in later errors

    def where(self, *loc: Any) -> str:
        """'file:line: dotted.field' of a config entry, for errors found after loading (a git ref …)."""
        return f"{self.source}:{_line_of(self._root, loc) or 1}: {_dotted(loc)}"

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for kind, names in (("models", [m.name for m in self.models]), ("builds", [b.name for b in self.builds])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate name {dupes[0]!r}")
        by_name = {b.name: b for b in self.builds}
        for build in self.builds:
            if build.library_of is None:
                continue
            other = by_name.get(build.library_of)
            if other is None or other.source is None or other.source.pip is not None:
                raise ValueError(
                    f"builds: {build.name!r}: library_of {build.library_of!r} must name a build of this config "
                    "built from a git, dir or sdist source"
                )
        return self

    def build_named(self, name: str) -> BuildConfig:
        return next(b for b in self.builds if b.name == name)

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config that says a thing twice is refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: Path | str = DEFAULT_CONFIG, *, check_files: bool = True) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from exc
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
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
    config._root = root
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
    from bench.engines.paths import locate_engine_path

    def fail(loc: tuple[Any, ...], message: str) -> ConfigError:
        return ConfigError(f"{config.source}:{_line_of(root, loc)}: {_dotted(loc)}: {message}")

    for i, build in enumerate(config.builds):
        if build.engine == "llama-cpp-python" and build.source is None and build.library_of is None:
            python = config.resolve(build.python or DEFAULT_PYTHON)
            if not (python.exists() and os.access(python, os.X_OK)):
                raise fail(("builds", i, "python"), f"no executable at {python}")
            if build.lib is not None and not config.resolve(build.lib).is_dir():
                raise fail(("builds", i, "lib"), f"no directory at {config.resolve(build.lib)}")
        if build.path is not None:
            problem = locate_engine_path(build.engine, config.resolve(build.path))[1]
            if problem:
                raise fail(("builds", i, "path"), f"build {build.name!r}: {problem}")
        src = build.source
        if src is not None and src.dir is not None and not config.resolve(src.dir).is_dir():
            where = config.resolve(src.dir)
            raise fail(("builds", i, "source", "dir"), f"build {build.name!r}: no directory at {where}")
        remote = src is not None and src.git is not None and ("://" in src.git or ":" in src.git.split("/")[0])
        if src is not None and src.git is not None and not remote and not config.resolve(Path(src.git)).exists():
            raise fail(("builds", i, "source", "git"), f"build {build.name!r}: no repository at {src.git}")
    for i, model in enumerate(config.models):
        if model.path is None:
            continue
        path = config.model_path(model)
        if path.exists() and not path.is_file():  # a FIFO, a device or a folder: reading it could hang
            raise fail(("models", i, "path"), f"not a regular file: {path}")
        if not path.exists() and config.suite.on_missing_model != "record":
            raise fail(("models", i, "path"), f"file not found: {path}")

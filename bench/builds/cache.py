"""The build cache: one folder per key, made in a temp dir and moved into place whole, under a lock.

Key = digest of (resolved source, system, args, vars, targets, toolchain, OS/arch). Two runners on
one machine never build one key at once (a kernel lock per key), and a killed build leaves only a
temp folder that the next build of that key removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.builds.compile import (
    BuildFailure,
    Progress,
    ccache,
    collect_artifacts,
    collect_runtime_tree,
    compile_tree,
    toolchain,
)
from bench.builds.source import ResolvedSource, export, resolve
from bench.config import BuildConfig, Config
from bench.errors import ConfigError

RECORD = "perfgate-build.json"
LOG = "build.log"
# what each engine needs built when a build names no targets
DEFAULT_TARGETS = {
    ("llama-bench", "cmake"): ["llama-bench"],
    ("llama-bench", "make"): ["llama-bench"],
    ("llama-cpp-python", "cmake"): ["llama"],
    ("llama-cpp-python", "make"): ["libllama.so"],
    ("koboldcpp", "cmake"): [],
    ("koboldcpp", "make"): [],
}


def cache_root(config: Config | None = None) -> Path:
    if config is not None and config.suite.build_cache is not None:
        return config.resolve(config.suite.build_cache)
    env = os.environ.get("PERFGATE_BUILD_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "perfgate" / "builds"


@dataclass
class BuildRecord:
    """What a cached build is and how it went; stored as JSON beside its artifacts."""

    key: str
    name: str
    engine: str
    source: dict[str, Any]
    system: str
    cmake_args: list[str]
    make_vars: dict[str, str]
    targets: list[str]
    toolchain: dict[str, str | None]
    ok: bool
    build_s: float
    ccache: bool
    failure: dict[str, Any] | None = None  # kind, line, line_no
    artifacts: dict[str, int] = field(default_factory=dict)
    created_at: str = ""
    last_used: str = ""
    path: str = ""

    @property
    def dir(self) -> Path:
        return Path(self.path)

    @property
    def bin_dir(self) -> Path:
        return self.dir / "bin"

    @property
    def python(self) -> Path:
        """The interpreter of a pip build's own venv."""
        return self.dir / "venv" / "bin" / "python"

    @property
    def size_bytes(self) -> int:
        return sum(self.artifacts.values())

    def log_text(self) -> str:
        try:
            return (self.dir / LOG).read_text(errors="replace")
        except OSError:
            return ""

    def identity(self) -> dict[str, Any]:
        """The whole record as the cache lists it (no path, no last use)."""
        out = asdict(self)
        out.pop("path")
        out.pop("last_used")
        return out

    def details(self) -> dict[str, Any]:
        """What the store keeps in builds.details: `source` (kind, location, ref, commit, dirty …) and `build`
        (key, system, args, vars, targets, toolchain, seconds, artifact sizes, failure)."""
        build = self.identity()
        return {"source": build.pop("source"), "build": build}

    @classmethod
    def load(cls, folder: Path) -> BuildRecord | None:
        try:
            data = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            return None
        data["path"] = str(folder)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, folder: Path) -> None:
        data = asdict(self)
        data.pop("path")
        tmp = folder / (RECORD + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(folder / RECORD)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BuildPlan:
    """One build of the config, resolved: what would be built, under which key."""

    build: BuildConfig
    resolved: ResolvedSource
    key: str
    cmake_args: list[str]
    make_vars: dict[str, str]
    targets: list[str]
    toolchain: dict[str, str | None]


def plan_build(config: Config, build: BuildConfig, cache: Path | None = None) -> BuildPlan:
    assert build.source is not None
    cache = cache or cache_root(config)
    index = next(i for i, b in enumerate(config.builds) if b.name == build.name)
    field_name = build.source.kind
    resolved = resolve(build.source, config, config.where("builds", index, "source", field_name), cache)
    cmake_args = list(build.cmake_args if build.cmake_args is not None else config.suite.cmake_args)
    make_vars = {k: str(v) for k, v in build.make_vars.items()}
    targets = list(build.targets if build.targets is not None else DEFAULT_TARGETS[(build.engine, build.system)])
    tools = toolchain()
    keyed = {
        "source": resolved.digest,
        "kind": resolved.kind,
        "system": build.system if resolved.kind != "pip" else "pip",
        "cmake_args": cmake_args,
        "make_vars": make_vars,
        "targets": targets if resolved.kind != "pip" else [],
        "toolchain": tools,
    }
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return BuildPlan(build, resolved, key, cmake_args, make_vars, targets, tools)


@contextlib.contextmanager
def _key_lock(cache: Path, key: str) -> Iterator[None]:
    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{key}.lock").open("a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # blocks while another runner builds this key
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def lookup(cache: Path, key: str) -> BuildRecord | None:
    return BuildRecord.load(cache / key)


def _touch(record: BuildRecord) -> None:
    record.last_used = _now()
    with contextlib.suppress(OSError):
        record.save(record.dir)


def ensure_built(
    config: Config, build: BuildConfig, *, progress: Progress | None = None, rebuild: bool = False
) -> BuildRecord:
    """The cached build for `build`, building it first when missing. Failures are cached records too."""
    cache = cache_root(config)
    plan = plan_build(config, build, cache)
    if not rebuild and (found := lookup(cache, plan.key)) is not None:
        _touch(found)
        return found
    with _key_lock(cache, plan.key):
        if not rebuild and (found := lookup(cache, plan.key)) is not None:  # built while we waited
            _touch(found)
            return found
        _remove_leftovers(cache, plan.key)
        record = _build(cache, plan, progress)
        final = cache / plan.key
        if final.exists():  # --rebuild: the old one goes only once the new one is complete
            shutil.rmtree(final)
        Path(record.path).rename(final)
        record.path = str(final)
        return record


def built_for(config: Config, build: BuildConfig, *, progress: Progress | None = None) -> BuildRecord | None:
    """The cached build a configured build runs from: its own source's, or the build its `library_of` names."""
    if build.source is not None:
        return ensure_built(config, build, progress=progress)
    if build.library_of is not None:
        return ensure_built(config, config.build_named(build.library_of), progress=progress)
    return None


def _remove_leftovers(cache: Path, key: str) -> None:
    """Temp folders of builds of this key that were killed (we hold the key's lock: none is live)."""
    tmp = cache / ".tmp"
    for leftover in tmp.glob(f"{key}-*") if tmp.exists() else []:
        shutil.rmtree(leftover, ignore_errors=True)


# stable paths a CMake source tree is configured through (a symlink each, held under a lock while it builds)
SOURCE_SLOTS = 16


@contextlib.contextmanager
def _stable_source(cache: Path, tree: Path) -> Iterator[Path]:
    """`tree` under a path that is the same from one build to the next: llama.cpp's unity build writes each
    source's absolute path into the files it compiles, so a build made in a fresh temp folder would miss ccache
    on all of libllama however little changed (20 s of a cached 22 s rebuild on 2 cores). The build folder
    stays in the temp folder; only the source is seen through the slot. All slots busy: the tree as it is."""
    slots = cache / ".tmp" / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for n in range(SOURCE_SLOTS):
        fh = (slots / f"{n}.lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        link, fresh = slots / str(n), slots / f".{n}.new"
        try:
            fresh.unlink(missing_ok=True)
            fresh.symlink_to(tree, target_is_directory=True)
            fresh.replace(link)
            yield link
            return
        finally:
            link.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
    yield tree


def _build(cache: Path, plan: BuildPlan, progress: Progress | None) -> BuildRecord:
    (cache / ".tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{plan.key}-", dir=cache / ".tmp"))
    out = work / "out"
    out.mkdir()
    log = out / LOG
    log.write_text(
        f"# perfgate build {plan.build.name}: {plan.resolved.kind} {plan.resolved.location} "
        f"{plan.resolved.ref or ''} {plan.resolved.commit or ''}\n"
    )
    env = dict(os.environ)
    # ccache keys on paths: made relative below the temp folder, which holds every build's work folder and the
    # source slots (_stable_source), two builds share their objects whatever their work folder or cache folder
    env.update({"CCACHE_BASEDIR": str(work.parent), "CCACHE_NOHASHDIR": "1"})
    env.update(plan.build.env)
    jobs = os.cpu_count() or 2
    start = time.monotonic()
    failure: BuildFailure | None = None
    artifacts: dict[str, int] = {}
    try:
        if plan.resolved.kind == "pip":
            ok, failure = _pip_venv(plan, out, env, log, progress)
            if ok:
                artifacts = {"venv": sum(p.stat().st_size for p in (out / "venv").rglob("*") if p.is_file())}
        else:
            tree = export(plan.resolved, work, cache)
            build_dir = (tree / "build-perfgate") if plan.resolved.in_place else (work / "build")
            stable = plan.build.system == "cmake" and not plan.resolved.in_place  # an in-place tree keeps its path
            with _stable_source(cache, tree) if stable else contextlib.nullcontext(tree) as source:
                outcome = compile_tree(
                    source,
                    build_dir,
                    system=plan.build.system,
                    cmake_args=plan.cmake_args,
                    make_vars=plan.make_vars,
                    targets=plan.targets,
                    env=env,
                    log=log,
                    jobs=jobs,
                    progress=progress,
                )
            failure = outcome.failure
            if outcome.ok and plan.build.engine == "koboldcpp":
                artifacts = collect_runtime_tree(tree, plan.targets, out / "bin")
            elif outcome.ok:
                artifacts = collect_artifacts(plan.build.system, tree, build_dir, plan.targets, out / "bin")
                missing = [t for t in plan.targets if not any(name.startswith(t) for name in artifacts)]
                if missing:
                    failure = BuildFailure("link_error", f"the build made no {', '.join(missing)}", None)
    except (OSError, subprocess.CalledProcessError) as exc:
        with log.open("a") as fh:
            fh.write(f"perfgate: {exc}\n")
        failure = BuildFailure(
            "toolchain_missing" if isinstance(exc, FileNotFoundError) else "configure_failed", str(exc), None
        )
    record = BuildRecord(
        key=plan.key,
        name=plan.build.name,
        engine=plan.build.engine,
        source=plan.resolved.as_dict(),
        system=plan.build.system if plan.resolved.kind != "pip" else "pip",
        cmake_args=plan.cmake_args,
        make_vars=plan.make_vars,
        targets=plan.targets,
        toolchain=plan.toolchain,
        ok=failure is None,
        build_s=round(time.monotonic() - start, 2),
        ccache=ccache() is not None,
        failure=asdict(failure) if failure else None,
        artifacts=artifacts,
        created_at=_now(),
        last_used=_now(),
        path=str(out),
    )
    record.save(out)
    final_out = work.parent / f"{plan.key}-done-{work.name}"
    out.rename(final_out)
    shutil.rmtree(work, ignore_errors=True)  # the source export and object files: ccache keeps what is reusable
    record.path = str(final_out)
    return record


def _pip_venv(
    plan: BuildPlan, out: Path, env: dict[str, str], log: Path, progress: Progress | None
) -> tuple[bool, BuildFailure | None]:
    """A llama-cpp-python release in its own venv, compiled from source with the build's CMAKE_ARGS."""
    from bench.builds.compile import classify_build_log

    venv = out / "venv"
    pip_env = {**env, "CMAKE_ARGS": " ".join(plan.cmake_args), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    if ccache():
        pip_env["CMAKE_ARGS"] += f" -DCMAKE_C_COMPILER_LAUNCHER={ccache()} -DCMAKE_CXX_COMPILER_LAUNCHER={ccache()}"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-binary",
            "llama-cpp-python",
            plan.resolved.location,
        ],
    ]
    for cmd in steps:
        if progress:
            progress("compile", None, None, " ".join(cmd[-2:]))
        with log.open("a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=pip_env, check=False).returncode
        if rc != 0:
            return False, classify_build_log(log.read_text(errors="replace"), "compile")
    return True, None


def list_cache(cache: Path) -> list[BuildRecord]:
    if not cache.exists():
        return []
    records = [BuildRecord.load(p) for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((r for r in records if r is not None), key=lambda r: r.last_used, reverse=True)


def prune(cache: Path, *, keep: int | None = None, older_than: timedelta | None = None) -> list[BuildRecord]:
    """Remove cached builds beyond the `keep` most recently used, or unused for longer than `older_than`."""
    records = list_cache(cache)
    doomed: list[BuildRecord] = []
    if keep is not None:
        doomed += records[keep:]
    if older_than is not None:
        cutoff = datetime.now(UTC) - older_than
        doomed += [r for r in records if r not in doomed and datetime.fromisoformat(r.last_used) < cutoff]
    for record in doomed:
        with _key_lock(cache, record.key):
            shutil.rmtree(record.dir, ignore_errors=True)
    return doomed


def parse_age(text: str) -> timedelta:
    """'7d', '12h', '30m' → a timedelta (usage errors are ConfigErrors)."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ConfigError(f"--older-than: expected a number and d, h or m (7d, 12h), got {text!r}")
    return timedelta(**{units[text[-1]]: int(text[:-1])})

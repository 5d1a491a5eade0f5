"""Configure, compile and link a tree with CMake or make, with the log kept and a failure named.

A failed build is a result, not a crash: the log is read for the kind of failure (duplicate symbols,
a missing header, a compile or link error, a failed configure, a missing toolchain) and the line that
decided it.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# the kinds of build failure, most specific first; each pattern is linear (no nested quantifiers)
BUILD_FAILURES: list[tuple[str, re.Pattern[str]]] = [
    (
        "toolchain_missing",
        re.compile(
            r"No CMAKE_(C|CXX)_COMPILER could be found|CMAKE_(C|CXX)_COMPILER not set|command not found"
            r"|unable to find utility \"(metal|metallib)\"|xcrun: error"
            r"|No such file or directory: '(cmake|make|cc|c\+\+)'"
            r"|could not find (any instance of )?Visual Studio|nvcc fatal|No CMAKE_CUDA_COMPILER could be found"
        ),
    ),
    (
        "duplicate_symbols",
        re.compile(r"\d+ duplicate symbols?|duplicate symbol\b|multiple definition of|LNK2005|already defined in"),
    ),
    (
        "missing_header",
        re.compile(r"fatal error: [^:\n]+\.(h|hpp|hh|cuh|inc): No such file|'[^'\n]+\.(h|hpp|hh|cuh)' file not found"),
    ),
    (
        "link_error",
        re.compile(
            r"undefined reference to|Undefined symbols for architecture|ld: symbol\(s\) not found"
            r"|undefined symbol:|ld returned \d+ exit status|ld: library not found|cannot find -l\S+|LNK20(01|19)"
        ),
    ),
    ("compile_error", re.compile(r"(^|\s)(fatal )?error: |\berror C\d{4}\b|\): error\b")),
]
PHASES = ("configure", "compile", "link")
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")
_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_LINKING = re.compile(
    r"Linking (C|CXX) (shared |static )?(library|executable)|^\S*(c\+\+|g\+\+|clang\+\+).* -o \S+\.(so|dylib)\b"
)

Progress = Callable[[str, int | None, int | None, str], None]  # phase, done, total, line


@dataclass(frozen=True)
class BuildFailure:
    kind: str  # one of the BUILD_FAILURES names, or configure_failed
    line: str
    line_no: int | None


def classify_build_log(text: str, failed_phase: str) -> BuildFailure:
    """Why a build failed: the first line of the most specific kind, judged within the failed phase."""
    lines = text.splitlines()
    for kind, pattern in BUILD_FAILURES:
        if kind == "compile_error" and failed_phase == "configure":
            continue
        for i, line in enumerate(lines, 1):
            if pattern.search(line):
                return BuildFailure(kind, line.strip()[:400], i)
    if failed_phase == "configure":
        first = next(
            ((i, ln) for i, ln in enumerate(lines, 1) if "CMake Error" in ln or "Error" in ln),
            (None, "configure failed"),
        )
        return BuildFailure("configure_failed", first[1].strip()[:400], first[0])
    last = next(((i, ln) for i, ln in reversed(list(enumerate(lines, 1))) if ln.strip()), (None, "no output"))
    return BuildFailure("compile_error" if failed_phase == "compile" else "link_error", last[1].strip()[:400], last[0])


def _first_line(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def toolchain() -> dict[str, str | None]:
    """What the build is compiled with: part of the cache key, since another compiler is another build."""
    return {
        "cc": _first_line([os.environ.get("CC", "cc"), "--version"]),
        "cxx": _first_line([os.environ.get("CXX", "c++"), "--version"]),
        "cmake": _first_line(["cmake", "--version"]),
        "make": _first_line(["make", "--version"]),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def ccache() -> str | None:
    return shutil.which("ccache")


@dataclass(frozen=True)
class CompileOutcome:
    ok: bool
    phase: str  # the last phase reached
    seconds: float
    failure: BuildFailure | None = None


def _stream(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, phase: str, progress: Progress | None) -> int:
    """Run one step, appending its output to the log and reporting progress line by line."""
    with log.open("a", encoding="utf-8", errors="replace") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )  # in the runner's process group: cancelling the runner's group cancels the build
        except FileNotFoundError as exc:
            fh.write(f"No such file or directory: '{cmd[0]}': {exc}\n")
            return 127
        assert proc.stdout is not None
        done = 0
        for line in proc.stdout:
            fh.write(line)
            if progress is None:
                continue
            step = phase
            total: int | None = None
            if m := _NINJA.match(line):
                done, total = int(m[1]), int(m[2])
            elif m := _PERCENT.match(line):
                done, total = int(m[1]), 100
            elif phase != "configure" and (" -c " in line or "Building" in line):
                done += 1
            if phase != "configure" and _LINKING.search(line):
                step = "link"
            progress(step, done, total, line.rstrip())
        return proc.wait()


def compile_tree(
    tree: Path,
    build_dir: Path,
    *,
    system: str,
    cmake_args: list[str],
    make_vars: dict[str, str],
    targets: list[str],
    env: dict[str, str],
    log: Path,
    jobs: int,
    progress: Progress | None = None,
) -> CompileOutcome:
    import time

    start = time.monotonic()
    launcher = ccache()
    if system == "cmake":
        args = ["cmake", "-S", str(tree), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release"]
        if shutil.which("ninja") and not any(a.startswith("-G") for a in cmake_args):
            args += ["-G", "Ninja"]  # faster than make at -j on many cores; a build that names a generator keeps it
        if launcher:
            args += [f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}", f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}"]
        if progress:
            progress("configure", None, None, "cmake")
        if _stream([*args, *cmake_args], tree, env, log, "configure", progress) != 0:
            return _failed(log, "configure", start)
        build = ["cmake", "--build", str(build_dir), "--config", "Release", "-j", str(jobs)]
        for target in targets:
            build += ["--target", target]
        rc = _stream(build, tree, env, log, "compile", progress)
    else:
        cmd = ["make", f"-j{jobs}", *targets, *(f"{k}={v}" for k, v in make_vars.items())]
        if launcher and "CC" not in make_vars and "CXX" not in make_vars:
            cmd += [f"CC={launcher} {env.get('CC', 'cc')}", f"CXX={launcher} {env.get('CXX', 'c++')}"]
        rc = _stream(cmd, tree, env, log, "compile", progress)
    if rc != 0:
        text = log.read_text(errors="replace")
        failure = classify_build_log(text, "compile")
        phase = "link" if failure.kind in ("duplicate_symbols", "link_error") else "compile"
        return CompileOutcome(False, phase, time.monotonic() - start, failure)
    return CompileOutcome(True, "link", time.monotonic() - start)


def _failed(log: Path, phase: str, start: float) -> CompileOutcome:
    import time

    return CompileOutcome(
        False, phase, time.monotonic() - start, classify_build_log(log.read_text(errors="replace"), phase)
    )


_LIB = re.compile(r"\.(so(\.\d+)*|dylib|dll)$")


def collect_artifacts(system: str, tree: Path, build_dir: Path, targets: list[str], out: Path) -> dict[str, int]:
    """Programs, shared libraries and Metal sources the build made, flat in `out` (name → bytes).

    Flat, so a program finds its libraries through the library path the engine sets; a Metal shader
    source is kept as the build left it (its header is not added: that is what the seed was about)."""
    out.mkdir(parents=True, exist_ok=True)
    roots = [build_dir] if system == "cmake" else [tree]
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if not path.is_file() or "CMakeFiles" in path.parts:
                continue
            name = path.name
            wanted = (
                name in targets
                or bool(_LIB.search(name))
                or name.endswith((".metal", ".metallib"))
                or (system == "cmake" and path.parent.name == "bin" and os.access(path, os.X_OK))
            )
            if wanted and name not in found:
                found[name] = path
    sizes = {}
    for name, path in found.items():
        shutil.copy2(path, out / name, follow_symlinks=True)
        sizes[name] = (out / name).stat().st_size
    return sizes


# what a KoboldCPP-style program reads beside itself at run time: its script, the libraries it dlopens, the
# data files it embeds (klite.embd …), Metal shader sources and libraries, adapter and vocabulary files
_RUNTIME_SUFFIXES = (".py", ".embd", ".json", ".metal", ".metallib")
_RUNTIME_DIRS = ("kcpp_adapters", "embd_res")


def collect_runtime_tree(tree: Path, targets: list[str], out: Path) -> dict[str, int]:
    """The top level of a tree that runs in place (KoboldCPP: koboldcpp.py beside its libraries and data
    files), copied into `out` with its layout; sources and object files stay behind (name → bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for path in sorted(tree.iterdir()):
        name = path.name
        if path.is_dir() and not path.is_symlink() and name in _RUNTIME_DIRS:
            shutil.copytree(path, out / name, symlinks=True)
            sizes[name] = sum(f.stat().st_size for f in (out / name).rglob("*") if f.is_file())
        elif path.is_file() and (name in targets or name.endswith(_RUNTIME_SUFFIXES) or _LIB.search(name)):
            shutil.copy2(path, out / name, follow_symlinks=True)
            sizes[name] = (out / name).stat().st_size
    return sizes

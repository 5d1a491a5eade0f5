"""`bench metal-check`: how ggml will find its Metal library at run time on a Mac, read on any machine.

Four ways a Metal build can get its shaders, as ggml's loader (ggml-metal.m, later ggml-metal-device.m)
tries them: a library embedded in the binary (GGML_METAL_EMBED_LIBRARY: the build's sed inlines the
headers, an asm .incbin exports ggml_metallib_start), a precompiled default.metallib, or the .metal source
compiled at load time. A source compiled at load time is handed to newLibraryWithSource as a string, with
no include path: its `#include "ggml-common.h"` is not found (llama.cpp#5977, LostRuins/koboldcpp#744:
the header sat beside the .metal) and the load ends in "failed to initialize Metal backend" —
shader_compile_failed. Loaders of 2025 and later inline quoted includes themselves, searching beside the
.metal; the build cache keeps a build's .metal files flat beside its library, without their headers
(bench.builds.compile.collect_artifacts), so only .metal-to-.metal includes resolve there.

A prediction reads the tree's loader and shader sources and the build's recipe (make variables or CMake
cache entries, evaluated for macOS by bench.builds.metal_recipe), or a folder of built artifacts
(embedded symbols, .metallib, .metal files and the headers beside them), and names the line behind each
step.
"""

from __future__ import annotations

import mmap
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from bench.builds.metal_recipe import Line, RecipeEval, eval_cmake, eval_makefile
from bench.errors import ConfigError
from bench.metrics import Status


class Mode(StrEnum):
    """Where the loader gets its shaders."""

    EMBEDDED = "embedded"
    METALLIB = "metallib"
    SOURCE = "source"  # compiled at load time, every include resolvable
    SOURCE_UNRESOLVED = "source_unresolved"  # compiled at load time, an include that will not be found
    MISSING = "missing"  # nowhere the loader looks
    NO_METAL = "no_metal"  # the recipe builds no Metal backend


# what a load of each mode ends in, where it does not load
PREDICTED_STATUS = {Mode.SOURCE_UNRESOLVED: Status.SHADER_COMPILE_FAILED, Mode.MISSING: Status.METAL_INIT_FAILED}
# statuses a load reaches before (or without) the Metal library: they neither confirm nor refute a prediction
UNJUDGED = {
    Status.SKIPPED_DOES_NOT_FIT,
    Status.FILE_NOT_FOUND,
    Status.INVALID_GGUF,
    Status.UNSUPPORTED_ARCHITECTURE,
    Status.BUILD_FAILED,
    Status.TIMEOUT,
}
METAL_FAILURES = {Status.SHADER_COMPILE_FAILED, Status.METAL_INIT_FAILED}


@dataclass(frozen=True)
class Evidence:
    """One step of a prediction: the file and line (or symbol) it rests on, and what it means here."""

    kind: str  # recipe | build_rule | loader | include | artifact | symbol
    file: str | None
    line: int | None
    text: str
    note: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file and self.line else (self.file or self.kind)
        text = self.text.strip()
        text = text if len(text) <= 160 else text[:159] + "…"
        return f"{where}: {text}" + (f" — {self.note}" if self.note else "")


@dataclass(frozen=True)
class Recipe:
    """How the build is configured: the build system and what the build hands it."""

    system: str  # make | cmake
    make_vars: dict[str, str] = field(default_factory=dict)
    cmake_args: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    def shown(self) -> str:
        if self.system == "make":
            args = " ".join(f"{k}={v}" for k, v in self.make_vars.items())
        else:
            args = " ".join(self.cmake_args)
        targets = f" (targets: {' '.join(self.targets)})" if self.targets else ""
        return f"{self.system} {args}".strip() + targets


@dataclass(frozen=True)
class Prediction:
    target: str  # what was named: a build, a cache key, a folder
    mode: Mode
    summary: str
    evidence: tuple[Evidence, ...]
    recipe: Recipe | None
    read: str  # what was read: "tree", "artifacts" or "tree+artifacts"
    source: str  # the tree or folder, as the user knows it (an sdist spec, a path)
    build: str | None = None  # the config's build, when the target is one
    key: str | None = None  # its cache key

    @property
    def predicted_status(self) -> Status | None:
        return PREDICTED_STATUS.get(self.mode)

    @property
    def loads(self) -> bool:
        return self.predicted_status is None

    def reason(self) -> str:
        """One line for a stored result: the summary and the deciding evidence."""
        deciding = next((e for e in reversed(self.evidence) if e.kind in ("include", "artifact", "symbol")), None)
        tail = f" ({deciding})" if deciding is not None and not self.loads else ""
        return f"predicted by bench metal-check: {self.summary}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "build": self.build,
            "key": self.key,
            "source": self.source,
            "read": self.read,
            "mode": self.mode.value,
            "loads": self.loads,
            "predicted_status": None if self.loads else str(self.predicted_status),
            "summary": self.summary,
            "recipe": asdict(self.recipe) if self.recipe else None,
            "evidence": [asdict(e) for e in self.evidence],
        }


def agreement(prediction: Prediction, status: str) -> str:
    """agree | disagree | unjudged: does a real load status bear the prediction out?"""
    if status in UNJUDGED:
        return "unjudged"
    if prediction.loads:
        return "disagree" if status in METAL_FAILURES else "agree"
    return "agree" if status == prediction.predicted_status else "disagree"


# -- the loader and the shader sources ----------------------------------------------------------------------

_SKIP_DIRS = {".git", "examples", "tests", "build", "build-perfgate", "node_modules", "vendor"}
_LOADER_FACTS = {
    "embed_branch": re.compile(r"^\s*#if\s+GGML_METAL_EMBED_LIBRARY\b"),
    "metallib_lookup": re.compile(r'ofType:@"metallib"'),
    "env_resources": re.compile(r"GGML_METAL_PATH_RESOURCES"),
    "source_lookup": re.compile(r'pathForResource:\S*\s+ofType:@"metal"'),
    "cwd_fallback": re.compile(r"falling back to (trying )?cwd"),
    "compile_from_source": re.compile(r"newLibraryWithSource:"),
    # loaders of 2025-: quoted includes inlined by the loader itself, searched beside the source
    "resolves_includes": re.compile(r"could not resolve include|parse_quoted_include"),
    "kernels_dir": re.compile(r'@"kernels/%s'),
}


@dataclass(frozen=True)
class Loader:
    path: Path
    rel: str
    facts: dict[str, Line]

    def fact(self, name: str) -> Line | None:
        return self.facts.get(name)

    def evidence(self, name: str, note: str) -> Evidence | None:
        line = self.facts.get(name)
        return None if line is None else Evidence("loader", line.file, line.line, line.text, note)

    @property
    def source_dir(self) -> Path:
        return self.path.parent / "kernels" if "kernels_dir" in self.facts else self.path.parent

    def shader_sources(self) -> list[Path]:
        return sorted(p for p in self.source_dir.glob("*.metal") if "-embed" not in p.name)


def _walk(root: Path, max_depth: int) -> Iterator[Path]:
    for dirpath, dirs, files in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".") and depth < max_depth)
        for name in sorted(files):
            yield Path(dirpath, name)


def read_loader(tree: Path) -> Loader | None:
    """ggml's Metal loader in the tree: the shallowest ggml-metal*.m that creates a Metal library."""
    found = []
    for path in _walk(tree, 4):
        if path.name.startswith("ggml-metal") and path.suffix == ".m":
            text = path.read_text(errors="replace")
            if "newLibraryWith" in text:
                found.append((len(path.relative_to(tree).parts), str(path), path, text))
    if not found:
        return None
    _, _, path, text = min(found)
    rel = str(path.relative_to(tree))
    facts: dict[str, Line] = {}
    for number, line in enumerate(text.splitlines(), 1):
        for name, pattern in _LOADER_FACTS.items():
            if name not in facts and pattern.search(line):
                facts[name] = Line(rel, number, line.strip())
    return Loader(path, rel, facts)


# -- includes -------------------------------------------------------------------------------------------

_QUOTED = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
_EMBED_COND = re.compile(r"^\s*#\s*(if|ifdef|ifndef|elif)\b(.*)$")


@dataclass(frozen=True)
class Include:
    file: Path
    rel: str
    line: int
    name: str
    text: str

    def evidence(self, note: str) -> Evidence:
        return Evidence("include", self.rel, self.line, self.text, note)


def quoted_includes(path: Path, root: Path, *, embedded: bool) -> list[Include]:
    """The `#include "…"` lines a compile of `path` sees, with GGML_METAL_EMBED_LIBRARY defined or not
    (sources of 2024- keep the include for the non-embedded build only); other conditionals count as taken."""
    out = []
    stack: list[tuple[bool | None, bool]] = []  # (known branch value, taken so far)

    def live() -> bool:
        return all(v is not False for v, _ in stack)

    for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        stripped = text.strip()
        if m := _EMBED_COND.match(stripped):
            kind, cond = m[1], m[2]
            known: bool | None = None
            if "GGML_METAL_EMBED_LIBRARY" in cond and not re.search(r"&&|\|\|", cond):
                negated = kind == "ifndef" or "!" in cond
                known = embedded != negated
            if kind == "elif":
                if stack:
                    prev_taken = stack[-1][1]
                    value = False if prev_taken else known
                    stack[-1] = (value, prev_taken or value is True)
                continue
            stack.append((known, known is True))
            continue
        if re.match(r"^#\s*else\b", stripped):
            if stack:
                value, taken = stack[-1]
                stack[-1] = (None if value is None else not taken, True)
            continue
        if re.match(r"^#\s*endif\b", stripped):
            if stack:
                stack.pop()
            continue
        if live() and (m := _QUOTED.match(text)):
            out.append(Include(path, str(path.relative_to(root)), number, m[1], stripped))
    return out


def _header_near(include: Include, root: Path) -> Path | None:
    """Where a compile with the tree's own include path would find a header: beside the including file or
    up to two folders above it (ggml/src/ggml-metal/kernels → ggml/src)."""
    here = include.file.parent
    for folder in (here, here.parent, here.parent.parent):
        candidate = folder / include.name
        if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
            return candidate
    return None


def reachable_includes(sources: list[Path], root: Path, *, embedded: bool) -> list[Include]:
    """Every quoted include of the sources and of the headers they include, in the order first met."""
    seen: set[Path] = set()
    out: list[Include] = []
    todo = list(sources)
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for inc in quoted_includes(path, root, embedded=embedded):
            out.append(inc)
            header = _header_near(inc, root)
            if header is not None and header not in seen:
                todo.append(header)
    return out


# -- the recipe ---------------------------------------------------------------------------------------------

_EMBED_NAMES = re.compile(r'#include\s*\\?"([^"\\]+)\\?"|__embed_([\w.\-]+?)__')


@dataclass
class RecipeFacts:
    metal: bool
    embed: bool
    embed_rule: tuple[Line, set[str]] | None  # the rule that writes the embedded source: the names it inlines
    metallib: Evidence | None  # a build step that compiles default.metallib, when the build runs it
    evidence: list[Evidence]


def _switch_evidence(ev: RecipeEval, name: str, note_on: str, note_off: str) -> Evidence:
    found = ev.variables.get(name)
    on = ev.truthy(name) if ev.options else bool(found and found.value.strip())
    note = note_on if on else note_off
    if found is not None and found.given is not None:
        return Evidence("recipe", None, None, found.given, note)
    if found is not None and found.origin is not None:
        return Evidence("recipe", found.origin.file, found.origin.line, found.origin.text, note)
    return Evidence("recipe", None, None, f"{name} unset", note)


def _make_facts(tree: Path, recipe: Recipe) -> RecipeFacts:
    makefile = tree / "Makefile"
    if not makefile.is_file():
        raise ConfigError(f"{tree}: no Makefile for a make build")
    ev = eval_makefile(makefile, "Makefile", recipe.make_vars)
    evidence: list[Evidence] = []
    for name, value in recipe.make_vars.items():
        if "METAL" in name and name not in ev.read:
            evidence.append(Evidence("recipe", None, None, f"{name}={value}", "no line of this Makefile reads it"))
    metal_line = ev.first_active(re.compile(r"-DGGML_USE_METAL\b"))
    if metal_line is None:
        text = _first_text(makefile, re.compile(r"-DGGML_USE_METAL\b"))
        if text is not None:
            evidence.append(_inactive(ev, text, "Metal"))
        else:
            evidence.append(
                Evidence("recipe", "Makefile", None, "no -DGGML_USE_METAL", "this Makefile builds no Metal")
            )
        return RecipeFacts(False, False, None, None, evidence)
    evidence += _block_switch(ev, metal_line, "Metal")
    embed_line = ev.first_active(re.compile(r"-DGGML_METAL_EMBED_LIBRARY\b"))
    if embed_line is None:
        text = _first_text(makefile, re.compile(r"-DGGML_METAL_EMBED_LIBRARY\b"))
        evidence.append(
            _inactive(ev, text, "the embedded library")
            if text is not None
            else Evidence("recipe", "Makefile", None, "no -DGGML_METAL_EMBED_LIBRARY", "this Makefile cannot embed")
        )
    else:
        evidence += _block_switch(ev, embed_line, "the embedded library")
    rule = next(
        ((head, text) for head, text, active in ev.blocks if re.match(r"ggml-metal-embed\.o\s*:", head.text.strip())),
        None,
    )
    embed_rule = None
    if rule is not None:
        names = {a or b for a, b in _EMBED_NAMES.findall(rule[1])}
        embed_rule = (rule[0], names)
    return RecipeFacts(True, embed_line is not None, embed_rule, None, evidence)


def _first_text(path: Path, pattern: re.Pattern[str]) -> Line | None:
    for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if pattern.search(text):
            return Line(path.name, number, text)
    return None


def _inactive(ev: RecipeEval, line: Line, what: str) -> Evidence:
    switch = ev.enclosing(line)
    if switch is None:
        return Evidence("recipe", line.file, line.line, line.text, f"{what}: never reached on macOS")
    var = re.match(r"\s*(?:ifdef|ifndef)\s+(\S+)", switch.text)
    unset = f" ({var[1]} is not set)" if var else ""
    return Evidence("recipe", switch.file, switch.line, switch.text, f"{what} is off for this recipe{unset}")


def _block_switch(ev: RecipeEval, line: Line, what: str) -> list[Evidence]:
    out = [Evidence("recipe", line.file, line.line, line.text, f"{what} is on")]
    switch = ev.enclosing(line)
    if switch is not None and (var := re.match(r"\s*(?:ifdef|ifndef)\s+(\S+)", switch.text)):
        held = f"{switch.file}:{switch.line}: {switch.text.strip()} holds"
        out.insert(0, _switch_evidence(ev, var[1], held, "unset"))
    return out


def _cmake_facts(tree: Path, recipe: Recipe) -> RecipeFacts:
    if not (tree / "CMakeLists.txt").is_file():
        raise ConfigError(f"{tree}: no CMakeLists.txt for a cmake build")
    ev = eval_cmake(tree, recipe.cmake_args)
    evidence: list[Evidence] = []
    for arg in recipe.cmake_args:
        m = re.match(r"^-D([A-Za-z_][\w.\-]*)", arg)
        if m and "METAL" in m[1] and m[1] not in ev.options and m[1] not in ev.read:
            evidence.append(Evidence("recipe", None, None, arg, "not an option of this tree: it changes nothing"))
    metal_var = next((v for v in ("GGML_METAL", "LLAMA_METAL") if v in ev.options), None)
    if metal_var is None:
        evidence.append(Evidence("recipe", "CMakeLists.txt", None, "no GGML_METAL/LLAMA_METAL option", "no Metal"))
        return RecipeFacts(False, False, None, None, evidence)
    prefix = metal_var.split("_")[0]
    embed_var = f"{prefix}_METAL_EMBED_LIBRARY"
    evidence.append(_cmake_option(ev, metal_var))
    if not ev.truthy(metal_var):
        return RecipeFacts(False, False, None, None, evidence)
    embed = embed_var in ev.options and ev.truthy(embed_var)
    if embed_var in ev.options:
        evidence.append(_cmake_option(ev, embed_var))
    rule = next((b for b in ev.blocks if b[2] and "ggml_metallib" in b[1] and "add_custom_command" in b[0].text), None)
    embed_rule = None
    if rule is not None:
        embed_rule = (rule[0], {a or b for a, b in _EMBED_NAMES.findall(rule[1])})
    metallib = None
    if not embed and (found := _cmake_metallib(ev, recipe)) is not None:
        step, built = found
        if built:
            metallib = step
        else:
            evidence.append(step)
    return RecipeFacts(True, embed, embed_rule, metallib, evidence)


def _cmake_option(ev: RecipeEval, name: str) -> Evidence:
    found = ev.variables[name]
    value = "ON" if ev.truthy(name) else "OFF"
    declared = ev.options[name]
    if found.given is not None:
        return Evidence(
            "recipe", None, None, found.given, f"{name} {value} (declared at {declared.file}:{declared.line})"
        )
    origin = found.origin or declared
    return Evidence("recipe", origin.file, origin.line, origin.text, f"{name} {value} on macOS by default")


def _cmake_metallib(ev: RecipeEval, recipe: Recipe) -> tuple[Evidence, bool] | None:
    """The step that compiles default.metallib, and whether the build's targets make it (a custom target of
    ALL is built by a plain build, not by `--target llama`)."""
    command = next((b for b in ev.blocks if b[2] and "default.metallib" in b[1] and "xcrun" in b[1]), None)
    if command is None:
        return None
    target = next(
        (b for b in ev.blocks if b[2] and "add_custom_target" in b[0].text and "metallib" in b[1].lower()), None
    )
    if target is None:
        head = command[0]
        return Evidence("build_rule", head.file, head.line, head.text, "compiles default.metallib"), True
    name = target[1].split()[0]
    built = not recipe.targets or name in recipe.targets
    note = (
        f"default.metallib is built (target {name})"
        if built
        else f"default.metallib is not built: target {name} is not among the build's targets "
        f"({' '.join(recipe.targets)})"
    )
    return Evidence("build_rule", target[0].file, target[0].line, target[0].text, note), built


def _recipe_facts(tree: Path, recipe: Recipe) -> RecipeFacts:
    return _make_facts(tree, recipe) if recipe.system == "make" else _cmake_facts(tree, recipe)


# -- predictions --------------------------------------------------------------------------------------------

_CACHE_LAYOUT = "the build cache keeps .metal files flat beside the library, without headers (collect_artifacts)"


def check_tree(tree: Path, recipe: Recipe, *, target: str, source: str) -> Prediction:
    """Predict from a source tree and the recipe that builds it."""
    loader = read_loader(tree)
    if loader is None:
        raise ConfigError(f"{source}: no ggml Metal loader (ggml-metal*.m) in this tree")
    facts = _recipe_facts(tree, recipe)
    evidence = list(facts.evidence)

    def done(mode: Mode, summary: str) -> Prediction:
        return Prediction(target, mode, summary, tuple(evidence), recipe, "tree", source)

    if not facts.metal:
        return done(Mode.NO_METAL, f"{recipe.shown()} builds no Metal backend")
    sources = loader.shader_sources()
    if facts.embed:
        if loader.fact("embed_branch") is None:
            evidence.append(
                Evidence("loader", loader.rel, None, "no #if GGML_METAL_EMBED_LIBRARY", "the define changes nothing")
            )
        else:
            evidence.append(loader.evidence("embed_branch", "the loader takes the embedded source"))  # type: ignore[arg-type]
            return _embedded(tree, facts, sources, evidence, done)
    if facts.metallib is not None:
        evidence.append(facts.metallib)
        lookup = loader.evidence("metallib_lookup", "the loader loads default.metallib when found beside the library")
        if lookup is not None:
            evidence.append(lookup)
        return done(Mode.METALLIB, "the build compiles the shaders into default.metallib")
    return _runtime_source(tree, loader, sources, evidence, done)


def _embedded(tree: Path, facts: RecipeFacts, sources: list[Path], evidence: list[Evidence], done: Any) -> Prediction:
    includes = reachable_includes(sources, tree, embedded=True)
    if facts.embed_rule is None:
        evidence.append(Evidence("build_rule", None, None, "no rule writes the embedded source", ""))
        handled: set[str] = set()
    else:
        head, handled = facts.embed_rule
        inlined = ", ".join(sorted(handled)) or "nothing"
        evidence.append(Evidence("build_rule", head.file, head.line, head.text, f"inlines {inlined}"))
    unresolved = [i for i in includes if Path(i.name).name not in handled]
    if unresolved:
        first = unresolved[0]
        evidence.append(first.evidence("kept in the embedded source: compiled at load time with no include path"))
        return done(
            Mode.SOURCE_UNRESOLVED,
            f'the embedded library still includes "{first.name}" ({first.rel}:{first.line})',
        )
    names = sorted({i.name for i in includes})
    note = f"inlines {', '.join(names)}" if names else "no quoted include to inline"
    return done(Mode.EMBEDDED, f"the shaders are embedded in the library ({note})")


def _runtime_source(tree: Path, loader: Loader, sources: list[Path], evidence: list[Evidence], done: Any) -> Prediction:
    for name, note in (
        ("env_resources", "read from $GGML_METAL_PATH_RESOURCES when set"),
        ("source_lookup", "else from beside the library (its bundle)"),
        ("cwd_fallback", "else from the working directory"),
    ):
        if (e := loader.evidence(name, note)) is not None:
            evidence.append(e)
    if not sources:
        return done(Mode.MISSING, f"no .metal source beside {loader.rel}")
    if loader.fact("kernels_dir") is not None:
        evidence.append(Evidence("artifact", None, None, _CACHE_LAYOUT, "the loader wants kernels/<name>.metal"))
        return done(
            Mode.MISSING,
            "the loader looks for kernels/<name>.metal beside the library; the build cache keeps them flat",
        )
    resolves = loader.fact("resolves_includes") is not None
    kept = {p.name for p in sources}
    unresolved = []
    for src in sources:
        for inc in quoted_includes(src, tree, embedded=False):
            if not (resolves and "/" not in inc.name and inc.name in kept):
                unresolved.append(inc)
    if resolves:
        evidence.append(loader.evidence("resolves_includes", "the loader inlines quoted includes found beside it"))  # type: ignore[arg-type]
    else:
        evidence.append(
            loader.evidence(  # type: ignore[arg-type]
                "compile_from_source", "the source is compiled as a string: no include path (llama.cpp#5977)"
            )
        )
    if unresolved:
        first = unresolved[0]
        evidence.append(Evidence("artifact", None, None, _CACHE_LAYOUT, ""))
        evidence.append(first.evidence("not found at load time"))
        return done(
            Mode.SOURCE_UNRESOLVED,
            f'compiled at load time, {first.rel}:{first.line} includes "{first.name}", which the Metal compiler '
            "will not find",
        )
    return done(Mode.SOURCE, f"compiled at load time from {', '.join(p.name for p in sources[:3])}: no quoted include")


# -- artifacts ------------------------------------------------------------------------------------------

_BINARY_NAME = re.compile(r"\.(so(\.\d+)*|dylib|dll)$")
# the start symbol of the embedded source, or the Mach-O section it is in (load commands keep section names
# where a stripped library has lost its symbol table)
_EMBED_SYMBOL = re.compile(rb"_?ggml_metallib_(?:[a-z0-9_]+_)?start\b|__ggml_metallib\b")
_METAL_USE = re.compile(rb"ggml_metal_init|ggml_backend_metal|MTLCreateSystemDefaultDevice")
_RESOLVES = re.compile(rb"could not resolve include")
_KERNELS = re.compile(rb"kernels/%s")
_SCAN_MAX_BYTES = 2 << 30


def _scan(path: Path) -> dict[str, tuple[int, bytes] | None]:
    found: dict[str, tuple[int, bytes] | None] = {"embed": None, "metal": None, "resolves": None, "kernels": None}
    try:
        size = path.stat().st_size
        if size == 0 or size > _SCAN_MAX_BYTES:
            return found
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for key, pattern in (
                ("embed", _EMBED_SYMBOL),
                ("metal", _METAL_USE),
                ("resolves", _RESOLVES),
                ("kernels", _KERNELS),
            ):
                m = pattern.search(data)  # type: ignore[call-overload]
                found[key] = (m.start(), m.group()) if m else None
    except (OSError, ValueError):
        pass
    return found


def _is_binary(path: Path) -> bool:
    if _BINARY_NAME.search(path.name):
        return True
    if path.suffix or not os.access(path, os.X_OK):
        return False
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError:
        return False
    return magic in (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe", b"\xce\xfa\xed\xfe")


def check_artifacts(folder: Path, *, target: str, source: str, built_only: bool = False) -> Prediction | None:
    """Predict from built files (a BuildRecord's bin folder, a release folder); None when they hold no Metal
    (with `built_only`: no library or program that uses Metal — a source tree's own .metal files are no build)."""
    files = [p for p in _walk(folder, 3) if p.is_file() and not p.is_symlink()]
    rel = {p: str(p.relative_to(folder)) for p in files}
    binaries = {p: _scan(p) for p in files if _is_binary(p)}
    metal_bins = [p for p, s in binaries.items() if s["metal"] or s["embed"]]
    metallibs = [p for p in files if p.suffix == ".metallib"]
    sources = [p for p in files if p.suffix == ".metal" and "-embed" not in p.name]
    if not (metal_bins or metallibs or sources) or (built_only and not metal_bins):
        return None
    evidence: list[Evidence] = []

    def done(mode: Mode, summary: str) -> Prediction:
        return Prediction(target, mode, summary, tuple(evidence), None, "artifacts", source)

    for p in metal_bins:
        hit = binaries[p]["embed"]
        if hit is not None:
            symbol = hit[1].decode(errors="replace").lstrip("_")
            evidence.append(Evidence("symbol", rel[p], None, symbol, f"at byte {hit[0]}: the shaders are embedded"))
            return done(Mode.EMBEDDED, f"{rel[p]} embeds the Metal library ({symbol})")
    default = next((p for p in metallibs if p.name == "default.metallib"), None)
    if default is not None:
        evidence.append(Evidence("artifact", rel[default], None, default.name, "a precompiled Metal library"))
        return done(Mode.METALLIB, f"{rel[default]} ships the precompiled shaders")
    resolves = any(binaries[p]["resolves"] for p in metal_bins)
    wants_kernels = any(binaries[p]["kernels"] for p in metal_bins)
    for p in metal_bins:
        evidence.append(Evidence("artifact", rel[p], None, p.name, "uses Metal; no embedded library, no .metallib"))
    if wants_kernels:
        homes = {p.parent / "kernels" for p in metal_bins}
        found = [s for s in sources if s.parent in homes]
        if not found:
            evidence.append(Evidence("artifact", None, None, "no kernels/*.metal beside the library", ""))
            return done(Mode.MISSING, "the loader looks for kernels/<name>.metal beside the library: none here")
        sources = found
    if not sources:
        return done(Mode.MISSING, "no .metal source beside the library")
    unresolved = []
    for src in sources:
        for inc in quoted_includes(src, folder, embedded=False):
            here = src.parent
            near = [here / inc.name, here.parent / inc.name, here.parent.parent / inc.name]
            if not (resolves and any(c.is_file() for c in near)):
                unresolved.append(inc)
    note = "the loader inlines includes found beside the source" if resolves else "compiled with no include path"
    evidence.append(Evidence("artifact", rel[sources[0]], None, sources[0].name, f"compiled at load time; {note}"))
    if unresolved:
        first = unresolved[0]
        beside = (first.file.parent / first.name).is_file()
        evidence.append(first.evidence(("beside it, but " if beside else "not beside it: ") + "not found at load time"))
        return done(
            Mode.SOURCE_UNRESOLVED,
            f'{first.rel}:{first.line} includes "{first.name}", which the Metal compiler will not find',
        )
    return done(Mode.SOURCE, f"compiled at load time from {len(sources)} .metal file(s), every include resolvable")


# -- what to check: a build of the config, a cached build, a folder --------------------------------------


@dataclass(frozen=True)
class RecipeOverride:
    """Recipe entries given on the command line: they complete (or replace) the build's own."""

    system: str | None = None
    make_vars: dict[str, str] = field(default_factory=dict)
    cmake_args: list[str] = field(default_factory=list)

    def apply(self, recipe: Recipe | None, tree: Path | None) -> Recipe:
        system = self.system or (recipe.system if recipe else _guess_system(tree))
        base = recipe or Recipe(system)
        return Recipe(
            system,
            {**base.make_vars, **self.make_vars},
            [*base.cmake_args, *self.cmake_args],
            base.targets,
        )


def _guess_system(tree: Path | None) -> str:
    """A folder without a recipe: make where only the Makefile builds Metal, else CMake (perfgate's default)."""
    if tree is None:
        return "cmake"
    cmake = tree / "CMakeLists.txt"
    mentions = cmake.is_file() and "METAL" in cmake.read_text(errors="replace")
    return "make" if (tree / "Makefile").is_file() and not mentions else "cmake"


def _combine(from_tree: Prediction | None, from_artifacts: Prediction | None) -> Prediction:
    """Built artifacts are what runs: they decide; the recipe's reading stays as evidence."""
    if from_artifacts is None:
        assert from_tree is not None
        return from_tree
    if from_tree is None:
        return from_artifacts
    recipe_note = Evidence("recipe", None, None, from_tree.summary, f"the recipe alone predicts {from_tree.mode.value}")
    return Prediction(
        from_artifacts.target,
        from_artifacts.mode,
        from_artifacts.summary,
        (*from_artifacts.evidence, recipe_note),
        from_tree.recipe,
        "tree+artifacts",
        from_tree.source,
    )


def check_folder(path: Path, override: RecipeOverride, *, target: str | None = None) -> Prediction:
    """A source tree (read with the given recipe) or a release folder of artifacts."""
    if not path.is_dir():
        raise ConfigError(f"{path}: not a folder")
    label = target or str(path)
    has_tree = read_loader(path) is not None and ((path / "Makefile").is_file() or (path / "CMakeLists.txt").is_file())
    artifacts = check_artifacts(path, target=label, source=str(path), built_only=has_tree)
    tree = check_tree(path, override.apply(None, path), target=label, source=str(path)) if has_tree else None
    if tree is None and artifacts is None:
        raise ConfigError(f"{path}: no ggml Metal loader with a Makefile/CMakeLists.txt, and no Metal artifacts")
    return _combine(tree, artifacts)


def check_build(config: Any, name: str, override: RecipeOverride) -> Prediction:
    """A build of the config: its source exported (git, sdist) or read in place (dir), its recipe, and its
    cached artifacts when the cache has them."""
    from bench.builds.cache import cache_root, lookup, plan_build
    from bench.builds.source import export

    index, build = next((i, b) for i, b in enumerate(config.builds) if b.name == name)
    if build.source is None:
        prebuilt = build.lib or build.path
        if prebuilt is None:
            raise ConfigError(
                f"{config.where('builds', index, 'name')}: {name} is an installed interpreter (python): "
                "point metal-check at its library folder"
            )
        folder = config.resolve(prebuilt)
        folder = folder if folder.is_dir() else folder.parent
        field_name = "lib" if build.lib is not None else "path"
        if not folder.is_dir():
            raise ConfigError(f"{config.where('builds', index, field_name)}: no folder at {folder}")
        return _with_build(check_folder(folder, override, target=name), name, None)
    if build.source.pip is not None:
        raise ConfigError(
            f"{config.where('builds', index, 'source', 'pip')}: pip builds a pip source in a temporary tree "
            "of its own: metal-check reads git, dir and sdist sources"
        )
    cache = cache_root(config)
    plan = plan_build(config, build, cache)
    recipe = override.apply(Recipe(build.system, dict(plan.make_vars), list(plan.cmake_args), list(plan.targets)), None)
    shown = f"{plan.resolved.kind} {plan.resolved.location}" + (
        f" @ {plan.resolved.commit[:12]}" if plan.resolved.commit else ""
    )
    record = lookup(cache, plan.key)
    artifacts = None
    if record is not None and record.ok and record.bin_dir.is_dir():
        artifacts = check_artifacts(record.bin_dir, target=name, source=str(record.bin_dir))
    with tempfile.TemporaryDirectory(prefix="perfgate-metal-check-") as tmp:
        in_place = plan.resolved.kind == "dir"
        tree = Path(plan.resolved.location) if in_place else export(plan.resolved, Path(tmp), cache)
        from_tree = check_tree(tree, recipe, target=name, source=shown)
    return _with_build(_combine(from_tree, artifacts), name, plan.key)


def check_cached(config: Any, key: str, override: RecipeOverride) -> Prediction:
    """A cached build by key: its record's source re-exported, its recipe and its artifacts."""
    from bench.builds.cache import cache_root, lookup
    from bench.builds.source import ResolvedSource, export

    cache = cache_root(config)
    record = lookup(cache, key)
    if record is None:
        raise ConfigError(f"no cached build {key} in {cache}")
    if record.system == "pip":
        raise ConfigError(f"cached build {key} ({record.name}) is a pip build: no tree of it is kept")
    src = dict(record.source)
    src["untracked"] = tuple(src.get("untracked") or ())
    resolved = ResolvedSource(**src)
    recipe = override.apply(
        Recipe(record.system, dict(record.make_vars), list(record.cmake_args), list(record.targets)), None
    )
    artifacts = check_artifacts(record.bin_dir, target=key, source=str(record.bin_dir)) if record.ok else None
    with tempfile.TemporaryDirectory(prefix="perfgate-metal-check-") as tmp:
        tree = Path(resolved.location) if resolved.kind == "dir" else export(resolved, Path(tmp), cache)
        from_tree = check_tree(tree, recipe, target=key, source=f"{resolved.kind} {resolved.location}")
    return _with_build(_combine(from_tree, artifacts), record.name, key)


def _with_build(p: Prediction, build: str | None, key: str | None) -> Prediction:
    return Prediction(p.target, p.mode, p.summary, p.evidence, p.recipe, p.read, p.source, build, key)


def check_target(spec: str, config: Any | None, override: RecipeOverride) -> Prediction:
    """NAME (a build of the config), KEY (a cached build) or PATH (a tree or a folder of artifacts)."""
    if config is not None and any(b.name == spec for b in config.builds):
        return check_build(config, spec, override)
    if re.fullmatch(r"[0-9a-f]{16}", spec):
        from bench.builds.cache import cache_root, lookup

        if lookup(cache_root(config), spec) is not None:
            return check_cached(config, spec, override)
    path = Path(spec).expanduser()
    if path.is_dir():
        return check_folder(path, override)
    known = f" (builds: {', '.join(b.name for b in config.builds)})" if config is not None else ""
    raise ConfigError(f"{spec}: not a build of the config{known}, a cached build key or a folder")


# -- text, recording, verifying ---------------------------------------------------------------------------


def render_text(p: Prediction) -> str:
    """A prediction for a person: the verdict line, what was read, then the evidence in order."""
    verdict = "loads" if p.loads else f"predicted {p.predicted_status}"
    name = p.build or p.target
    lines = [f"{name}: {p.mode.value} — {verdict}: {p.summary}"]
    read = f"  read: {p.read} of {p.source}"
    if p.recipe is not None:
        read += f"; recipe {p.recipe.shown()}"
    if p.key:
        read += f"; cache key {p.key}"
    lines.append(read)
    lines += [f"  - {e}" for e in p.evidence]
    return "\n".join(lines)


def record(store: Any, config: Any, predictions: list[Prediction]) -> int:
    """Store the predictions of builds of the config, each model of the config getting its build's predicted
    status (bench.store.predictions: a run of the prediction machine). Returns the run id."""
    from bench.builds.identity import BuildIdentity
    from bench.store.predictions import PredictedBuild, record_predictions

    unnamed = [p.target for p in predictions if p.build is None or not any(b.name == p.build for b in config.builds)]
    if unnamed:
        raise ConfigError(f"--record: {unnamed[0]} is not a build of {config.source}: a result belongs to a build")
    engines = {b.name: b.engine for b in config.builds}
    builds = []
    for p in predictions:
        assert p.build is not None
        details = {"engine": engines[p.build], "metal_check": p.as_dict(), "build": {"key": p.key}, "predicted": True}
        recipe = json_key(p)
        ident = BuildIdentity(p.build, p.loads, details=details, recorded_sha=f"metal-check-{recipe}")
        status = str(p.predicted_status) if p.predicted_status is not None else str(Status.OK)
        builds.append(PredictedBuild(ident, status, p.reason(), render_text(p)))
    models = [(m.name, str(config.model_path(m))) for m in config.models]
    settings = {
        "suite": config.suite.model_dump(mode="json"),
        "config": str(config.source),
        "builds": [p.build for p in predictions],
        "models": [m.name for m in config.models],
        "engines": {p.build: engines[p.build] for p in predictions if p.build},
        "by": "bench metal-check",
    }
    with store.session() as session:
        return record_predictions(
            session, builds, models, settings, n_prompt=config.suite.n_prompt, n_gen=config.suite.n_gen
        )


def json_key(p: Prediction) -> str:
    """Who the predicted build is: its cache key, else a digest of its source and recipe."""
    import hashlib
    import json

    if p.key:
        return p.key
    text = json.dumps({"source": p.source, "recipe": asdict(p.recipe) if p.recipe else None}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Verification:
    build: str
    model: str
    predicted: str  # "loads" or the predicted status
    measured: str
    run_id: int
    agreement: str  # agree | disagree | unjudged


def verify(
    store: Any, predictions: list[Prediction], machine_fingerprint: str, *, on_metal: bool
) -> list[Verification]:
    """Each prediction against the measured results standing for its build on this machine; a machine
    without Metal judges none (its loads never asked for the Metal library)."""
    from bench.errors import StoreError
    from bench.store.predictions import measured_statuses

    out = []
    with store.session() as session:
        for p in predictions:
            if p.build is None:
                raise ConfigError(f"--verify: {p.target} is not a build of the config: nothing measured it")
            measured = measured_statuses(session, p.build, machine_fingerprint)
            if not measured:
                raise StoreError(f"--verify: no measured results of {p.build} on this machine ({machine_fingerprint})")
            shown = "loads" if p.loads else str(p.predicted_status)
            for model, found in sorted(measured.items()):
                judged = agreement(p, found.status) if on_metal else "unjudged"
                out.append(Verification(p.build, model, shown, found.status, found.run_id, judged))
    return out

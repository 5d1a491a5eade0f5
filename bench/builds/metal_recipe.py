"""What a build recipe turns on for a Mac, read on any machine: a small evaluator of the Makefile or CMake
conditionals that decide Metal and its embedded library.

Neither evaluator is make or CMake. Each follows the few constructs llama.cpp-family build files use to
set these switches (make: assignments, ifdef/ifndef/ifeq/ifneq with command-line variables overriding the
file; CMake: option, set [CACHE … FORCE], if/elseif/else, -D cache entries, add_subdirectory towards ggml)
with the target taken as macOS on arm64, and records the line of every decision so a prediction can show
it. What it cannot evaluate ($(shell …), a generator expression) reads as empty, as an unset variable does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# what `uname` says on the Mac the recipe targets
MAKE_TARGET_VARS = {"UNAME_S": "Darwin", "UNAME_P": "arm", "UNAME_M": "arm64"}
CMAKE_TARGET_VARS = {
    "APPLE": "1",
    "UNIX": "1",
    "CMAKE_SYSTEM_NAME": "Darwin",
    "CMAKE_HOST_SYSTEM_NAME": "Darwin",
    "CMAKE_SYSTEM_PROCESSOR": "arm64",
    "CMAKE_C_COMPILER_ID": "AppleClang",
    "CMAKE_CXX_COMPILER_ID": "AppleClang",
    "CMAKE_GENERATOR": "Unix Makefiles",
}
_TRUE = {"1", "ON", "YES", "TRUE", "Y"}
_FALSE = {"0", "OFF", "NO", "FALSE", "N", "IGNORE", "NOTFOUND", ""}


@dataclass(frozen=True)
class Line:
    """A line of a build file: where it is and what it says."""

    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text.strip()}"


@dataclass
class Assignment:
    """Where a variable got the value that decided something: a build file line or the build's recipe."""

    value: str
    origin: Line | None  # None: given on the command line (make_vars, cmake_args)
    given: str | None = None  # the recipe entry that set it ("LLAMA_METAL=1", "-DGGML_METAL=ON")


@dataclass
class RecipeEval:
    """The active lines of a build file set (make: every non-recipe line; CMake: commands) and the variables."""

    variables: dict[str, Assignment] = field(default_factory=dict)
    active: list[Line] = field(default_factory=list)
    # each conditional line with the value its condition had (for the evidence of a block's switch)
    conditions: list[tuple[Line, bool]] = field(default_factory=list)
    # rule or custom command blocks: (first line, whole text, active)
    blocks: list[tuple[Line, str, bool]] = field(default_factory=list)
    options: dict[str, Line] = field(default_factory=dict)  # CMake option() declarations
    read: set[str] = field(default_factory=set)  # every variable name a condition or expansion mentions
    files: list[str] = field(default_factory=list)
    # (file, line) → the innermost conditional around it (make: every line, taken or not)
    within: dict[tuple[str, int], Line] = field(default_factory=dict)

    def value(self, name: str) -> str:
        found = self.variables.get(name)
        return found.value if found else ""

    def truthy(self, name: str) -> bool:
        return _cmake_truthy(self.value(name))

    def first_active(self, pattern: re.Pattern[str]) -> Line | None:
        return next((ln for ln in self.active if pattern.search(ln.text)), None)

    def enclosing(self, target: Line) -> Line | None:
        """The innermost conditional around `target`: the switch of its block."""
        return self.within.get((target.file, target.line))


# -- make ------------------------------------------------------------------------------------------------

_MAKE_ASSIGN = re.compile(r"^(?:override\s+|export\s+)?([A-Za-z_][\w.\-]*)\s*(::=|:=|\?=|\+=|!=|=)\s*(.*)$")
_MAKE_COND = re.compile(r"^(ifeq|ifneq|ifdef|ifndef)\b\s*(.*)$")
_RULE = re.compile(r"^([^\s:=#][^:=#]*?):(?!=)\s*(.*)$")


def _logical_lines(path: Path) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, each with the number of its first physical line."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not pending:
            start = number
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        out.append((start, " ".join(pending)))
        pending = []
    if pending:
        out.append((start, " ".join(pending)))
    return out


class _MakeExpander:
    def __init__(self, ev: RecipeEval, raw: dict[str, str]) -> None:
        self.ev, self.raw = ev, raw

    def expand(self, text: str, depth: int = 0) -> str:
        if depth > 20 or "$" not in text:
            return text
        out, i = [], 0
        while i < len(text):
            c = text[i]
            if c != "$" or i + 1 >= len(text):
                out.append(c)
                i += 1
                continue
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt in "({":
                close = ")" if nxt == "(" else "}"
                end, level = i + 2, 1
                while end < len(text) and level:
                    level += {nxt: 1, close: -1}.get(text[end], 0)
                    end += 1
                out.append(self._reference(text[i + 2 : end - 1], depth))
                i = end
            else:  # $X: a one-letter variable (automatic ones are empty here)
                out.append(self._variable(nxt, depth))
                i += 2
        return "".join(out)

    def _variable(self, name: str, depth: int) -> str:
        self.ev.read.add(name)
        return self.expand(self.raw.get(name, ""), depth + 1)

    def _reference(self, body: str, depth: int) -> str:
        func, _, rest = body.partition(" ")
        if not rest or func not in ("filter", "filter-out", "findstring", "subst", "strip", "or", "and", "if"):
            return "" if " " in body.strip() else self._variable(body.strip(), depth)  # $(shell …) reads as empty
        args = [self.expand(a, depth + 1) for a in _split_commas(rest)]
        if func == "strip":
            return " ".join(args[0].split()) if args else ""
        if func == "findstring" and len(args) == 2:
            return args[0] if args[0] in args[1] else ""
        if func == "subst" and len(args) == 3:
            return args[2].replace(args[0], args[1])
        if func in ("filter", "filter-out") and len(args) == 2:
            pats = [re.compile("^" + re.escape(p).replace("%", ".*") + "$") for p in args[0].split()]
            words = args[1].split()
            keep = [w for w in words if any(p.match(w) for p in pats) == (func == "filter")]
            return " ".join(keep)
        if func == "or":
            return next((a for a in args if a.strip()), "")
        if func == "and":
            return args[-1] if args and all(a.strip() for a in args) else ""
        if func == "if" and args:
            return (args[1] if len(args) > 1 else "") if args[0].strip() else (args[2] if len(args) > 2 else "")
        return ""


def _split_commas(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    level = 0
    for c in text:
        if c in "({":
            level += 1
        elif c in ")}":
            level -= 1
        if c == "," and level == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def _make_condition(kind: str, arg: str, exp: _MakeExpander) -> bool:
    if kind in ("ifdef", "ifndef"):
        name = exp.expand(arg.strip())
        exp.ev.read.add(name)
        defined = bool(exp.expand(exp.raw.get(name, "")).strip())
        return defined if kind == "ifdef" else not defined
    arg = arg.strip()
    if arg.startswith("("):
        parts = _split_commas(arg[1 : arg.rfind(")")])
        a, b = [*parts, "", ""][:2]
    else:  # ifeq "a" "b"
        quoted = re.findall(r"\"([^\"]*)\"|'([^']*)'", arg)
        a, b = ([x or y for x, y in quoted] + ["", ""])[:2]
    same = exp.expand(a).strip() == exp.expand(b).strip()
    return same if kind == "ifeq" else not same


def eval_makefile(path: Path, rel: str, make_vars: dict[str, str]) -> RecipeEval:
    """The Makefile as make on a Mac would read it with `make VAR=value …` (command-line variables win)."""
    ev = RecipeEval(files=[rel])
    raw: dict[str, str] = {**MAKE_TARGET_VARS}
    for k, v in make_vars.items():
        raw[k] = str(v)
        ev.variables[k] = Assignment(str(v), None, f"{k}={v}")
    for k, v in MAKE_TARGET_VARS.items():
        ev.variables.setdefault(k, Assignment(v, None, f"{k}={v} (the Mac the recipe targets)"))
    exp = _MakeExpander(ev, raw)
    # a stack of (this branch taken, some branch of this conditional already taken, parent active)
    stack: list[list[bool]] = []
    around: list[Line] = []  # the conditional lines open at this point
    active = True
    # the rule whose recipe a tab line belongs to: only an active rule opens a recipe (make skips the
    # lines of a false conditional unread); an inactive one is kept for the evidence alone
    block: list[str] | None = None
    block_head: Line | None = None
    block_active = False

    def close_block() -> None:
        nonlocal block, block_head
        if block is not None and block_head is not None:
            ev.blocks.append((block_head, "\n".join(block), block_active))
        block, block_head = None, None

    for number, text in _logical_lines(path):
        line = Line(rel, number, text)
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if m := _MAKE_COND.match(stripped):
            taken = active and _make_condition(m[1], m[2], exp)
            ev.conditions.append((line, taken))
            stack.append([taken, taken, active])
            around.append(line)
            active = taken
            continue
        if stripped == "else" or stripped.startswith("else "):
            if stack:
                top = stack[-1]
                cond = _MAKE_COND.match(stripped[4:].strip())
                taken = top[2] and not top[1] and (_make_condition(cond[1], cond[2], exp) if cond else True)
                ev.conditions.append((line, taken))
                top[0], top[1] = taken, top[1] or taken
                around[-1] = line
                active = taken
            continue
        if stripped.startswith("endif"):
            if stack:
                active = stack.pop()[2]
                around.pop()
            continue
        if around:
            ev.within[(rel, number)] = around[-1]
        recipe = text.startswith("\t") and block is not None
        if recipe and (block_active or not active):
            block.append(stripped)  # type: ignore[union-attr]
            continue
        if not active:
            if (m := _RULE.match(stripped)) and not text.startswith("\t"):
                close_block()
                block, block_head, block_active = [stripped], line, False
            continue
        if stripped.startswith(("define ", "endef", "include ", "-include ", "sinclude ", "$(")):
            continue
        if m := _MAKE_ASSIGN.match(stripped):
            close_block()
            ev.active.append(line)
            name, op, value = m[1], m[2], m[3]
            if name in make_vars:  # a command-line variable: the file's assignments do not change it
                continue
            if op == "?=" and raw.get(name):
                continue
            if op == "+=":
                raw[name] = f"{raw.get(name, '')} {value}".strip()
            elif op in (":=", "::="):
                raw[name] = exp.expand(value)
            elif op == "!=":
                raw[name] = ""
            else:
                raw[name] = value
            ev.variables[name] = Assignment(raw[name], line)
            continue
        if m := _RULE.match(stripped):
            close_block()
            block, block_head, block_active = [stripped], line, True
        ev.active.append(line)
    close_block()
    return ev


# -- CMake -----------------------------------------------------------------------------------------------

_CMAKE_CMD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def _cmake_commands(text: str) -> list[tuple[int, str, str]]:
    """(line, command name lower-cased, raw argument text) of every command, comments dropped."""
    out = []
    i, n = 0, len(text)
    line = 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c == "#":
            if text.startswith("#[[", i) or text.startswith("#[=[", i):
                end = text.find("]]" if text.startswith("#[[", i) else "]=]", i)
                end = n if end < 0 else end + 2
            else:
                end = text.find("\n", i)
                end = n if end < 0 else end
            line += text.count("\n", i, end)
            i = end
            continue
        m = _CMAKE_CMD.match(text, i)
        if m is None or (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
            i += 1
            continue
        j, level, quoted = m.end(), 1, False
        while j < n and level:
            ch = text[j]
            if ch == "\\":  # an escape (\" in a quoted argument, \# outside one) is no quote or comment
                j += 2
                continue
            if ch == '"':
                quoted = not quoted
            elif not quoted and ch == "(":
                level += 1
            elif not quoted and ch == ")":
                level -= 1
            elif not quoted and ch == "#":
                end = text.find("\n", j)
                j = n if end < 0 else end
                continue
            j += 1
        out.append((line, m[1].lower(), text[m.end() : j - 1]))
        line += text.count("\n", i, j)
        i = j
    return out


def _cmake_args(raw: str) -> list[str]:
    """Arguments; parentheses are their own tokens (they group a condition)."""
    found = re.findall(r'"((?:[^"\\]|\\.)*)"|([()])|([^\s()"]+)', raw)
    return [q or p or w for q, p, w in found]


def _cmake_truthy(value: str) -> bool:
    v = value.strip().upper()
    if v in _TRUE:
        return True
    if v in _FALSE or v.endswith("-NOTFOUND"):
        return False
    try:
        return float(v) != 0
    except ValueError:
        return False


class _CMakeEvaluator:
    def __init__(self, tree: Path, cmake_args: list[str]) -> None:
        self.tree = tree
        self.ev = RecipeEval()
        self.given: dict[str, str] = {}
        for arg in cmake_args:
            if m := re.match(r"^-D([A-Za-z_][\w.\-]*)(?::\w+)?=(.*)$", arg):
                self.given[m[1]] = m[2]
                self.ev.variables[m[1]] = Assignment(m[2], None, arg)
        for k, v in CMAKE_TARGET_VARS.items():
            self.ev.variables.setdefault(k, Assignment(v, None, f"{k}={v} (the Mac the recipe targets)"))

    def expand(self, text: str) -> str:
        for _ in range(10):
            new = re.sub(r"\$\{([A-Za-z_][\w.\-]*)\}", lambda m: self._read(m[1]), text)
            if new == text:
                break
            text = new
        return text

    def _read(self, name: str) -> str:
        self.ev.read.add(name)
        return self.ev.value(name)

    def condition(self, args: list[str]) -> bool:
        tokens = [self.expand(a) for a in args]
        pos = 0

        def value_of(tok: str) -> str:
            if re.fullmatch(r"[A-Za-z_][\w.\-]*", tok) and tok in self.ev.variables:
                self.ev.read.add(tok)
                return self.ev.value(tok)
            return tok

        def atom() -> bool:
            nonlocal pos
            if pos >= len(tokens):
                return False
            tok = tokens[pos]
            pos += 1
            if tok == "(":
                result = disjunction()
                pos += 1
                return result
            if tok == "NOT":
                return not atom()
            if tok in ("DEFINED", "EXISTS", "COMMAND", "TARGET", "POLICY"):
                name = tokens[pos] if pos < len(tokens) else ""
                pos += 1
                if tok == "DEFINED":
                    self.ev.read.add(name)
                    return name in self.ev.variables
                return tok == "EXISTS" and (self.tree / name).exists()
            if pos < len(tokens) and tokens[pos] in _BINARY:
                op, rhs = tokens[pos], tokens[pos + 1] if pos + 1 < len(tokens) else ""
                pos += 2
                return _BINARY[op](value_of(tok), value_of(rhs))
            upper = tok.upper()
            if upper in _TRUE or upper in _FALSE:
                return upper in _TRUE
            if re.fullmatch(r"[A-Za-z_][\w.\-]*", tok):
                self.ev.read.add(tok)
                return self.ev.truthy(tok)
            return _cmake_truthy(tok)

        def conjunction() -> bool:
            nonlocal pos
            result = atom()
            while pos < len(tokens) and tokens[pos] == "AND":
                pos += 1
                rhs = atom()
                result = result and rhs
            return result

        def disjunction() -> bool:
            nonlocal pos
            result = conjunction()
            while pos < len(tokens) and tokens[pos] == "OR":
                pos += 1
                rhs = conjunction()
                result = result or rhs
            return result

        return disjunction()

    def run_file(self, path: Path) -> None:
        rel = str(path.relative_to(self.tree))
        if rel in self.ev.files or not path.is_file():
            return
        self.ev.files.append(rel)
        here = str(path.parent)
        self.ev.variables["CMAKE_CURRENT_SOURCE_DIR"] = Assignment(here, None)
        self.ev.variables.setdefault("CMAKE_SOURCE_DIR", Assignment(str(self.tree), None))
        text = path.read_text(errors="replace")
        stack: list[list[bool]] = []  # (this branch taken, some branch taken, parent active)
        active = True
        skip = 0  # inside a function/macro definition
        for number, name, raw in _cmake_commands(text):
            line = Line(rel, number, f"{name}({' '.join(raw.split())})"[:300])
            if name in ("function", "macro"):
                skip += 1
                continue
            if name in ("endfunction", "endmacro"):
                skip = max(skip - 1, 0)
                continue
            if skip:
                continue
            args = _cmake_args(raw)
            if name == "if":
                taken = active and self.condition(args)
                self.ev.conditions.append((line, taken))
                stack.append([taken, taken, active])
                active = taken
                continue
            if name in ("elseif", "else"):
                if not stack:
                    continue
                top = stack[-1]
                taken = top[2] and not top[1] and (self.condition(args) if name == "elseif" else True)
                self.ev.conditions.append((line, taken))
                top[0], top[1] = taken, top[1] or taken
                active = taken
                continue
            if name == "endif":
                if stack:
                    active = stack.pop()[2]
                continue
            if name in ("add_custom_command", "add_custom_target"):
                self.ev.blocks.append((line, raw, active))
            if not active:
                continue
            self.ev.active.append(line)
            self.command(name, args, line, path.parent)
            self.ev.variables["CMAKE_CURRENT_SOURCE_DIR"] = Assignment(here, None)

    def command(self, name: str, args: list[str], line: Line, here: Path) -> None:
        if name == "option" and args:
            self.ev.options.setdefault(args[0], line)
            if args[0] not in self.ev.variables:
                default = self.expand(args[2]) if len(args) > 2 else "OFF"
                self.ev.variables[args[0]] = Assignment(default, line)
        elif name == "set" and args:
            var, values = args[0], [self.expand(a) for a in args[1:]]
            if "CACHE" in values:
                at = values.index("CACHE")
                value, force = " ".join(values[:at]), "FORCE" in values[at:]
                if force or var not in self.ev.variables:
                    self.ev.variables[var] = Assignment(value, line)
            else:
                self.ev.variables[var] = Assignment(" ".join(values), line)
        elif name == "llama_option_depr" and len(args) >= 3:
            # llama.cpp's transition helper (2024-): an old LLAMA_* switch that is on turns its GGML_* on
            old, new = args[1], args[2]
            self.ev.read.add(old)
            if self.ev.truthy(old):
                self.ev.variables[new] = Assignment("ON", line, f"{self.ev.variables[old].given or old} → {new}")
        elif name == "add_subdirectory" and args:
            sub = (here / self.expand(args[0])).resolve()
            rel = sub.relative_to(self.tree.resolve()) if sub.is_relative_to(self.tree.resolve()) else None
            if rel is not None and rel.parts[:1] == ("ggml",):  # the library whose switches decide Metal
                self.run_file(sub / "CMakeLists.txt")
        elif name == "ggml_add_backend" and args and args[0].upper() == "METAL" and self.ev.truthy("GGML_METAL"):
            self.run_file(here / "ggml-metal" / "CMakeLists.txt")


_BINARY = {
    "STREQUAL": lambda a, b: a == b,
    "STRLESS": lambda a, b: a < b,
    "STRGREATER": lambda a, b: a > b,
    "EQUAL": lambda a, b: a == b,
    "MATCHES": lambda a, b: bool(re.search(b, a)),
    "VERSION_GREATER_EQUAL": lambda a, b: _version(a) >= _version(b),
    "VERSION_GREATER": lambda a, b: _version(a) > _version(b),
    "VERSION_LESS": lambda a, b: _version(a) < _version(b),
    "VERSION_LESS_EQUAL": lambda a, b: _version(a) <= _version(b),
    "VERSION_EQUAL": lambda a, b: _version(a) == _version(b),
    "IN_LIST": lambda a, b: a in b.split(";"),
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4]) or (0,)


def eval_cmake(tree: Path, cmake_args: list[str]) -> RecipeEval:
    """The CMake files of `tree` (the top one, then those towards ggml's Metal backend) as a Mac configure
    with `cmake_args` would read their switches."""
    evaluator = _CMakeEvaluator(tree, cmake_args)
    evaluator.run_file(tree / "CMakeLists.txt")
    return evaluator.ev

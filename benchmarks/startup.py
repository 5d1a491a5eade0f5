"""Benchmark (not a test): how long the command line takes to start, beside `python -c pass`.

Each command runs in a fresh interpreter (`python -m bench …`, what the `bench` script runs), the whole
process timed from the outside: `bench --help`, `bench --version`, `bench classify-log <a real log>` and
`bench compare --help`. Repetitions are interleaved (one of each command per round, every tree in the same
round), so drift on a shared machine hits all of them alike; the median of the rounds is printed, in seconds
and as a ratio to `python -c pass`.

With `--against REF` the same commands also run on the code of another git ref (exported with `git archive`
into a temporary folder), so the change is a ratio measured in the same run, on the same machine.

    .venv/bin/python benchmarks/startup.py [--rounds 21] [--against 640bbf8] > benchmarks/results/startup.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOG = Path("tests/logs/context_failed/lmstudio-context-init.log")
# the goals, in seconds (None: no goal, shown for comparison)
COMMANDS: dict[str, tuple[tuple[str, ...], float | None]] = {
    "bench --help": (("--help",), 0.2),
    "bench --version": (("--version",), 0.2),
    f"bench classify-log {LOG.name}": (("classify-log", str(REPO / LOG)), 0.4),
    "bench compare --help": (("compare", "--help"), None),
}


@dataclass(frozen=True)
class Tree:
    label: str
    root: Path


def export(ref: str, into: Path) -> Tree:
    """The files of `ref`, as `git archive` gives them (no build outputs, no uncommitted edits)."""
    archive, root = into / f"tree-{ref}.tar", into / f"tree-{ref}"  # one folder a ref: several refs in one run
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return Tree(ref, root)


def tree_env(tree: Tree) -> dict[str, str]:
    """The environment a tree's commands run in: its root first on the path, and bytecode written (the
    uncounted first round writes it, as installing perfgate does; an environment that sets
    PYTHONDONTWRITEBYTECODE would otherwise have every command compile perfgate's sources anew)."""
    env = {**os.environ, "PYTHONPATH": str(tree.root)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_s(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start, proc.returncode


def measure(trees: list[Tree], rounds: int) -> tuple[list[float], dict[tuple[str, str], list[float]], dict]:
    """Seconds per round of `python -c pass` and of each (tree, command); the exit code each command gave."""
    # `python -m` puts the working folder first on sys.path: each tree runs from its own root
    envs = {t.label: tree_env(t) for t in trees}
    bare: list[float] = []
    seconds: dict[tuple[str, str], list[float]] = {(t.label, c): [] for t in trees for c in COMMANDS}
    codes: dict[tuple[str, str], int] = {}
    for i in range(rounds + 1):  # round 0 warms the file cache and writes the bytecode: not counted
        row: list[tuple[tuple[str, str], float]] = []
        bare_s, _ = run_s([sys.executable, "-c", "pass"], REPO, dict(os.environ))
        for tree in trees:
            for name, (args, _goal) in COMMANDS.items():
                s, code = run_s([sys.executable, "-m", "bench", *args], tree.root, envs[tree.label])
                row.append(((tree.label, name), s))
                codes[(tree.label, name)] = code
        if i == 0:
            continue
        bare.append(bare_s)
        for key, s in row:
            seconds[key].append(s)
    return bare, seconds, codes


def report(trees: list[Tree], rounds: int, bare: list[float], seconds: dict, codes: dict) -> str:
    base = statistics.median(bare)
    head = trees[0].label
    lines = [
        f"perfgate start-up, median of {rounds} interleaved rounds (first round not counted)",
        f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {time.strftime('%Y-%m-%d %H:%M')}",
        f"trees: {', '.join(f'{t.label} = {t.root}' for t in trees)}",
        "",
        f"python -c pass: {base:.3f} s",
        "",
    ]
    cols = [f"{'command':<46}", f"{'goal':>6}"]
    for t in trees:
        cols += [f"{t.label + ' s':>14}", f"{'×python':>8}"]
    if len(trees) > 1:
        cols.append(f"{trees[1].label + ' / ' + head:>22}")
    lines += ["  ".join(cols), "-" * len("  ".join(cols))]
    for name, (_args, goal) in COMMANDS.items():
        cols = [f"{name:<46}", f"{goal:>6.1f}" if goal else f"{'–':>6}"]
        medians = {}
        for t in trees:
            med = statistics.median(seconds[(t.label, name)])
            code = codes[(t.label, name)]
            medians[t.label] = med if code == 0 else None
            shown = f"{med:.3f}" + ("" if goal is None or code else (" ok" if med <= goal else " OVER"))
            if code == 0:
                cols += [f"{shown:>14}", f"{med / base:>8.1f}"]
            else:
                cols += [f"{'exit ' + str(code):>14}", f"{'–':>8}"]
        if len(trees) > 1:
            old, new = medians[trees[1].label], medians[head]
            cols.append(f"{old / new:>21.1f}×" if old is not None and new is not None else f"{'–':>22}")
        lines.append("  ".join(cols))
    if len(trees) > 1:
        lines += ["", f"{trees[1].label} / {head}: times longer the other ref takes to start (> 1: faster now)"]
    lines.append("exit N: the command failed on that tree (e.g. an option it does not have yet): not timed")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--against", metavar="REF", help="also time the code of this git ref (git archive)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="perfgate-startup-") as tmp:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        trees = [Tree(f"{head.stdout.strip() or 'this tree'}{'+edits' if dirty else ''}", REPO)]
        if args.against:
            trees.append(export(args.against, Path(tmp)))
        bare, seconds, codes = measure(trees, args.rounds)
        sys.stdout.write(report(trees, args.rounds, bare, seconds, codes))


if __name__ == "__main__":
    main()

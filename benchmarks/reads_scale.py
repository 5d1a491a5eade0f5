"""Benchmark (not a test): perfgate's reads at scale, this tree beside another git ref, in one run.

One store of 1,000 nightly runs × 4 builds × 25 models = 100,000 results and 1,000,000 samples (filled in bulk
through the real schema: benchmarks/dashboard_scale.py), in SQLite and, with --postgres, pushed into a throwaway
PostgreSQL server (tests/pg_server.py). Each tree has its own copy, written by its own code (a tree may store
samples otherwise: one row each before migration 0005, one packed series per result and test since); the same
seeds give every copy the same figures. On them, each tree's own console commands, as a user runs them (wall
time, process start included), interleaved round by round so that both trees meet the same machine load:

- `bench compare` of two runs (BUILD@RUN) and of two builds (BUILD: every run of each build identity pooled);
- `bench gate` of the two runs;
- `bench dashboard` from nothing, then again after one more nightly run is stored (only what it touches),
  each as many rounds as the reads (the second on a hard-linked copy of the first's site every round).

    .venv/bin/python benchmarks/reads_scale.py --against 640bbf8 [--against REF ...] [--runs 1000] [--rounds 3]
        [--postgres]

A ratio is the other ref's seconds over this tree's: above 1, this tree is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlalchemy import create_engine, text

from benchmarks.startup import Tree, export, run_s, tree_env
from tests.pg_server import pg_server

REPO = Path(__file__).resolve().parents[1]
# the goals, seconds
GOALS = {"compare runs": 1.0, "compare builds": 1.0, "gate runs": 1.0, "dashboard full": 5.0, "dashboard +1 run": 1.0}


def bench_s(tree: Tree, args: list[str]) -> tuple[float, int]:
    """Wall seconds and exit code of the tree's own `bench` command (startup.py's timing, run from its root)."""
    return run_s([sys.executable, "-m", "bench", *args], tree.root, tree_env(tree))


def in_tree(tree: Tree, *argv: str) -> None:
    """A command of the tree's own code, from its root (its schema, its writers)."""
    proc = subprocess.run([sys.executable, *argv], cwd=tree.root, env=tree_env(tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree.label}: {' '.join(argv[:4])} exited {proc.returncode}: {proc.stderr[-2000:]}")


def tree_fill(tree: Tree, url: str, runs: int, first_night: int = 0) -> None:
    """`runs` nightly runs of 4 builds × 25 models into `url`, by the tree's own bulk fill (the same figures from
    the same seeds in every tree, each stored as that tree stores them)."""
    code = (
        "import sys; from benchmarks.dashboard_scale import fill; a = sys.argv; fill(a[1], int(a[2]), 4, 25, int(a[3]))"
    )
    in_tree(tree, "-c", code, url, str(runs), str(first_night))


def last_run(url: str) -> int:
    """The newest run, read without perfgate (whose store would migrate another tree's schema)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("select max(id) from runs")).scalar() or 0)
    finally:
        engine.dispose()


@contextlib.contextmanager
def stores(tmp: Path, trees: list[Tree], runs: int, postgres: bool) -> Iterator[dict[str, dict[str, str]]]:
    """Per backend, per tree: the store of `runs` nights, each tree's own (a tree may store samples otherwise);
    with `postgres`, pushed by the tree's own `bench push` into a database its `bench db upgrade` made."""
    urls: dict[str, dict[str, str]] = {"sqlite": {}}
    for n, tree in enumerate(trees):
        t0 = time.perf_counter()
        urls["sqlite"][tree.label] = url = f"sqlite:///{tmp}/store-{n}.sqlite"
        tree_fill(tree, url, runs)
        print(f"{tree.label}: {last_run(url)} runs, bulk fill {time.perf_counter() - t0:.0f} s", flush=True)
    if not postgres:
        yield urls
        return
    with pg_server() as server:
        urls["postgresql"] = {}
        for tree in trees:
            urls["postgresql"][tree.label] = url = server.create_database()
            in_tree(tree, "-m", "bench", "db", "upgrade", "--db", url)
            in_tree(tree, "-m", "bench", "push", "--to", url, "--db", urls["sqlite"][tree.label])
        yield urls


def measure(urls: dict[str, str], trees: list[Tree], rounds: int, tmp: Path) -> dict[tuple[str, str], list[float]]:
    run = last_run(urls[trees[0].label])
    reads = {
        "compare runs": [
            "compare",
            "--baseline",
            f"build-0@{run}",
            "--candidate",
            f"build-1@{run}",
            "--format",
            "json",
        ],
        "compare builds": ["compare", "--baseline", "build-0", "--candidate", "build-1", "--format", "json"],
        "gate runs": ["gate", "--baseline", f"build-0@{run}", "--candidate", f"build-1@{run}"],
    }
    seconds: dict[tuple[str, str], list[float]] = {}

    def timed(tree: Tree, what: str, args: list[str], ok: tuple[int, ...] = (0,)) -> None:
        s, code = bench_s(tree, [*args, "--db", urls[tree.label]])
        if code not in ok:
            raise SystemExit(f"{tree.label}: bench {' '.join(args)} exited {code}")
        seconds.setdefault((tree.label, what), []).append(s)

    for i in range(rounds + 1):  # round 0 warms the file cache and writes the bytecode: not counted
        for tree in trees if i % 2 == 0 else trees[::-1]:
            for what, args in reads.items():
                timed(tree, what, args, ok=(0, 1, 3) if args[0] == "gate" else (0,))
        if i == 0:
            seconds.clear()
    # the dashboard from nothing, `rounds` times a tree; the last site of each is what one more run updates
    sites = {t.label: tmp / f"site-{t.label}" for t in trees}
    for i in range(rounds):
        for tree in trees if i % 2 == 0 else trees[::-1]:
            shutil.rmtree(sites[tree.label], ignore_errors=True)
            timed(tree, "dashboard full", ["dashboard", "--out", str(sites[tree.label])])
    for tree in trees:
        tree_fill(tree, urls[tree.label], 1, first_night=run)
    for i in range(rounds):
        for tree in trees if i % 2 == 0 else trees[::-1]:
            # each round updates a copy of that site (hard links: perfgate never writes into a kept file)
            copy = tmp / f"site-{tree.label}-{i}"
            shutil.copytree(sites[tree.label], copy, copy_function=os.link)
            timed(tree, "dashboard +1 run", ["dashboard", "--out", str(copy)])
            shutil.rmtree(copy)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--against", metavar="REF", required=True, action="append", help="another git ref (git archive); repeatable"
    )
    parser.add_argument("--runs", type=int, default=1000, help="nightly runs of 4 builds × 25 models")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the read commands")
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reads-scale-") as tmp_name:
        tmp = Path(tmp_name)
        here = Tree("this tree", REPO)
        others = [export(ref, tmp) for ref in args.against]
        trees = [here, *others]
        # this VM's speed drifts by a fifth within an hour: the bare interpreter's start says how fast it is now
        bare = statistics.median(run_s([sys.executable, "-c", "pass"], REPO, dict(os.environ))[0] for _ in range(7))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; `python -c pass` {bare:.3f} s; "
              f"{args.rounds} rounds, medians")  # fmt: skip
        with stores(tmp, trees, args.runs, args.postgres) as urls:
            for backend, of_tree in urls.items():
                seconds = measure(of_tree, trees, args.rounds, tmp)
                pad = " " * (len(backend) + 1)
                head = "".join(f" {o.label + ' s':>12} ratio" for o in others)
                print(f"\n{backend}: {'command':<18} {'goal s':>7} {'this tree s':>12}{head}")
                for what, goal in GOALS.items():
                    a = statistics.median(seconds[(here.label, what)])
                    mark = "ok" if a <= goal else "OVER"
                    cells = ""
                    for o in others:
                        b = statistics.median(seconds[(o.label, what)])
                        cells += f" {b:>12.2f} {b / a:>4.1f}×"
                    print(f"{pad} {what:<18} {goal:>7.1f} {a:>9.2f} {mark:<4}{cells}")


if __name__ == "__main__":
    main()

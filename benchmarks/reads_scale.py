"""Benchmark (not a test): perfgate's reads at scale, this tree beside another git ref, in one run.

One store of 1,000 nightly runs × 4 builds × 25 models = 100,000 results and 1,000,000 sample rows (filled in
bulk through the real schema: benchmarks/dashboard_scale.py), in SQLite and, with --postgres, copied into a
throwaway PostgreSQL server (tests/pg_server.py). On it, each tree's own console commands, as a user runs them
(wall time, process start included), interleaved round by round so that both trees meet the same machine load:

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
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.store.db import open_store
from bench.store.transfer import copy_runs
from benchmarks.dashboard_scale import fill
from benchmarks.startup import Tree, export, run_s, tree_env
from benchmarks.store_scale import backends, last_run

REPO = Path(__file__).resolve().parents[1]
# the goals, seconds
GOALS = {"compare runs": 1.0, "compare builds": 1.0, "gate runs": 1.0, "dashboard full": 5.0, "dashboard +1 run": 1.0}


def bench_s(tree: Tree, args: list[str]) -> tuple[float, int]:
    """Wall seconds and exit code of the tree's own `bench` command (startup.py's timing, run from its root)."""
    return run_s([sys.executable, "-m", "bench", *args], tree.root, tree_env(tree))


@contextlib.contextmanager
def stores(tmp: Path, runs: int, postgres: bool) -> Iterator[dict[str, str]]:
    """The filled SQLite store, and with `postgres` its copy on a throwaway server (store_scale's backends)."""
    with backends(tmp, postgres) as urls:
        t0 = time.perf_counter()
        fill(urls["sqlite"], runs, 4, 25)
        print(f"store: {last_run(urls['sqlite'])} runs, bulk fill {time.perf_counter() - t0:.0f} s", flush=True)
        for url in list(urls.values())[1:]:
            with open_store(urls["sqlite"]) as src, open_store(url) as dst:
                copy_runs(src, dst)
        yield urls


def measure(url: str, trees: list[Tree], rounds: int, tmp: Path) -> dict[tuple[str, str], list[float]]:
    run = last_run(url)
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
        s, code = bench_s(tree, [*args, "--db", url])
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
    fill(url, 1, 4, 25, first_night=run)
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
        with stores(tmp, args.runs, args.postgres) as urls:
            for backend, url in urls.items():
                seconds = measure(url, trees, args.rounds, tmp)
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

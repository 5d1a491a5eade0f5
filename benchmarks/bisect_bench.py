"""`bench bisect` over the test history, timed: builds per bisect and the wall time of each.

    .venv/bin/python benchmarks/bisect_bench.py

The history is the one tests/test_bisect.py builds from the vendored llama.cpp (7 commits after the good
one: a commit that does not compile, a real busy wait in the CPU backend's graph compute; then a commit
that renames the llama architecture). Builds go to a fresh cache; ccache, when installed, keeps objects.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synth import SynthSpec, synthesize  # noqa: E402
from tests.test_bisect import _config, make_history  # noqa: E402

BENCH = str(Path(sys.executable).with_name("bench"))


def _bisect(args: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run([BENCH, "bisect", *args], capture_output=True, text=True, check=False)
    return time.monotonic() - start, proc.stdout + proc.stderr


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="perfgate-bisect-") as tmp:
        work = Path(tmp)
        history = make_history(work / "llama.cpp")
        repo, shas = history["repo"], history["shas"]
        model = work / "tiny-Q4_0.gguf"
        synthesize(SynthSpec("tiny", "Q4_0"), model)
        cfg = _config(work, model, work / "cache")
        common = ["--repo", str(repo), "--model", "tiny", "--config", str(cfg), "--db", str(work / "b.sqlite")]
        runs = [
            ("tg_ts, 7 commits", ["--good", shas["good"], "--bad", shas["bad"], "--metric", "tg_ts"], shas["slow"]),
            ("load, 4 commits", ["--good", shas["bad"], "--bad", shas["c11"], "--metric", "load"], shas["noload"]),
        ]
        for label, args, expected in runs:
            seconds, out = _bisect([*common, *args])
            tried = re.findall(r"^  ([0-9a-f]{12}) (good|bad |skip)", out, re.M)
            skips = sum(1 for _, mark in tried if mark == "skip")
            found = f"first bad commit: {expected}" in out
            print(
                f"{label}: {len(tried)} commits tried ({skips} skipped)"
                + (" + the good build" if "--metric" in args and "load" not in args else "")
                + f", {seconds:.0f} s wall; "
                f"{'found the planted commit' if found else 'DID NOT find the planted commit'}"
            )


if __name__ == "__main__":
    main()

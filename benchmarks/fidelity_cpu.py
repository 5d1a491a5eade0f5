"""Benchmark (not a test): perfgate's worker vs the vendored llama-bench on this CPU, same libllama.

Builds the sdist's vendored llama.cpp (llama-bench + libllama, GGML_NATIVE=OFF) once under .cache/,
points a perfgate build at that libllama (LLAMA_CPP_LIB_PATH), and alternates the two tools for a few
rounds on the tiny model so drift hits both; prints perfgate/llama-bench per metric.

    .venv/bin/python benchmarks/fidelity_cpu.py [--rounds 3] [--shape tiny]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.synth import SynthSpec, synthesize

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / ".cache" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
BUILD = VENDOR / "build-cpu"


def build_llama_bench() -> Path:
    exe = BUILD / "bin" / "llama-bench"
    if exe.exists():
        return exe
    if not VENDOR.exists():
        subprocess.run(["make", "vendor"], cwd=REPO, check=True)
    subprocess.run(
        [
            "cmake",
            "-S",
            str(VENDOR),
            "-B",
            str(BUILD),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=OFF",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ["cmake", "--build", str(BUILD), "--target", "llama-bench", "-j", str(os.cpu_count() or 2)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", default="tiny")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    exe = build_llama_bench()
    bench = str(Path(sys.executable).with_name("bench"))
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        model = Path(tmp) / f"{args.shape}-Q4_0.gguf"
        synthesize(SynthSpec(args.shape, "Q4_0"), model)
        db = f"sqlite:///{tmp}/fidelity.sqlite"
        cfg = Path(tmp) / "fidelity.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "models": [{"name": model.stem, "path": str(model)}],
                    "builds": [{"name": "perfgate", "python": sys.executable, "lib": str(BUILD / "bin")}],
                    "suite": {"n_prompt": 512, "n_gen": 128, "repetitions": 5, "threads": args.threads},
                }
            )
        )
        for r in range(args.rounds):
            subprocess.run(
                [bench, "run", "--config", str(cfg), "--db", db, "--quiet"], check=True, stdout=subprocess.DEVNULL
            )
            out = Path(tmp) / f"llama-bench-{r}.json"
            with out.open("w") as fh:
                subprocess.run(
                    [
                        str(exe),
                        "-m",
                        str(model),
                        "-p",
                        "512",
                        "-n",
                        "128",
                        "-r",
                        "5",
                        "-t",
                        str(args.threads),
                        "-o",
                        "json",
                    ],
                    check=True,
                    stdout=fh,
                    stderr=subprocess.DEVNULL,
                )
            subprocess.run(
                [bench, "import", str(out), "--format", "llama-bench", "--build", "llama-bench", "--db", db],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        # every round's samples, pooled: the last round alone would waste the others
        table = pooled_table(db, args.rounds)
    print(
        f"perfgate worker vs vendored llama-bench, {args.shape} Q4_0, CPU, {args.threads} threads, "
        f"{args.rounds} alternating rounds × 5 repetitions"
    )
    print(table.to_string(index=False, float_format="{:.4g}".format))


def pooled_table(db: str, rounds: int):  # type: ignore[no-untyped-def]
    import pandas as pd

    from bench.analysis.compare import compare_frames
    from bench.store.db import open_store
    from bench.store.queries import results_frame

    with open_store(db) as store, store.session() as session:
        frame = results_frame(session)
    pooled = []
    for _build, rows in frame.groupby("build"):
        first = rows.iloc[0].copy()
        first["samples_pp_ns"] = [ns for s in rows["samples_pp_ns"] for ns in s]
        first["samples_tg_ns"] = [ns for s in rows["samples_tg_ns"] for ns in s]
        pooled.append(first)
    both = pd.DataFrame(pooled)
    table = compare_frames(
        both[both["build"] == "llama-bench"], both[both["build"] == "perfgate"], metrics=("pp_ts", "tg_ts")
    )
    table = table.rename(columns={"baseline": "llama_bench", "candidate": "perfgate", "ratio": "perfgate/llama_bench"})
    return table[
        ["model", "metric", "perfgate", "llama_bench", "perfgate/llama_bench", "ci_low", "ci_high", "n_candidate"]
    ]


if __name__ == "__main__":
    main()

"""Benchmark (not a test): how many corpus logs does the classifier get right, per split of the corpus?

Reads tests/logs/MANIFEST.tsv (or `--manifest`), classifies every log with the settings its row records
(expect_gpu, n_gpu_layers, exit status) exactly as tests/test_diagnose.py does, and prints the accuracy of
each split (`train`, `heldout`, `blind`, `unseen`, ...) and every log it gets wrong, with the status, phase
and deciding line it gave instead. A split scored before any rule was written from it is the evidence
that the rules generalise (tests/logs/README.md says which split that was when).

    .venv/bin/python benchmarks/classifier_score.py [--manifest tests/logs/MANIFEST.tsv] [--split unseen]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.diagnose import Diagnosis, ExitInfo, classify

MANIFEST = Path(__file__).resolve().parents[1] / "tests" / "logs" / "MANIFEST.tsv"


@dataclass(frozen=True)
class Scored:
    file: str
    split: str
    expected: str
    diagnosis: Diagnosis

    @property
    def right(self) -> bool:
        return self.diagnosis.status == self.expected


def exit_info(row: dict[str, str]) -> ExitInfo | None:
    if row["exit"] == "timeout":
        return ExitInfo(-9, timed_out=True, timeout_s=3)
    return ExitInfo(int(row["exit"])) if row["exit"] else None


def score(manifest: Path, splits: set[str] | None = None) -> list[Scored]:
    rows = list(csv.DictReader(manifest.open(encoding="utf-8"), delimiter="\t"))
    scored = []
    for row in rows:
        if splits and row["split"] not in splits:
            continue
        text = (manifest.parent / row["file"]).read_text(encoding="utf-8", errors="replace")
        diagnosis = classify(
            text,
            expect_gpu=row["expect_gpu"] == "yes",
            layers_requested=int(row["n_gpu_layers"]) if row["n_gpu_layers"] else None,
            exit_info=exit_info(row),
        )
        scored.append(Scored(row["file"], row["split"], row["expected_category"], diagnosis))
    return scored


def report(scored: list[Scored]) -> str:
    by_split: dict[str, list[Scored]] = defaultdict(list)
    for s in scored:
        by_split[s.split].append(s)
    lines = [f"{'split':<10} {'right':>6} {'logs':>5} {'accuracy':>9}"]
    for split, items in [*sorted(by_split.items()), ("all", scored)]:
        right = sum(s.right for s in items)
        lines.append(f"{split:<10} {right:>6} {len(items):>5} {right / len(items):>8.1%}")
    wrong = [s for s in scored if not s.right]
    lines.append("")
    lines.append(f"misclassified ({len(wrong)}):" if wrong else "misclassified: none")
    for s in wrong:
        d = s.diagnosis
        where = f"{d.phase}, line {d.line_no}" if d.line_no else d.phase
        lines.append(f"  [{s.split}] {s.file}: expected {s.expected}, got {d.status} ({where}): {d.reason[:160]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--split", action="append", help="only this split (repeatable)")
    args = parser.parse_args()
    try:
        scored = score(args.manifest, set(args.split) if args.split else None)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {args.manifest}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not scored:
        print(f"error: {args.manifest}: no logs in split {', '.join(args.split or [])}", file=sys.stderr)
        raise SystemExit(2)
    print(report(scored))


if __name__ == "__main__":
    main()

"""The KoboldCPP engine: `--benchmark` runs once per process, so a repetition is a process (and a load).

What the recorded v1.60.1/v1.61 outputs (tests/koboldcpp) show an engine must know: one unquoted CSV
row per process (`Output` is raw model text, later versions add `Flags` after it, so only the columns
before the free text are read by name); the prompt is contextsize − 100 tokens and 100 are generated;
`Layers` echoes the request, so offload is judged from the log; GPU flags without their library fall
back to the CPU with exit 0; exit codes 2/3/139 are refused / "Load Text Model OK: False" / segfault.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.builds.identity import BuildIdentity, sha256_file
from bench.engines.base import NEW_FILE, FileNamer, ItemSpec, Judge, ProcessOutcome, ProcessSpec, measurement_of
from bench.metrics import Status
from bench.store.records import Measurement

CSV = NEW_FILE + "bench.csv"  # KoboldCPP writes the header only into a file that does not exist yet
GEN_TOKENS = 100  # --benchmark generates this many tokens whatever the context
CONTEXT_HEADROOM = 100  # the prompt is contextsize minus this
_FREE_TEXT = ("Output", "Coherent", "Flags")
_VERSION = re.compile(r"(?:Welcome to KoboldCpp - Version|KoboldCpp version)\s*:?\s*([\w.\-]+)")


def parse_csv_rows(text: str) -> list[dict[str, str]]:
    """Rows of a --benchmark CSV by header name, up to the first free-text column."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split(",")
    fixed = next((i for i, name in enumerate(header) if name in _FREE_TEXT), len(header))
    rows = []
    for line in lines[1:]:
        if line.startswith(header[0] + ","):  # a header again (files appended by several versions)
            header = line.split(",")
            fixed = next((i for i, name in enumerate(header) if name in _FREE_TEXT), len(header))
            continue
        cells = line.split(",", fixed)
        if len(cells) > fixed - 1:
            rows.append(dict(zip(header[:fixed], cells[:fixed], strict=False)))
    return rows


def _float(row: dict[str, str], key: str) -> float | None:
    try:
        return float(row[key].rstrip("sT/"))
    except (KeyError, ValueError):
        return None


class KoboldCpp:
    name = "koboldcpp"

    def __init__(self, build_name: str, program: Path, args: list[str], env: dict[str, str], details: dict) -> None:
        self.build_name = build_name
        self.program = program
        self.args = list(args)
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.details = details

    def _launcher(self) -> list[str]:
        return [sys.executable, str(self.program)] if self.program.suffix == ".py" else [str(self.program)]

    def identify(self) -> BuildIdentity:
        libs = sorted(self.program.parent.glob("koboldcpp_*.so")) + sorted(
            self.program.parent.glob("koboldcpp_*.dylib")
        )
        digest = sha256_file(self.program)
        return BuildIdentity(
            name=self.build_name,
            ok=True,
            lib_path=str(self.program),
            lib_sha256=digest,
            ggml_sha256=sha256_file(libs[0]) if libs else None,
            details={
                **self.details,
                "engine": self.name,
                "engine_key": f"{self.name}|{' '.join(self.args)}|{','.join(sha256_file(lib) for lib in libs)}",
                "args": self.args,
                "libraries": [lib.name for lib in libs],
            },
        )

    def argv(self, item: ItemSpec, csv_path: str) -> list[str]:
        layers = item.n_gpu_layers if item.n_gpu_layers >= 0 else (item.layers_total or 999)
        return [
            *self._launcher(),
            "--model",
            str(item.model_path),
            "--gpulayers",
            str(layers),
            "--contextsize",
            str(item.n_prompt + CONTEXT_HEADROOM),
            "--threads",
            str(item.threads),
            "--benchmark",
            csv_path,
            "--skiplauncher",
            *self.args,
        ]

    def processes(self, item: ItemSpec) -> list[Callable[[FileNamer], ProcessSpec]]:
        def make(path: FileNamer) -> ProcessSpec:
            return ProcessSpec(self.argv(item, path(CSV)), self.env, read=(CSV,))

        return [make] * item.repetitions

    def measurement(self, item: ItemSpec, outcomes: list[ProcessOutcome], judge: Judge) -> Measurement:
        pp_ns, tg_ns, load_ns = [], [], []
        logs = []
        judged = []  # (diagnosis, outcome, wrote a row)
        info: dict[str, Any] = {}
        for i, outcome in enumerate(outcomes, 1):
            rows = parse_csv_rows(outcome.files.get(CSV, "")) if outcome.returncode == 0 else []
            proof = "the --benchmark CSV has this process's row" if rows else None
            diag = judge(outcome, layers_total=item.layers_total, proof=proof)
            logs.append(f"--- process {i} of {len(outcomes)} (exit {outcome.returncode}) ---\n{outcome.log}")
            if version := _VERSION.search(outcome.log):
                info["version"] = version[1]
            row = rows[-1] if rows else None
            if row is not None:
                info["backend_library"] = row.get("Backend")
                ctx, gen = _float(row, "MaxCtx"), _float(row, "GenAmount") or GEN_TOKENS
                pp_speed, tg_speed = _float(row, "ProcessingSpeed"), _float(row, "GenerationSpeed")
                total = _float(row, "TotalTime")
                if ctx and pp_speed:
                    pp_ns.append(int((ctx - gen) / pp_speed * 1e9))
                if tg_speed:
                    tg_ns.append(int(gen / tg_speed * 1e9))
                if total is not None:  # the process's life minus the benchmark: startup and load
                    load_ns.append(max(int((outcome.wall_s - total) * 1e9), 1))
            judged.append((diag, outcome, row is not None))
        # the first process that failed decides the item; else the last one speaks for all
        diag, outcome, wrote = next((j for j in judged if j[0].status != Status.OK or not j[2]), judged[-1])
        return measurement_of(
            item,
            diag,
            outcome,
            wrote_result=wrote,
            layers_total=item.layers_total,
            samples_pp_ns=pp_ns,
            samples_tg_ns=tg_ns,
            fields={},
            n_prompt=item.n_prompt,
            n_gen=GEN_TOKENS,
            log="\n".join(logs),
            engine_info=info,
            samples_load_ns=load_ns,
        )

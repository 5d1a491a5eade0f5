"""The llama-bench engine: a build's own `llama-bench`, with options probed from its `--help`.

Options change across versions (`-fa 0|1` vs `on|off|auto`, `-ub` and `jsonl` only in newer ones,
`-v`); a version that writes no `samples_ns` gives a mean and stddev only, which compare and gate
report as "no CI without samples". A crash writes no JSON: the status comes from the signal and log.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.builds.identity import BuildIdentity, sha256_file
from bench.engines.base import FileNamer, ItemSpec, Judge, ProcessOutcome, ProcessSpec, measurement_of
from bench.engines.paths import with_library_dir
from bench.store.records import Measurement


@dataclass(frozen=True)
class Options:
    """What this llama-bench accepts, read from its --help."""

    outputs: tuple[str, ...]
    ubatch: bool
    flash_attn: str | None  # "01" (-fa 0|1), "onoff" (-fa on|off|auto) or None
    verbose: bool
    help_text: str

    @classmethod
    def probe(cls, binary: Path, env: dict[str, str]) -> Options:
        try:
            proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, env=env, timeout=30)
            text = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"cannot run {binary} --help: {exc}"
        out = re.search(r"-o, --output <([^>]+)>", text)
        fa = re.search(r"-fa, --flash-attn <([^>]+)>", text)
        return cls(
            outputs=tuple(out[1].split("|")) if out else (),
            ubatch="--ubatch-size" in text,
            flash_attn=None if fa is None else ("onoff" if "on" in fa[1] else "01"),
            verbose="--verbose" in text,
            help_text=text,
        )


class LlamaBench:
    name = "llama-bench"

    def __init__(self, build_name: str, binary: Path, env: dict[str, str], details: dict[str, Any]) -> None:
        self.build_name = build_name
        self.binary = binary
        self.env = with_library_dir(env, binary.parent)
        self.details = details
        self.options = Options.probe(binary, self.env)

    def identify(self) -> BuildIdentity:
        if not self.options.outputs:
            return BuildIdentity(
                self.build_name,
                False,
                error_log=f"{self.binary} is not a usable llama-bench:\n{self.options.help_text}",
            )
        libs = sorted(p for p in self.binary.parent.iterdir() if re.search(r"\.(so|dylib)(\.\d+)*$", p.name))
        lib_digest = hashlib.sha256()
        for lib in libs:
            lib_digest.update(lib.name.encode() + sha256_file(lib).encode())
        return BuildIdentity(
            name=self.build_name,
            ok=True,
            lib_path=str(self.binary),
            lib_sha256=sha256_file(self.binary),
            ggml_sha256=lib_digest.hexdigest() if libs else None,
            supports_gpu_offload=None,
            details={
                **self.details,
                "engine": self.name,
                "engine_key": self.name,
                "options": {
                    "outputs": list(self.options.outputs),
                    "ubatch": self.options.ubatch,
                    "flash_attn": self.options.flash_attn,
                    "verbose": self.options.verbose,
                },
            },
        )

    def argv(self, item: ItemSpec) -> list[str]:
        o = self.options
        fmt = "json" if "json" in o.outputs else o.outputs[0]
        argv = [str(self.binary), "-m", str(item.model_path), "-p", str(item.n_prompt), "-n", str(item.n_gen)]
        argv += ["-r", str(item.repetitions), "-ngl", str(99999 if item.n_gpu_layers < 0 else item.n_gpu_layers)]
        argv += ["-t", str(item.threads), "-b", str(item.n_batch), "-o", fmt]
        if o.ubatch:
            argv += ["-ub", str(item.n_ubatch)]
        if o.flash_attn is not None and item.flash_attn != "auto":
            argv += ["-fa", item.flash_attn if o.flash_attn == "onoff" else ("1" if item.flash_attn == "on" else "0")]
        if o.verbose:
            argv.append("-v")  # the load log: offload lines and buffer sizes are what the classifier reads
        return argv

    def processes(self, item: ItemSpec) -> list[Callable[[FileNamer], ProcessSpec]]:
        argv = self.argv(item)
        return [lambda _path: ProcessSpec(argv, self.env, stdout_file="bench.json", read=("bench.json",))]

    def measurement(self, item: ItemSpec, outcomes: list[ProcessOutcome], judge: Judge) -> Measurement:
        outcome = outcomes[0]
        tests = parse_output(outcome.files.get("bench.json", "")) if outcome.returncode == 0 else []
        pp = next((t for t in tests if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0), None)
        tg = next((t for t in tests if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0), None)
        wrote = bool(tests) and (pp is not None or item.n_prompt == 0) and (tg is not None or item.n_gen == 0)
        proof = f"llama-bench wrote results for {len(tests)} test(s)" if wrote else None
        diag = judge(outcome, layers_total=item.layers_total, proof=proof)
        fields: dict[str, Any] = {}
        for test, prefix in ((pp, "pp"), (tg, "tg")):
            if test is not None and "samples_ns" not in test:
                fields[f"{prefix}_ts"], fields[f"{prefix}_ts_std"] = test.get("avg_ts"), test.get("stddev_ts")
        first = tests[0] if tests else {}
        info: dict[str, Any] = {
            k: first[k]
            for k in ("build_commit", "build_number", "backends", "gpu_info", "cpu_info", "cuda", "metal", "vulkan")
            if k in first
        }
        if tests:
            info["samples"] = all("samples_ns" in t for t in tests)
        fields["model_bytes"] = first.get("model_size")
        return measurement_of(
            item,
            diag,
            outcome,
            wrote_result=wrote,
            layers_total=item.layers_total,
            samples_pp_ns=[int(x) for x in (pp or {}).get("samples_ns", [])],
            samples_tg_ns=[int(x) for x in (tg or {}).get("samples_ns", [])],
            fields=fields,
            engine_info=info,
        )


def parse_output(text: str) -> list[dict[str, Any]]:
    """llama-bench's `-o json` (an array) or `-o jsonl` (a line per test); [] when it wrote nothing usable."""
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return [t for t in data if isinstance(t, dict)] if isinstance(data, list) else []
    except json.JSONDecodeError:
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

"""One registry of what perfgate measures and one enum of how a load ended.

Config, compare, gate, templates and plots read these; nothing re-types a metric's direction or a
status name as a string of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """How one (build, model) item ended. A StrEnum: stored and compared as its plain name."""

    OK = "ok"
    METAL_INIT_FAILED = "metal_init_failed"
    SHADER_COMPILE_FAILED = "shader_compile_failed"
    OUT_OF_MEMORY = "out_of_memory"
    FILE_NOT_FOUND = "file_not_found"
    INVALID_GGUF = "invalid_gguf"
    UNSUPPORTED_ARCHITECTURE = "unsupported_architecture"
    PARTIAL_OFFLOAD = "partial_offload"
    CPU_FALLBACK = "cpu_fallback"
    CONTEXT_FAILED = "context_failed"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    SKIPPED_DOES_NOT_FIT = "skipped_does_not_fit"
    # the model did not load and the log names no known cause (kept honest, not guessed)
    LOAD_FAILED = "load_failed"
    # the log stops before the load ends and names no failure (a pasted excerpt, a process that stopped
    # writing): what it shows is reported, but neither success nor a failure can be read from it
    LOG_INCOMPLETE = "log_incomplete"
    # the build under test has no usable library (it failed to configure, compile, link or import)
    BUILD_FAILED = "build_failed"


STATUSES = tuple(s.value for s in Status)


@dataclass(frozen=True)
class Metric:
    """A gateable figure of a result."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    samples_column: str | None  # per-repetition samples (ns per test), None for a single value
    default_threshold_pct: float  # allowed change in the bad direction before the gate may fail
    per_process: bool = False  # each sample is its own process (a load): samples are seconds, not t/s
    # repeats to within a fraction of a percent (peak memory): judged on the threshold alone while too few
    # pairs for a confidence sequence (one value a side, or 2–5 process pairs on a GPU's slow sizes)
    exact: bool = False

    def worse(self, change_pct: float, threshold_pct: float) -> bool:
        """Is a change (percent) beyond the threshold in this metric's bad direction?"""
        return change_pct < threshold_pct if self.higher_is_better else change_pct > threshold_pct


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("pp_ts", "prompt t/s", "t/s", True, "samples_pp_ns", -5.0),
        Metric("tg_ts", "generation t/s", "t/s", True, "samples_tg_ns", -3.0),
        # one sample per fresh-process load (suite.load_repetitions, KoboldCPP's process per repetition)
        Metric("load_s", "load time", "s", False, "samples_load_ns", 25.0, per_process=True),
        Metric("rss_peak_bytes", "peak RSS", "bytes", False, None, 5.0, exact=True),
    )
}
METRIC_NAMES = tuple(METRICS)


def tokens_per_s(samples_ns: list[int], n_tokens: int) -> list[float]:
    return [n_tokens * 1e9 / ns for ns in samples_ns if ns > 0]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """llama-bench's avg_ts/stddev_ts: mean of per-sample t/s and their sample standard deviation."""
    if not values:
        return None, None
    import statistics  # kept out of the command line's start-up (METRIC_NAMES is read by its help)

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

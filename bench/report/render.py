"""DataFrames → text: tables for people, JSON and CSV for programs."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench.escape import json_text, markdown_text, terminal_text

if TYPE_CHECKING:
    from rich.table import Table  # the terminal's tables only: JSON, CSV and the site never import rich

FORMATS = ("table", "json", "csv", "markdown")


def _plain(value: Any) -> Any:
    if value is pd.NA:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity: an unmeasured or unbounded figure is null
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def to_json(frame: pd.DataFrame) -> str:
    return json_text(records(frame), indent=1)


def to_csv(frame: pd.DataFrame) -> str:
    flat = frame.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, list | dict)).any():
            flat[col] = flat[col].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
    return flat.to_csv(index=False)


def missing(value: Any) -> bool:
    """None, pandas' NA or a float NaN: a figure that was not measured."""
    kind = type(value)
    if kind is float:  # the common cases first: a site build asks this over a million times
        return value != value
    if kind is int or kind is str:
        return False
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def human_bytes(n: float | None) -> str:
    if missing(n):
        return "–"
    n = float(n)  # type: ignore[arg-type]
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def fmt_ts(mean: float | None, std: float | None = None) -> str:
    if mean is None or missing(mean):
        return "–"
    digits = 0 if mean >= 100 else (1 if mean >= 10 else 2)
    text = f"{mean:.{digits}f}"
    if not missing(std):
        text += f" ± {std:.{digits}f}"
    return text


def results_table(frame: pd.DataFrame, title: str) -> Table:
    from rich.table import Table

    table = Table(title=terminal_text(title))
    for col in (
        "run",
        "build",
        "model",
        "status",
        "layers",
        "backend",
        "load s",
        "pp t/s",
        "tg t/s",
        "model buf",
        "peak RSS",
    ):
        table.add_column(col, overflow="fold")
    for r in frame.itertuples():
        layers = f"{r.layers_offloaded}/{r.layers_total}" if pd.notna(r.layers_total) else "–"
        table.add_row(
            str(r.run_id),
            terminal_text(str(r.build)),
            terminal_text(str(r.model)),
            str(r.status),
            layers,
            "–" if missing(r.backend) else terminal_text(str(r.backend)),
            f"{r.load_s:.2f}" if pd.notna(r.load_s) else "–",
            fmt_ts(r.pp_ts, r.pp_ts_std),
            fmt_ts(r.tg_ts, r.tg_ts_std),
            human_bytes(r.model_buf_bytes),
            human_bytes(r.rss_peak_bytes),
        )
    return table


def frame_table(frame: pd.DataFrame, title: str) -> Table:
    from rich.table import Table

    table = Table(title=terminal_text(title))
    for col in frame.columns:
        table.add_column(terminal_text(str(col)), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*["–" if missing(v) else terminal_text(str(v)) for v in row])
    return table


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        return "–" if missing(v) else markdown_text(str(v))

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def fmt_metric(metric: str, value: float | None) -> str:
    if missing(value):
        return "–"
    if metric.endswith("_bytes"):
        return human_bytes(value)
    if metric == "load_s":
        return f"{value:.2f} s"
    return fmt_ts(value)


def compare_display(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table with human units, for terminals and markdown."""

    def ratio(r: Any) -> str:
        if r.ratio is None or math.isnan(r.ratio):
            return "–"
        ci = "" if math.isnan(r.ci_low) else f" [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        return f"{r.ratio:.3f}{ci}"

    return pd.DataFrame(
        {
            "model": table["model"],
            "metric": table["metric"],
            "baseline": [fmt_metric(m, v) for m, v in zip(table["metric"], table["baseline"], strict=True)],
            "candidate": [fmt_metric(m, v) for m, v in zip(table["metric"], table["candidate"], strict=True)],
            "ratio [95% CI]": [ratio(r) for r in table.itertuples()],
            "p": ["–" if math.isnan(p) else f"{p:.3g}" for p in table["p_value"]],
            "status (base → cand)": [
                f"{b} → {c}" for b, c in zip(table["baseline_status"], table["candidate_status"], strict=True)
            ],
        }
    )

"""The release verdict: every model that loaded before still loads ok, and every gated metric is *shown* to
be within its threshold.

Each check ends in one of three outcomes (bench.analysis.sequential.Outcome): pass — the confidence sequence of the
change lies wholly on the good side of the threshold; fail — wholly beyond it (or a model that loaded on the
baseline is not ok on the candidate); inconclusive — neither, because the samples at hand cannot tell. A
single load time is `reported`, not gated. The verdict is the worst check.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.analysis.compare import Comparison
from bench.analysis.sequential import MIN_PAIRS, Decision, Outcome, decide, first_bounded, worst
from bench.config import GateConfig
from bench.escape import json_text, markdown_text, xml_text
from bench.metrics import METRICS, Status
from bench.report.render import missing

EXIT_CODES = {Outcome.PASS: 0, Outcome.FAIL: 1, Outcome.INCONCLUSIVE: 3}
# the speeds: a gate that saw none of them has no evidence of "same performance"
THROUGHPUT = {name for name, m in METRICS.items() if m.samples_column is not None and not m.per_process}


@dataclass(frozen=True)
class Check:
    model: str
    metric: str  # a METRICS key, or "load" for the load status
    outcome: Outcome
    message: str
    ratio: float | None = None  # candidate / baseline (geometric mean of paired ratios when paired)
    change_pct: float | None = None
    threshold_pct: float | None = None
    ci_low: float | None = None  # anytime-valid 1 - alpha confidence sequence of the ratio, at this look
    ci_high: float | None = None
    n_pairs: int | None = None
    mde_pct: float | None = None  # smallest change in the bad direction these samples could have shown
    pairs_needed: int | None = None  # more process pairs to settle an inconclusive check at this noise

    @property
    def passed(self) -> bool:
        return self.outcome in (Outcome.PASS, Outcome.REPORTED)


@dataclass(frozen=True)
class Verdict:
    comparison: Comparison
    checks: list[Check]

    @property
    def outcome(self) -> Outcome:
        return worst([c.outcome for c in self.checks])

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASS

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.outcome is Outcome.FAIL]

    @property
    def inconclusive(self) -> list[Check]:
        return [c for c in self.checks if c.outcome is Outcome.INCONCLUSIVE]

    def open_models(self) -> list[str]:
        """Models with an inconclusive check that more rounds could settle (both sides measured ok)."""
        return list(dict.fromkeys(c.model for c in self.inconclusive if c.metric != "load" and c.n_pairs))


def evaluate(comparison: Comparison, gate: GateConfig | None = None, *, pairs_per_round: int | None = None) -> Verdict:
    """Judge a comparison. Thresholds are percent changes: negative for t/s, positive for costs.
    `pairs_per_round` (process pairs a round adds) turns "needs N more pairs" into rounds in the messages."""
    gate = gate or GateConfig()
    table = comparison.table
    checks: list[Check] = []
    # one pass over the table's rows, grouped by model in order of first appearance (as groupby(sort=False))
    by_model: dict[Any, list[Any]] = {}
    for row in table.itertuples():
        by_model.setdefault(row.model, []).append(row)
    for model, rows in by_model.items():
        first = rows[0]
        base_status, cand_status = first.baseline_status, first.candidate_status
        if base_status == Status.OK and cand_status != Status.OK:
            reason = first.candidate_reason
            if missing(reason) or not reason:
                reason = "not measured for the candidate"
            checks.append(
                Check(
                    str(model),
                    "load",
                    Outcome.FAIL,
                    f"loaded ok on the baseline; candidate is {cand_status}: {reason}",
                )
            )
            continue
        if base_status != Status.OK:
            checks.append(
                Check(
                    str(model),
                    "load",
                    Outcome.REPORTED,
                    f"baseline status {base_status}: nothing to hold the candidate to (candidate {cand_status})",
                )
            )
            continue
        checks.append(Check(str(model), "load", Outcome.PASS, "ok on both"))
        limits = gate.limits(str(model))
        judged = [
            _judge(str(model), str(row.metric), row, limits[str(row.metric)], gate.alpha, pairs_per_round)
            for row in rows
            if str(row.metric) in limits
        ]
        checks += judged
        # a load with no throughput measured (n_prompt = n_gen = 0, an import without samples) shows nothing
        sampled = [
            c for c in judged if METRICS[c.metric].samples_column is not None and not METRICS[c.metric].per_process
        ]
        if sampled and all(c.outcome is Outcome.REPORTED for c in sampled):
            checks.append(
                Check(
                    str(model),
                    "data",
                    Outcome.INCONCLUSIVE,
                    "no throughput was measured on either side: no data is not a pass",
                )
            )
    checks += _predicted_checks(comparison)
    return Verdict(comparison, checks)


def _predicted_checks(comparison: Comparison) -> list[Check]:
    """A load `bench metal-check` predicts to fail for the candidate and not for the baseline fails the gate,
    until a Mac measures it: a real load on a Mac then speaks instead."""
    base_pred, cand_pred = comparison.predicted
    measured = {str(r.model): r.candidate_status for r in comparison.table.itertuples()}
    checks = []
    for model, cand in cand_pred.items():
        if cand.status == Status.OK:
            continue
        base = base_pred.get(model)
        predicted = f"predicted {cand.status} by bench metal-check (run {cand.run_id}): {cand.reason}"
        if comparison.measured_on_metal and measured.get(model) not in (None, "missing"):
            message = f"{predicted}; measured {measured[model]} on this Mac: the measurement speaks"
            checks.append(Check(model, "predicted", Outcome.REPORTED, message))
        elif base is not None and base.status == cand.status:
            checks.append(Check(model, "predicted", Outcome.REPORTED, f"{predicted}; the baseline is predicted so too"))
        else:
            was = f"predicted {base.status}" if base is not None else "not predicted"
            checks.append(Check(model, "predicted", Outcome.FAIL, f"{predicted}; the baseline is {was}"))
    return checks


def _judge(model: str, metric: str, row: Any, threshold: float, alpha: float, per_round: int | None) -> Check:
    spec = METRICS[metric]
    n_base, n_cand = int(row.n_baseline), int(row.n_candidate)
    if n_base == 0 and n_cand == 0:
        return Check(model, metric, Outcome.REPORTED, "not measured on either side", threshold_pct=threshold)
    if (n_base == 0 or n_cand == 0) and spec.per_process:
        # an engine that reports no load time (llama-bench) cannot be held to one: said, not gated; the
        # throughput checks still need their evidence
        side = "candidate" if n_cand == 0 else "baseline"
        return Check(
            model,
            metric,
            Outcome.REPORTED,
            f"no {spec.label} measured on the {side} side: not gated",
            threshold_pct=threshold,
        )
    if n_base == 0 or n_cand == 0:
        side = "candidate" if n_cand == 0 else "baseline"
        return Check(
            model,
            metric,
            Outcome.INCONCLUSIVE,
            f"no {spec.label} samples on the {side} side: no data is not a pass",
            threshold_pct=threshold,
        )
    single = spec.samples_column is None or spec.per_process
    n_pairs = int(row.n_pairs)
    if (single and n_base == 1 and n_cand == 1) or (spec.exact and n_pairs < first_bounded(alpha)):
        # found on the H100: 70B's peak RSS, +0.0% over 4 process pairs, was inconclusive where one value a
        # side would have passed; an exact metric is judged on its threshold until a sequence can bound it
        return _judge_single(model, metric, row, threshold, max(n_pairs, 1))
    if single and n_pairs < MIN_PAIRS:
        # a load time per result: gated once enough loads pair up (added rounds, suite.load_repetitions)
        ratio = float(row.ratio)
        return Check(
            model,
            metric,
            Outcome.REPORTED,
            f"{(ratio - 1) * 100:+.1f}% (ratio {ratio:.3f}, {int(row.n_pairs)} loads a side): reported, "
            f"not gated below {MIN_PAIRS} process pairs",
            ratio,
            (ratio - 1) * 100,
            threshold,
        )
    d = decide(np.asarray(row.log_ratios, dtype=float), threshold, spec.higher_is_better, alpha)
    return _sequential_check(model, metric, d, threshold, alpha, per_round)


def _judge_single(model: str, metric: str, row: Any, threshold: float, n: int = 1) -> Check:
    ratio = float(row.ratio)
    change = (ratio - 1.0) * 100.0
    values = "one value a side" if n == 1 else f"{n} process pairs"
    detail = f"{change:+.1f}% (ratio {ratio:.3f}, {values}); threshold {threshold:+g}%"
    if not METRICS[metric].exact:
        return Check(
            model,
            metric,
            Outcome.REPORTED,
            f"{detail}: one value proves nothing: reported, not gated",
            ratio,
            change,
            threshold,
        )
    beyond = METRICS[metric].worse(change, threshold)
    outcome = Outcome.FAIL if beyond else Outcome.PASS
    return Check(model, metric, outcome, ("REGRESSION " if beyond else "") + detail, ratio, change, threshold)


def _pct(log_ratio: float) -> float:
    return (math.exp(log_ratio) - 1.0) * 100.0


def _sequential_check(
    model: str, metric: str, d: Decision, threshold: float, alpha: float, per_round: int | None
) -> Check:
    ev = d.evidence
    ratio, change = math.exp(ev.estimate), _pct(ev.estimate)
    level = f"{1 - alpha:.0%}"
    if math.isinf(ev.halfwidth):
        cs = f"{ev.n} process pairs: too few to bound the change"
    else:
        cs = f"{level} confidence sequence [{math.exp(ev.low):.3f}, {math.exp(ev.high):.3f}], {ev.n} pairs"
    detail = f"{change:+.1f}% ({cs}); threshold {threshold:+g}%"
    if d.mde_pct is not None:
        detail += f"; could detect {d.mde_pct:+.1f}% or worse"
    if d.outcome is Outcome.FAIL:
        message = f"REGRESSION {detail}"
    elif d.outcome is Outcome.PASS:
        message = f"{detail}: within threshold"
    else:
        message = f"inconclusive: {detail}; {_needs(d, ev.n, per_round, alpha)}"
    low = None if math.isinf(ev.low) else math.exp(ev.low)
    high = None if math.isinf(ev.high) else math.exp(ev.high)
    return Check(
        model, metric, d.outcome, message, ratio, change, threshold, low, high, ev.n, d.mde_pct, d.pairs_needed
    )


def _needs(d: Decision, n: int, per_round: int | None, alpha: float) -> str:
    ev = d.evidence
    if n < 2 or math.isnan(ev.sd):
        more_pairs = max(first_bounded(alpha) - n, 1)
        more = f"≥{math.ceil(more_pairs / per_round)} more rounds" if per_round else f"≥{more_pairs} more process pairs"
        return f"needs {more} before the change can be bounded (too few process pairs to estimate the noise)"
    noise = f"at this noise (sd {_pct(ev.sd):.1f}% per process pair)"
    if d.pairs_needed is None:
        return f"the estimate sits on the threshold: no feasible number of rounds settles it {noise}"
    gap = abs(_pct(ev.estimate) - _pct(d.bound))
    rounds = math.ceil(d.pairs_needed / per_round) if per_round else None
    more = (
        f"~{rounds} more rounds ({d.pairs_needed} process pairs)" if rounds else f"~{d.pairs_needed} more process pairs"
    )
    return f"needs {more} for ±{gap:.1f}% {noise}"


# -- reports -----------------------------------------------------------------------------------------

_MARK = {Outcome.PASS: "pass", Outcome.FAIL: "**FAIL**", Outcome.INCONCLUSIVE: "*inconclusive*", Outcome.REPORTED: "–"}


def markdown(verdict: Verdict, note: str | None = None) -> str:
    cmp = verdict.comparison
    md = markdown_text
    base, cand = md(cmp.baseline.label), md(cmp.candidate.label)
    lines = [f"## perfgate: {verdict.outcome.value.upper()} — {cand} vs {base}", ""]
    if cmp.cross_machine:
        lines += [f"> **cross-machine comparison**: {md(cmp.baseline.machine)} vs {md(cmp.candidate.machine)}", ""]
    if cmp.cross_engine:
        lines += [f"> **cross-engine comparison**: {base} through {md(cmp.engines[0])}, "
                  f"{cand} through {md(cmp.engines[1])}", ""]  # fmt: skip
    if cmp.mixed_settings:
        lines += [f"> **different suite settings**, compared on request: {md('; '.join(cmp.mixed_settings))}", ""]
    if note:
        lines += [md(note), ""]
    for title, checks in (("Failures", verdict.failures), ("Inconclusive", verdict.inconclusive)):
        if checks:
            lines += [f"### {title}", ""] + [f"- **{md(c.model)}** `{c.metric}`: {md(c.message)}" for c in checks]
            lines.append("")
    lines += ["| model | check | result | detail |", "| --- | --- | --- | --- |"]
    lines += [f"| {md(c.model)} | {c.metric} | {_MARK[c.outcome]} | {md(c.message)} |" for c in verdict.checks]
    return "\n".join(lines) + "\n"


def to_json(verdict: Verdict, extra: dict[str, Any] | None = None) -> str:
    cmp = verdict.comparison
    payload = {
        "verdict": verdict.outcome.value,
        "exit_code": verdict.exit_code,
        "baseline": cmp.baseline.label,
        "candidate": cmp.candidate.label,
        "pooled_runs": {"baseline": list(cmp.pooled_runs[0]), "candidate": list(cmp.pooled_runs[1])},
        "cross_machine": cmp.cross_machine,
        "engines": {"baseline": cmp.engines[0], "candidate": cmp.engines[1]},
        "mixed_settings": list(cmp.mixed_settings),
        "checks": [
            {k: _finite(v) for k, v in {**asdict(c), "outcome": c.outcome.value}.items()} for c in verdict.checks
        ],
        **(extra or {}),
    }
    return json_text(payload, indent=1) + "\n"


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: an unbounded or unmeasured figure is null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def junit(verdict: Verdict, path: Path) -> None:
    """Inconclusive checks are failures with type="inconclusive" (not skipped): a CI that reads only the JUnit
    file must not turn green on evidence that could not show a regression."""
    suite = ET.Element(
        "testsuite",
        name="perfgate",
        tests=str(len(verdict.checks)),
        failures=str(len(verdict.failures) + len(verdict.inconclusive)),
    )
    for c in verdict.checks:
        case = ET.SubElement(suite, "testcase", classname=xml_text(f"perfgate.{c.model}"), name=xml_text(c.metric))
        message = xml_text(c.message)
        if c.outcome is Outcome.FAIL:
            ET.SubElement(case, "failure", message=message, type="regression").text = message
        elif c.outcome is Outcome.INCONCLUSIVE:
            ET.SubElement(case, "failure", message=message, type="inconclusive").text = message
        else:
            ET.SubElement(case, "system-out").text = message
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def write_step_summary(text: str) -> Path | None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(text)
    return Path(target)

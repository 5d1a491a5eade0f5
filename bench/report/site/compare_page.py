"""Comparison pages: a pair of builds on one machine (against the baseline, or a nightly against the night
before), judged by bench.analysis's comparison and gate."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.analysis.compare import Side, build_comparison, mixed_settings_refusal
from bench.analysis.gate import Check, Verdict, evaluate
from bench.analysis.sequential import Outcome
from bench.report import render
from bench.report.site import data as site_data
from bench.report.site.common import check_outcome, data_script, json_text, plain, verdict_outcome
from bench.report.site.data import Pair
from bench.report.site.output import content_key, file_key
from bench.report.site.state import BuilderState
from bench.store.annotations import engines_label


class ComparePages(BuilderState):
    def pair_rel(self, pair: Pair) -> str:
        name = (
            file_key(
                pair.kind,
                pair.machine_fingerprint,
                pair.baseline,
                pair.candidate,
                *pair.baseline_runs,
                *pair.candidate_runs,
            )
            if pair.kind == "nightly"
            else file_key(pair.kind, pair.machine_fingerprint, pair.baseline, pair.candidate)
        )
        return f"compare/{name}.html"

    def pair_key(self, pair: Pair) -> str:
        return content_key(
            self.verdict_version,
            asdict(pair),
            self.keys_of(pair.baseline_ids),
            self.keys_of(pair.candidate_ids),
            self.gate_key,
            site_data.side_identity(self.data, pair.baseline_ids),
            site_data.side_identity(self.data, pair.candidate_ids),
        )

    def verdict(self, pair: Pair) -> Verdict:
        start = time.perf_counter()
        try:
            return self._verdict(pair)
        finally:
            self.compare_s += time.perf_counter() - start

    def _verdict(self, pair: Pair) -> Verdict:
        base = self.narrow.loc[list(pair.baseline_ids)].reset_index(drop=True)
        cand = self.narrow.loc[list(pair.candidate_ids)].reset_index(drop=True)
        host = self.hosts.get(pair.machine_fingerprint, "")
        sides = [
            Side(name, ids, runs, pair.machine_fingerprint, host)
            for name, ids, runs in (
                (pair.baseline, pair.baseline_ids, pair.baseline_runs),
                (pair.candidate, pair.candidate_ids, pair.candidate_runs),
            )
        ]
        engines = (self.engines_of(pair.baseline_ids), self.engines_of(pair.candidate_ids))
        # the comparison `bench compare` and `bench gate` build: a pair they refuse is shown, never judged
        # (nightly against nightly: ratios and tests; the bootstrap CIs are for the gate's own pairs)
        comparison = build_comparison(
            sides[0],
            sides[1],
            base,
            cand,
            self.settings_of,
            engines,
            ci=pair.kind == "baseline",
            allow_mixed_settings=True,
        )
        if comparison.mixed_settings:
            refusal = mixed_settings_refusal(sides[0], sides[1], comparison.mixed_settings)
            return Verdict(comparison, [Check("all", "settings", Outcome.INCONCLUSIVE, f"not judged: {refusal}")])
        return evaluate(comparison, self.data.gate)

    def engines_of(self, ids: tuple[int, ...]) -> str:
        """The engine(s) behind a side's results, by the rule `bench compare` reads from the store."""
        assert self.samples is not None
        rows = self.samples.loc[list(ids), ["build", "build_sha"]]
        return engines_label(
            self.engine[k] for k in zip(rows["build"].tolist(), rows["build_sha"].tolist(), strict=True)
        )

    def compare_page(self, pair: Pair, verdict: Verdict, key: str) -> dict[str, Any]:
        rel = self.pair_rel(pair)
        stem = Path(rel).stem
        table = verdict.comparison.table
        assert self.samples is not None
        side = {
            name: {r["model"]: r for r in self.samples.loc[list(ids), ["model", "status", "reason"]].to_dict("records")}
            for name, ids in (("base", pair.baseline_ids), ("cand", pair.candidate_ids))
        }
        failed: dict[str, set[str]] = {}
        for c in verdict.checks:
            if check_outcome(c) in ("fail", "inconclusive"):
                failed.setdefault(c.model, set()).add(c.metric)
        records = render.records(table.drop(columns=[c for c in ("log_ratios",) if c in table]))
        per_model: dict[str, dict[str, Any]] = {}
        for r in records:
            per_model.setdefault(r["model"], {}).setdefault(r["metric"], r)
        rows = [
            {
                "model": model,
                "metrics": metrics,
                "base": side["base"].get(model),
                "cand": side["cand"].get(model),
                "failed": failed.get(model, set()),
            }
            for model, metrics in per_model.items()
        ]
        ident_b = site_data.side_identity(self.data, pair.baseline_ids)
        ident_c = site_data.side_identity(self.data, pair.candidate_ids)
        identity = [
            {
                "field": f,
                "baseline": ident_b.get(f, "–"),
                "candidate": ident_c.get(f, "–"),
                "differs": ident_b.get(f) != ident_c.get(f),
            }
            for f in dict.fromkeys([*ident_b, *ident_c])
        ]
        payload = {
            "kind": pair.kind,
            "machine": pair.machine_fingerprint,
            "baseline": {"build": pair.baseline, "result_ids": pair.baseline_ids, "run_ids": pair.baseline_runs},
            "candidate": {"build": pair.candidate, "result_ids": pair.candidate_ids, "run_ids": pair.candidate_runs},
            "verdict": verdict_outcome(verdict),
            "rows": records,
            "checks": [{**plain(c), "outcome": check_outcome(c)} for c in verdict.checks],
            "identity": identity,
        }
        text = json_text(payload)
        self.out.write(f"data/{stem}.json", text, key)
        # the chart's copy names its chart first: the same text, encoded once ({"chart": "compare", **payload})
        self.out.write(f"data/{stem}.js", data_script(f'{{"chart":"compare",{text[1:]}'), key)
        title = (
            f"perfgate — {pair.candidate_label} vs baseline {pair.baseline_label}"
            if pair.kind == "baseline"
            else f"perfgate — nightly {pair.candidate_label} vs the previous {pair.baseline_label}"
        )
        self.render(
            rel,
            "compare.html.j2",
            key,
            pair=pair,
            verdict=verdict,
            outcome=verdict_outcome(verdict),
            check_outcome=check_outcome,
            rows=rows,
            identity=identity,
            host=self.hosts.get(pair.machine_fingerprint, ""),
            title=title,
            data=f"data/{stem}.json",
            scripts=["plotly.min.js", f"data/{stem}.js", "site.js"],
        )
        return payload

    def old_payload(self, pair: Pair, key: str) -> dict[str, Any] | None:
        """The comparison's JSON from the previous site when its inputs did not change (the overview reads it)."""
        rel = self.pair_rel(pair)
        stem = Path(rel).stem
        files = (rel, f"data/{stem}.json", f"data/{stem}.js")
        if not all(self.out.unchanged(r, key) for r in files):
            return None
        try:
            found = json.loads((self.out.stage / f"data/{stem}.json").read_text())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

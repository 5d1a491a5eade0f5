"""Run pages: every result of one run, its load matrix, builds and machine."""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from markupsafe import Markup, escape

from bench.escape import visible_lines, visible_value
from bench.report import render
from bench.report.site import data as site_data
from bench.report.site.output import content_key
from bench.report.site.state import BuilderState
from bench.store.predictions import PREDICTED_SOURCE
from bench.store.queries import RESULT_COLUMNS, attach_logs, with_samples


class RunPages(BuilderState):
    def run_key(self, run_id: int, result_keys: str, links: dict[str, str]) -> str:
        run = self.run_rows[run_id]
        return content_key(
            self.version,
            run_id,
            str(run["status"]),
            str(run["finished_at"]),
            run["settings"],
            result_keys,
            self.run_bandwidth.get(run_id),
            links,
        )

    def run_results(self, run_ids: list[int]) -> pd.DataFrame:
        """Every result of those runs as their run pages show it (samples, load log, roofline), ordered by run
        and result: the rows the site data hold (a worker's inheritance), their samples, memory and logs read for
        these runs."""
        mine = site_data.details(self.data, run_ids)
        frame = attach_logs(self.session, with_samples(self.session, mine, run_ids))
        frame["tg_roofline_pct"] = mine["tg_roofline_pct"].to_numpy()
        return frame.sort_values(["run_id", "result_id"], kind="stable").reset_index(drop=True)

    def builds_shown(self, names: frozenset[str]) -> list[dict[str, Any]]:
        if names not in self.builds_of:
            found = self.data.builds
            self.builds_of[names] = render.records(found[found["name"].isin(names)] if len(found) else found)
        return self.builds_of[names]

    def run_pages(self, pages: Sequence[RunPage]) -> None:
        """The pages of a batch of runs: their results read in one query, and each value of their rows taken
        out of the frame and formatted once for the batch (per-page column reads cost more than the markup)."""
        frame = self.run_results([p.run_id for p in pages])
        shown = {**{c: frame[c].tolist() for c in _RUN_ROW if c in frame.columns}, **display_columns(frame)}
        for c in _PRINTED:  # names, statuses and figures repeat: each distinct one escaped once for the batch
            shown[c] = _h_each(shown[c])
        rows = [result_rows(_RunRow(*t)) for t in zip(*(shown[c] for c in _RUN_ROW), strict=True)]
        cells = matrix_cells(frame)
        exported = frame[[*RESULT_COLUMNS, "log", "tg_roofline_pct"]]
        bounds: dict[int, list[int]] = {}
        for i, run in enumerate(frame["run_id"].tolist()):
            bounds.setdefault(int(run), [i, i])[1] = i + 1
        builds = frame["build"].tolist()
        for p in pages:  # a page is written for a run the site data hold results of: it has rows here
            a, b = bounds[p.run_id]
            # a missing roofline (NaN) is written as null
            text = exported.iloc[a:b].to_json(orient="records", date_format="iso")
            self.run_page(p, builds[a:b], Markup("".join(rows[a:b])), matrix(cells[a:b]), text)

    def run_page(self, page: RunPage, builds: list[str], rows: Markup, load_matrix: Markup, exported: str) -> None:
        run_id = page.run_id
        run = self.runs_by_id.iloc[self.runs_by_id.index.get_loc(run_id)]
        machine = self.machine_series[run["machine_fingerprint"]]
        self.out.write(f"data/run-{run_id}.json", exported, page.key)
        self.render(
            f"run/{run_id}.html",
            "run.html.j2",
            page.key,
            run=run,
            run_id=run_id,
            results=rows,
            builds=self.builds_shown(frozenset(builds)),
            machine=machine,
            load_matrix=load_matrix,
            predicted=run["source"] == PREDICTED_SOURCE,
            links=page.links,
            title=f"perfgate — run {run_id} ({run['machine']}, {run['started_at']})",
            data=f"data/run-{run_id}.json",
        )


@dataclass(frozen=True)
class RunPage:
    """A run page to write: its run, its key and its links to the nightly comparisons of its builds."""

    run_id: int
    key: str
    links: dict[str, str]


def matrix_cells(res: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Each result's (build, model, its cell of the load matrix), in the frame's order: statuses, reasons and
    offloads repeat, so each distinct cell is made once (every value through _h, as result_rows)."""
    made: dict[tuple[Any, Any, Any], str] = {}
    sources = res["source"].tolist() if "source" in res else [None] * len(res)
    out = []
    for build, model, status, reason, done, total, source in zip(
        res["build"].tolist(),
        res["model"].tolist(),
        res["status"].tolist(),
        res["reason"].tolist(),
        res["layers_offloaded"].tolist(),
        res["layers_total"].tolist(),
        sources,
        strict=True,
    ):
        # `bench metal-check --record`: a status predicted from the build's tree and recipe, not loaded
        offload = "predicted" if source == PREDICTED_SOURCE else None if render.missing(total) else f"{done}/{total}"
        # a missing reason is None or NaN: each NaN is its own key, so both are looked up as None
        what = (status, None if render.missing(reason) else reason, offload)
        cell = made.get(what)
        if cell is None:
            st = _h(status)
            cell = made[what] = (
                f'<td class="cell st-{st}" title="{"" if what[1] is None else _h(reason)}" data-status="{st}">'
                f'<span class="status">{st}</span>'
                + (f'<span class="offload">{_h(offload)}</span>' if offload else "")
                + "</td>"
            )
        out.append((build, model, cell))
    return out


def matrix(cells: list[tuple[str, str, str]]) -> Markup:
    """Builds × models of a set of results' cells (matrix_cells; the newest result of a cell wins), as the run
    page's table.

    Markup made here: the template's per-cell lookups cost 2 ms a page."""
    builds = list(dict.fromkeys(b for b, _, _ in cells))
    models = list(dict.fromkeys(m for _, m, _ in cells))
    by = {(b, m): cell for b, m, cell in cells}
    head = "".join(f"<th>{_h(m)}</th>" for m in models)
    body = "".join(f"<tr><th>{_h(b)}</th>{''.join(by.get((b, m), _NO_CELL) for m in models)}</tr>\n" for b in builds)
    return Markup(
        f'<div class="matrix-scroll"><table class="matrix">\n<thead><tr><th>build \\ model</th>{head}</tr></thead>\n'
        f"<tbody>\n{body}</tbody>\n</table></div>\n"
    )


_NO_CELL = '<td class="cell st-none">–</td>'


# what a run page's rows show: plain values, formatted once for all runs being written
_RUN_ROW = [
    "build",
    "model",
    "file_txt",
    "status",
    "reason",
    "layers_txt",
    "backend",
    "load_txt",
    "pp_txt",
    "tg_txt",
    "tg_roofline_pct",
    "buffers_txt",
    "rss_txt",
    "gpu_txt",
    "exit_txt",
    "n_prompt",
    "n_gen",
    "samples_pp_ns",
    "samples_tg_ns",
    "log",
]


def display_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    def col(name: str) -> list[Any]:
        return frame[name].tolist()

    # sizes repeat across runs (one model file, its buffers): each distinct value is formatted once
    human: dict[Any, str] = {}

    def size(value: Any) -> str:
        try:
            return human[value]
        except KeyError:
            text = human[value] = render.human_bytes(value)
            return text
        except TypeError:  # unhashable
            return render.human_bytes(value)

    return {
        "layers_txt": [
            ("–" if render.missing(t) else f"{o}/{t}")
            for o, t in zip(col("layers_offloaded"), col("layers_total"), strict=True)
        ],
        "pp_txt": [render.fmt_ts(m, s) for m, s in zip(col("pp_ts"), col("pp_ts_std"), strict=True)],
        "tg_txt": [render.fmt_ts(m, s) for m, s in zip(col("tg_ts"), col("tg_ts_std"), strict=True)],
        "buffers_txt": [
            " / ".join(size(v) for v in vs)
            for vs in zip(col("model_buf_bytes"), col("kv_bytes"), col("compute_bytes"), strict=True)
        ],
        "rss_txt": [size(v) for v in col("rss_peak_bytes")],
        "gpu_txt": [
            f"{size(u)} / {size(b)}" for u, b in zip(col("gpu_used_bytes"), col("device_budget_bytes"), strict=True)
        ],
        "file_txt": [size(v) for v in col("model_bytes")],
        "load_txt": ["–" if render.missing(v) else f"{v:.3f}" for v in col("load_s")],
        "exit_txt": [
            " ".join(str(x) for x in (e, g) if not render.missing(x))
            for e, g in zip(col("exit_code"), col("signal"), strict=True)
        ],
    }


_RunRow = collections.namedtuple("_RunRow", _RUN_ROW)  # type: ignore[misc]
# the fields of a _RunRow that result_rows prints as they come: escaped (by _h_each) before it is made
_PRINTED = (
    *("build", "model", "file_txt", "status", "layers_txt", "load_txt", "pp_txt", "tg_txt"),
    *("buffers_txt", "rss_txt", "gpu_txt", "exit_txt", "n_prompt", "n_gen"),
)


def _h(value: Any) -> str:
    """As the site's templates print a value: control characters shown (visible_value), then autoescaped (a
    number's text needs neither)."""
    kind = type(value)
    if kind is int or kind is float:
        return str(value)
    if kind is str and len(value) <= _SHORT_TEXT:
        return _h_short(value)
    return _escaped_text(value)


def _escaped_text(value: Any) -> str:
    return str(escape(visible_value(value)))


# names, statuses, sizes and reasons repeat across 100,000 rows: each distinct short text is escaped once
_SHORT_TEXT = 200
_h_short = functools.lru_cache(maxsize=1 << 16)(_escaped_text)


def _h_each(values: list[Any]) -> list[str]:
    """_h of each value, computed once per distinct value (a dictionary lookup per row, not a call)."""
    try:
        # a NaN equals nothing, but each is its own key and is found by identity
        done = {v: _h(v) for v in set(values)}
        return [done[v] for v in values]
    except TypeError:  # an unhashable value
        return [_h(v) for v in values]


def _values(values: list[Any]) -> str:
    """A list of values as _h prints each, comma-separated: a sample list is all ints, whose text needs no escape
    (two million samples in a full build; one type check per list, in C)."""
    if set(map(type, values)) <= {int}:
        return ", ".join(map(str, values))
    return ", ".join(map(_h, values))


def result_rows(r: Any) -> Markup:
    """A result's two rows of the run page's results table (its figures; its samples and load log folded).

    Markup made here rather than in run.html.j2: 1,000 run pages of 100 results are 100,000 rows of 35 values
    each, and the template's per-value lookups cost more than writing the site (10 s of a full build). Every
    value goes through _h, the template environment's own finalize and escape: the fields of _PRINTED come
    escaped, the rest are escaped here."""
    roof = r.tg_roofline_pct
    beyond = not render.missing(roof) and roof > 100
    status = r.status
    # pandas' string columns hold a missing reason as NaN; a log line's own line end is not part of it
    reason = "" if render.missing(r.reason) else _h(str(r.reason).rstrip("\r\n"))
    backend = "" if render.missing(r.backend) else _h(r.backend)
    pct = "–" if render.missing(roof) else f"{roof:.0f}%"
    title = ' title="above the memory-bandwidth roofline: a measurement error"' if beyond else ""
    return Markup(
        f'<tr class="st-border-{status}">\n'
        f"  <td>{r.build}</td><td>{r.model}<br><small>{r.file_txt}</small></td>\n"
        f'  <td><span class="st-{status}">{status}</span><br><small class="reason">{reason}</small></td>\n'
        f"  <td>{r.layers_txt} {backend}</td><td>{r.load_txt}</td><td>{r.pp_txt}</td>"
        f"<td>{r.tg_txt}</td>\n"
        f'  <td class="roofline{" impossible" if beyond else ""}"'
        f"{title}>"
        f"{_h(pct)}{' ⚠ measurement error' if beyond else ''}</td>\n"
        f"  <td>{r.buffers_txt}</td><td>{r.rss_txt}</td><td>{r.gpu_txt}</td><td>{r.exit_txt}</td>\n"
        "</tr>\n"
        f'<tr class="detail"><td colspan="12"><details><summary>samples and load log ({len(r.log)} characters)'
        "</summary>\n"
        f"  <p><small>pp{r.n_prompt} ns: {_values(r.samples_pp_ns)}<br>"
        f"tg{r.n_gen} ns: {_values(r.samples_tg_ns)}</small></p>\n"
        f'  <pre class="log">{escape(visible_lines(r.log))}</pre></details></td></tr>\n'
    )

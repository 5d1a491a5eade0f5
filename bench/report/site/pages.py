"""Pages: site data → HTML (Jinja2, autoescaped) and the JSON the charts read, written incrementally.

Every page has a key: a hash of everything it shows (its results' ids and finish times, the gate settings,
the templates and this code). A page whose key is unchanged is linked from the previous site, not written
again, so adding one run rewrites the overview, that run's page, its comparisons and the histories it
extends. Charts are drawn in the browser by plotly.js, shipped in the plotly Python package and copied into
the site; their data are JSON files, wrapped as scripts that push them onto `window.perfgateData`: browsers
do not let a page fetch() files from file://, and a script file of the site's own is what a strict CSP allows.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bench.analysis.compare import ROW_COLUMNS
from bench.analysis.gate import Verdict
from bench.config import DashboardConfig, GateConfig
from bench.heap import frozen
from bench.report.site import data as site_data
from bench.report.site.common import STATIC, TEMPLATES, code_version, environment
from bench.report.site.compare_page import ComparePages
from bench.report.site.data import Pair, SiteData
from bench.report.site.history_page import HistoryBlock, HistoryPages
from bench.report.site.output import SiteOutput
from bench.report.site.overview import history_index, overview
from bench.report.site.run_page import RunPage, RunPages
from bench.store.annotations import engine_of
from bench.store.db import make_engine
from bench.store.queries import results_frame, with_samples
from bench.store.standing import standing


@dataclass(frozen=True)
class SiteReport:
    out: Path
    pages: int  # HTML pages in the site
    rows_read: int  # results read whole: every one for a new site, those of the pages written for an update
    written: int  # files written by this build (the rest were unchanged and kept)
    bytes_total: int
    seconds: float
    compare_s: float = 0.0  # of all processes' time, how much went to bench.analysis.compare and bench.analysis.gate


class Builder(ComparePages, RunPages, HistoryPages):
    """Writes the site: one mixin per kind of page (compare_page, run_page, history_page) over shared state."""

    def __init__(self, session: Session, data: SiteData, out: SiteOutput) -> None:
        self.session, self.data, self.out = session, data, out
        self.env = environment()
        self.version = code_version("metrics.py")
        # comparison pages also show what bench.analysis.compare and bench.analysis.gate computed
        self.verdict_version = code_version("metrics.py", "analysis/compare.py", "analysis/gate.py")
        res = data.results
        # what makes a result's page content change (plain str(): pandas' astype(str) keeps missing values missing)
        rkeys = [
            f"{i}:{f}:{st}:{n}"
            for i, f, st, n in zip(
                res["result_id"].tolist(),
                res["finished_at"].tolist(),
                res["status"].tolist(),
                res["repetitions"].tolist(),
                strict=True,
            )
        ]
        self.rkey = dict(zip(res["result_id"].tolist(), rkeys, strict=True))
        self.rkey_col = pd.Series(rkeys, index=res.index, dtype=object)
        self.standing = standing(res)
        self.gate_key = data.gate.model_dump(mode="json")
        self.hosts = dict(zip(data.machines["fingerprint"], data.machines["hostname"], strict=True))
        self.settings_of = {int(r): st for r, st in zip(data.runs["run_id"], data.runs["settings"], strict=True)}
        self.engine = {
            (str(n), str(sha)): engine_of(d)
            for n, sha, d in zip(data.builds["name"], data.builds["identity_sha"], data.builds["details"], strict=True)
        }
        self.samples: pd.DataFrame | None = None
        self.narrow = pd.DataFrame()
        self.compare_s = 0.0
        self.run_date = {int(r): str(d)[:16] for r, d in zip(data.runs["run_id"], data.runs["started_at"], strict=True)}
        self.run_bandwidth = res.groupby("run_id")["bandwidth_gbs"].max().fillna(0).to_dict()
        self.run_rows = {int(r): row for r, row in zip(data.runs["run_id"], data.runs.to_dict("records"), strict=True)}
        self.verdicts: dict[str, Verdict] = {}
        self.runs_by_id = data.runs.set_index("run_id", drop=False)
        by_fp = data.machines.drop_duplicates("fingerprint").set_index("fingerprint", drop=False)
        self.machine_series = {fp: by_fp.iloc[i] for i, fp in enumerate(by_fp.index)}
        self.builds_of: dict[frozenset[str], list[dict[str, Any]]] = {}
        self.history_rows: dict[tuple[str, str], pd.DataFrame] = {}

    def __getstate__(self) -> dict[str, Any]:
        """What a spawned worker receives (pickled once for all of them): everything but the connection and the
        template environment, which it makes anew; the store's URL, so that it connects on its own."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("session", "env")}
        engine = self.session.get_bind()
        assert isinstance(engine, Engine)
        state["db_url"] = engine.url.render_as_string(hide_password=False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        url = state.pop("db_url")
        self.__dict__.update(state)
        self.env = environment()
        self.session = Session(bind=make_engine(url, create=False))

    def load_samples(self, result_ids: set[int], run_ids: set[int]) -> None:
        """Samples of the results some comparison needs (in `run_ids`; all at once when that is most of the
        store)."""
        if not result_ids:
            self.samples = results_frame(self.session, []).set_index("result_id", drop=False)
            self.narrow = self.samples
            return
        rows = site_data.details(self.data, run_ids)
        mine = rows[rows["result_id"].isin(result_ids)]
        # the results are already read (site data), only their samples and memory are not: those of their runs,
        # or of the whole store when they are many (site_data.runs_to_read)
        frame = with_samples(self.session, mine, site_data.runs_to_read(run_ids))
        self.samples = frame.set_index("result_id", drop=False)
        # a comparison reads a few columns of each row (compare.ROW_COLUMNS): copying a pair's whole rows cost more
        # than comparing them
        self.narrow = self.samples[[c for c in ROW_COLUMNS if c in self.samples.columns]]


# --- the build, in parallel where pages are independent ---------------------------------------------------


@dataclass(frozen=True)
class ComparePage:
    pair: Pair
    key: str

    def write(self, b: Builder) -> tuple[str, str, dict[str, Any]]:
        """(its path, its kind, its JSON): the overview reads the baseline comparisons' JSON."""
        return b.pair_rel(self.pair), self.pair.kind, b.compare_page(self.pair, b.verdict(self.pair), self.key)


@dataclass(frozen=True)
class RunPageBatch:
    """Run pages written by one worker, which reads their samples, memory and logs itself (their rows are the
    site data's): the reading is shared out like the writing (a million samples read by the parent alone were a
    fifth of a full build)."""

    pages: tuple[RunPage, ...]

    def write(self, b: Builder) -> None:
        b.run_pages(self.pages)


@dataclass(frozen=True)
class HistoryPage:
    machine: str
    model: str
    blocks: tuple[HistoryBlock, ...]  # its point blocks, in order (those whose key changed are written)

    def write(self, b: Builder) -> dict[str, Any]:
        """The history index's entry."""
        return b.history_page(self.machine, self.model, b.history_rows[(self.machine, self.model)], self.blocks)


Page = ComparePage | RunPageBatch | HistoryPage


@dataclass(frozen=True)
class Written:
    """What one page's writing gave back to the parent: its result, the files it wrote and the time it judged."""

    page: Page
    result: Any
    pages: dict[str, str]
    written: int
    compare_s: float


def _write(b: Builder, page: Page) -> Written:
    before, written, compare_s = dict(b.out.pages), b.out.written, b.compare_s
    result = page.write(b)
    new = {k: v for k, v in b.out.pages.items() if before.get(k) != v}
    return Written(page, result, new, b.out.written - written, b.compare_s - compare_s)


class _Forked:
    """A worker's builder: inherited from the parent by fork (the frames are shared, never pickled), or, where
    fork is unsafe (macOS) or missing, unpickled from one copy the parent made; a work item carries only what
    names its page."""

    builder: Builder | None = None

    @classmethod
    def adopt(cls, builder: Builder) -> None:
        builder.reconnect()
        cls.builder = builder

    @classmethod
    def adopt_pickled(cls, state: bytes) -> None:
        cls.builder = pickle.loads(state)  # the parent's own pickle, handed over by multiprocessing

    @classmethod
    def write(cls, page: Page) -> Written:
        assert cls.builder is not None
        return _write(cls.builder, page)


def _workers() -> int:
    return min(os.cpu_count() or 1, 8)


def _start_method() -> str | None:
    """How workers start: fork where it is safe (its workers inherit the frames); spawn on macOS, whose system
    frameworks make fork unsafe, and wherever fork is missing; none: one process writes the site."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and sys.platform != "darwin":
        return "fork"
    return "spawn" if "spawn" in methods else None


START_METHOD = _start_method()


def _in_parallel(builder: Builder, work: list[Page]) -> list[Written]:
    """Each page's outcome; files written by the workers are added to the parent's count and manifest."""
    workers = _workers()
    if workers < 2 or len(work) < 8 or START_METHOD is None:
        return [_write(builder, page) for page in work]
    initializer: Callable[..., None]
    initargs: tuple[Any, ...]
    if START_METHOD == "fork":  # the initializer's argument reaches each worker by inheritance, not by pickling
        initializer, initargs = _Forked.adopt, (builder,)
    else:  # one pickle for all workers (multiprocessing would pickle the builder once per worker)
        initializer, initargs = _Forked.adopt_pickled, (pickle.dumps(builder, pickle.HIGHEST_PROTOCOL),)
    with mp.get_context(START_METHOD).Pool(workers, initializer=initializer, initargs=initargs) as pool:
        # the comparisons and histories come first and cost the most: one at a time, so no worker gets several
        first = [page for page in work if not isinstance(page, RunPageBatch)]
        rest = work[len(first) :]
        pending = [pool.map_async(_Forked.write, items, chunksize=1) for items in (first, rest) if items]
        outcomes = [outcome for p in pending for outcome in p.get()]
    for o in outcomes:
        builder.out.pages.update(o.pages)
        builder.out.written += o.written
        builder.compare_s += o.compare_s
    return outcomes


@frozen()  # a thousand pages of objects beside the imported libraries' (bench.heap); workers inherit it
def build(
    session: Session,
    out_dir: Path,
    gate: GateConfig,
    settings: DashboardConfig,
) -> SiteReport:
    start = time.perf_counter()
    out = SiteOutput(out_dir)
    try:
        # a site brought up to date reads of every result what says which pages changed, and whole rows only
        # for the pages it writes; a new one reads whole rows at once
        data = site_data.load(session, settings, gate, keys_only=out.old is not None)
        builder = Builder(session, data, out)
        written = _build(builder)
        path = out.commit()
        compare_s = builder.compare_s
    except BaseException:
        out.abort()
        raise
    pages = sum(1 for rel in out.pages if rel.endswith(".html"))
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return SiteReport(path, pages, data.rows_read, written, size, time.perf_counter() - start, compare_s)


def _plotly_js() -> Path:
    """plotly.js as the plotly package ships it, found without importing the package (30 ms of every build)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("plotly is not installed: the dashboard's charts need its plotly.min.js")
    return Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"


def _build(b: Builder) -> int:
    data, out = b.data, b.out
    for name in STATIC:
        out.copy(name, TEMPLATES / name)
    out.copy("plotly.min.js", _plotly_js())
    res = data.results
    if not len(res):
        b.render("index.html", "overview.html.j2", "", machines=[], title="perfgate — no results yet", data=None)
        return out.written
    # which comparison pages, and which of them changed
    base_pairs = site_data.baseline_pairs(data, b.standing)
    night_pairs = site_data.nightly_pairs(data)
    keyed = [(p, b.pair_key(p)) for p in [*base_pairs, *night_pairs]]
    todo = []
    overview_of: dict[str, dict[str, Any]] = {}
    for pair, key in keyed:
        kept = b.old_payload(pair, key)
        if kept is None:
            todo.append((pair, key))
        elif pair.kind == "baseline":
            overview_of[b.pair_rel(pair)] = kept
    # runs whose page changed
    # result ids per run, from one pass over two columns (a groupby of 1,000 frames costs half a second)
    by_run: dict[int, list[int]] = {}
    for r, i in sorted(zip(res["run_id"].tolist(), res["result_id"].tolist(), strict=True)):
        by_run.setdefault(int(r), []).append(int(i))
    per_run = res[["run_id"]].assign(rkey=b.rkey_col).groupby("run_id")["rkey"].agg("|".join)
    # each run page links to its nightly comparisons, which come and go with the window of newest runs: the
    # links are part of what the page shows, so of its key (else a kept page links to a comparison gone)
    nightly_rel = {(p.machine_fingerprint, p.candidate_runs[0], p.candidate): b.pair_rel(p) for p in night_pairs}
    fp_of = dict(zip(res["run_id"].tolist(), res["machine_fingerprint"].tolist(), strict=True))
    builds_in = res.groupby("run_id")["build"].unique()
    links = {
        r: {str(bn): nightly_rel[(fp_of[r], r, bn)] for bn in builds_in[r] if (fp_of[r], r, bn) in nightly_rel}
        for r in by_run
    }
    run_keys = {int(r): b.run_key(int(r), keys, links[int(r)]) for r, keys in per_run.items()}
    run_todo = [
        r
        for r in by_run
        if not (out.unchanged(f"run/{r}.html", run_keys[r]) and out.unchanged(f"data/run-{r}.json", run_keys[r]))
    ]
    # forked workers read the frames from the builder they inherit: a work item carries keys, not pickled frames
    b.history_rows = {(str(fp), str(m)): g for (fp, m), g in res.groupby(["machine_fingerprint", "model"], sort=False)}
    histories = [HistoryPage(fp, m, b.history_blocks(fp, m, rows)) for (fp, m), rows in b.history_rows.items()]
    # the whole rows of the results the pages being written show
    pair_runs = {r for p, _ in todo for r in (*p.baseline_runs, *p.candidate_runs)}
    block_runs = {r for h in histories for block in h.blocks if block.runs is not None for r in block.runs}
    site_data.read_details(b.session, data, {*run_todo, *pair_runs, *block_runs, *site_data.overview_runs(data)})
    # the comparisons' samples; run pages read their own (RunPageBatch)
    b.load_samples({i for p, _ in todo for i in (*p.baseline_ids, *p.candidate_ids)}, pair_runs)
    # the comparisons first: they cost the most, and a pool that starts with them ends evenly
    work: list[Page] = [ComparePage(p, k) for p, k in todo]
    # then the histories (each a long series): handed out one at a time like the comparisons, so that the many
    # small run pages after them even out the workers' ends
    work += histories
    run_pages = [RunPage(r, run_keys[r], links[r]) for r in run_todo]
    # a few batches a worker: each reads its runs in one query, and the batches even out the workers' ends
    size = max(1, -(-len(run_pages) // (_workers() * 4)))
    work += [RunPageBatch(tuple(run_pages[i : i + size])) for i in range(0, len(run_pages), size)]
    outcomes = _in_parallel(b, work)
    entries = [o.result for o in outcomes if isinstance(o.page, HistoryPage)]
    for o in outcomes:
        if isinstance(o.page, ComparePage) and o.page.pair.kind == "baseline":
            rel, _kind, payload = o.result
            overview_of[rel] = payload
    history_index(b, entries)
    overview(b, base_pairs, overview_of, entries)
    return out.written

"""The static site, built from a real store and opened in real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import select

from bench.config import DashboardConfig, load_config
from bench.errors import ConfigError
from bench.escape import visible
from bench.metrics import Status
from bench.report.dashboard import build_site
from bench.report.site import data as site_data
from bench.report.site import history_page
from bench.report.site.output import MARKER
from bench.runner import run_matrix
from bench.store.db import open_store
from bench.store.models import Build, ChangePoint, Machine, Result
from bench.store.queries import results_frame
from bench.store.standing import standing
from tests.conftest import HOSTILE_NAMES, PYTHON, REPO, bench_cli

XSS = "<script>alert(1)</script>"
XSS_BUILD = "<img src=x onerror=alert(2)>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# screenshots for review: PERFGATE_SCREENSHOTS=DIR keeps them, else they go to the test's tmp_path
SHOTS = os.environ.get("PERFGATE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    folder = Path(SHOTS) if SHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def _store_change_point(db_url: str) -> None:
    """One shift in tg_ts of tiny-q4's baseline line between run 1 and run 2: the test's own data, written
    through the store as the change-point detector writes it (bench.store.changes reads it back)."""
    with open_store(db_url) as store, store.session() as session:
        res = results_frame(session, with_samples=False)
        line = res[(res["model"] == "tiny-q4") & (res["build"] == "baseline")].sort_values("run_id")
        machine = session.query(Machine).filter_by(fingerprint=line["machine_fingerprint"].iloc[0]).one()
        build = session.query(Build).filter_by(name="baseline").one()
        session.add(
            ChangePoint(
                machine_id=machine.id,
                build_name="baseline",
                model_name="tiny-q4",
                metric="tg_ts",
                kind="shift",
                run_before_id=int(line["run_id"].iloc[0]),
                run_after_id=int(line["run_id"].iloc[-1]),
                build_before_id=build.id,
                build_after_id=build.id,
                value_before=100.0,
                value_after=87.5,
                shift_pct=-12.5,
                status_before="ok",
                status_after="ok",
            )
        )
        session.commit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """Two nightly runs of three builds (one without a usable library) over a normal and a hostile model name."""
    tmp = tmp_path_factory.mktemp("site")
    empty_lib = tmp / "empty-lib"
    empty_lib.mkdir()
    doc = {
        "models": [
            {"name": "tiny-q4", "path": str(models_dir / "tiny-Q4_0.gguf")},
            {"name": XSS, "path": str(models_dir / "tiny-F16.gguf")},
        ],
        "builds": [
            {"name": "baseline", "python": PYTHON},
            {"name": XSS_BUILD, "python": PYTHON},
            {"name": "no-lib", "python": PYTHON, "lib": str(empty_lib)},
        ],
        "suite": {"n_prompt": 32, "n_gen": 8, "repetitions": 2, "threads": 1},
        "dashboard": {"baseline": "baseline", "bandwidth_gbs": {"nonexistent-host": 1.0}},
    }
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(path)
    db_url = f"sqlite:///{tmp / 'perfgate.sqlite'}"
    out = tmp / "out"
    with open_store(db_url) as store:
        run_matrix(store, cfg, show_progress=False)
        run_matrix(store, cfg, show_progress=False)
    _store_change_point(db_url)
    with open_store(db_url) as store:
        build_site(store, out, cfg.gate_settings(), cfg.dashboard)
    return out


def _open(browser: Browser, path: Path) -> tuple[Page, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, dialogs


def _history_page(browser: Browser, site: Path, model: str) -> tuple[Page, list[str], list[str]]:
    index, _, _ = _open(browser, site / "history.html")
    href = index.locator("table.histories a", has_text=model).first.get_attribute("href")
    assert href is not None
    page, errors, dialogs = _open(browser, site / href)
    page.wait_for_selector("#chart-tg_ts[data-ready='1']")
    return page, errors, dialogs


def _point_xy(page: Page, metric: str, trace_meta: str, build: str, j: int = 0) -> tuple[float, float]:
    """Page coordinates of point j of the trace (ok points or failed loads) of `build`, from plotly's own axes."""
    return page.evaluate(
        """([metric, meta, build, j]) => {
            const gd = document.getElementById('chart-' + metric);
            const i = gd._fullData.findIndex(t => t.meta === meta && t.name.startsWith(build));
            const t = gd._fullData[i], L = gd._fullLayout, box = gd.getBoundingClientRect();
            return [box.left + L._size.l + L.xaxis.d2p(t.x[j]), box.top + L._size.t + L.yaxis.d2p(t.y[j])];
        }""",
        [metric, trace_meta, build, j],
    )


def test_overview_shows_verdicts_ratios_and_escapes_names(browser: Browser, site: Path, tmp_path: Path) -> None:
    page, errors, dialogs = _open(browser, site / "index.html")
    _shot(page, tmp_path, "overview.png")
    assert errors == [] and dialogs == []
    table = page.locator("table.overview")
    # the newest run's builds against the configured baseline: no-lib fails on both models
    failed = table.locator("td.cell[data-status='build_failed']")
    assert failed.count() == 2
    assert failed.first.get_attribute("data-verdict") == "fail"
    assert re.search(r"pp \d+\.\d{3} · tg \d+\.\d{3}", table.inner_text())
    assert page.locator("table.overview tbody th a").all_inner_texts().count(XSS) == 1  # shown as text, not run
    assert XSS_BUILD in table.locator("thead").inner_text()
    assert page.locator("script").count() == 0
    assert page.locator(".badge.v-fail").count() >= 1
    # since the previous run: the marked shift is new; no-lib failed then too, so it is no new failure
    assert page.locator("li.new-change").count() == 1 and page.locator("li.new-failure").count() == 0


def _history_line(site: Path, stem: str, metric: str, build: str) -> dict[str, Any]:
    """One build's points of a history, its blocks joined in the order its head names them (as site.js does)."""
    head = json.loads((site / "data" / f"history-{stem}.json").read_text())
    line: dict[str, Any] = {"x": [], "run": [], "y": [], "status": []}
    for name in head["blocks"]:
        for part in json.loads((site / "data" / f"{name}.json").read_text())["lines"]:
            if part["build"] == build:
                for k in ("x", "run", "status"):
                    line[k] += part[k]
                line["y"] += part["y"][metric]
    return line


def test_history_hover_shows_build_commit_and_value(browser: Browser, site: Path, tmp_path: Path) -> None:
    page, errors, dialogs = _history_page(browser, site, "tiny-q4")
    assert errors == [] and dialogs == []
    line = _history_line(site, Path(page.url).stem, "tg_ts", "baseline")
    x, y = _point_xy(page, "tg_ts", "ok", "baseline", 1)
    page.mouse.move(x, y)
    hover = page.locator("#chart-tg_ts .hoverlayer")
    hover.locator("text").first.wait_for()
    text = hover.text_content() or ""
    _shot(page, tmp_path, "history-hover.png")
    assert "baseline" in text and f"run {line['run'][1]}" in text
    value = f"{line['y'][1]:.2f}"
    assert value in text, (value, text)
    assert " ± " in text  # the 95% CI of the mean


def test_failed_load_is_drawn_at_its_build_with_its_status(browser: Browser, site: Path, tmp_path: Path) -> None:
    page, _, _ = _history_page(browser, site, "tiny-q4")
    failed = page.evaluate(
        """() => document.getElementById('chart-tg_ts')._fullData
             .filter(t => t.meta === 'failed').map(t => [t.name, t.x])"""
    )
    assert [name for name, _ in failed] == ["no-lib: failed load"]
    runs_x = _history_line(site, Path(page.url).stem, "tg_ts", "no-lib")["x"]
    # at both nightlies (dodged by a fraction beside the other builds of the run), not at an arbitrary place
    assert [round(x) for x in failed[0][1]] == runs_x and len(runs_x) == 2
    x, y = _point_xy(page, "tg_ts", "failed", "no-lib", 0)
    page.mouse.move(x, y)
    page.locator("#chart-tg_ts .hoverlayer text").first.wait_for()
    assert "build_failed" in (page.locator("#chart-tg_ts .hoverlayer").text_content() or "")
    assert page.locator("#chart-tg_ts .scatterlayer .trace path.point").count() >= 2 + 2


def test_change_point_is_marked(browser: Browser, site: Path, tmp_path: Path) -> None:
    page, _, _ = _history_page(browser, site, "tiny-q4")
    _shot(page, tmp_path, "history-change.png")
    assert page.locator("#chart-tg_ts .shapelayer path").count() == 1
    assert "shift -12.5%" in (page.locator("#chart-tg_ts .annotation").text_content() or "")
    assert page.locator("#chart-pp_ts .shapelayer path").count() == 0  # a tg shift, not a pp one


def test_csp_blocks_an_injected_inline_script(browser: Browser, site: Path) -> None:
    html = (site / "index.html").read_text()
    injected = site / "injected.html"
    injected.write_text(html.replace("<main>", "<main><script>window.injected = 1; alert('inline')</script>", 1))
    page, errors, dialogs = _open(browser, injected)
    assert dialogs == []
    assert page.evaluate("() => window.injected") is None
    assert any("Content Security Policy" in e for e in errors), errors
    # the site's own scripts do run under that policy
    chart, chart_errors, _ = _history_page(browser, site, "tiny-q4")
    assert chart_errors == [] and chart.evaluate("() => typeof Plotly") == "object"


def test_comparison_pages_only_for_baseline_and_previous_nightly(browser: Browser, site: Path, tmp_path: Path) -> None:
    pages = sorted((site / "compare").glob("*.html"))
    # 2 candidates against the baseline + 3 builds × (run 2 against run 1); never every pair
    assert len(pages) == 2 + 3
    index, _, _ = _open(browser, site / "index.html")
    href = index.locator("table.overview thead a", has_text="no-lib").first.get_attribute("href")
    assert href is not None
    page, errors, dialogs = _open(browser, site / href)
    page.wait_for_selector("#chart-compare[data-ready='1']")
    _shot(page, tmp_path, "compare.png")
    assert errors == [] and dialogs == []
    differs = page.locator("table.identity tr.differs th").all_inner_texts()
    assert "identity" in differs  # no-lib cannot even report its library: its identity differs
    assert page.locator("table.compare tbody tr").count() == 2
    assert XSS in page.locator("table.compare").inner_text()
    run, errors, dialogs = _open(browser, site / "run" / "2.html")
    _shot(run, tmp_path, "run.png")
    assert errors == [] and dialogs == []
    assert run.locator("a.nightly").count() == 3  # each build against the night before
    assert run.locator("details pre.log").count() == 6
    # a load log reads as lines; a result without a reason shows none (not pandas' missing "nan")
    log = run.locator("details pre.log").first.text_content() or ""
    assert "\n" in log.strip() and "\\n" not in log
    assert "nan" not in run.locator("small.reason").all_text_contents()
    assert "nan" not in run.locator("td.cell").evaluate_all("cells => cells.map(c => c.title)")


def test_run_pages_show_what_the_store_holds_for_the_run(site: Path, tmp_path: Path) -> None:
    """A run page's rows are the site data's (read once for the whole site) with their samples, memory and
    load logs read for the page's runs: the same frame `bench results --run N --logs` reads from the store."""
    from bench.config import GateConfig
    from bench.report.site import data as site_data
    from bench.report.site.output import SiteOutput
    from bench.report.site.pages import Builder
    from bench.store.queries import attach_logs

    with open_store(f"sqlite:///{site.parent / 'perfgate.sqlite'}") as store, store.session() as session:
        data = site_data.load(session, DashboardConfig(baseline="baseline"), GateConfig())
        out = SiteOutput(tmp_path / "out")
        runs = sorted({int(r) for r in data.results["run_id"]})
        shown = Builder(session, data, out).run_results(runs)
        out.abort()
        assert runs == [1, 2]
        expected = attach_logs(session, results_frame(session, runs))
        assert expected["samples_tg_ns"].map(len).sum() > 0 and expected["log"].str.len().sum() > 0
        pd.testing.assert_frame_equal(shown.drop(columns="tg_roofline_pct"), expected.reset_index(drop=True))


def test_roofline_above_100_percent_is_flagged(site: Path) -> None:
    # the machine's bandwidth set absurdly low: every measured generation speed is "faster than memory"
    from bench.machine import collect

    host = collect().hostname
    data = json.loads((site / "data" / "run-2.json").read_text())
    assert all(r["tg_roofline_pct"] is None for r in data)  # this CPU is in no table: no roofline
    settings = DashboardConfig(baseline="baseline", bandwidth_gbs={host: 1e-6})
    with open_store(f"sqlite:///{site.parent / 'perfgate.sqlite'}") as store:
        build_site(store, site, None, settings)
    data = json.loads((site / "data" / "run-2.json").read_text())
    ok = [r for r in data if r["status"] == "ok"]
    assert ok and all(r["tg_roofline_pct"] > 100 for r in ok)
    assert "measurement error" in (site / "run" / "2.html").read_text()


def test_out_refuses_folders_perfgate_did_not_make(tmp_path: Path, db_url: str) -> None:
    _import_rows(tmp_path / "r.json", ["m"])
    assert bench_cli("import", str(tmp_path / "r.json"), "--format", "perfgate", "--db", db_url).returncode == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    result = bench_cli("dashboard", "--db", db_url, "--out", str(mine))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --out") and "perfgate did not make" in result.stderr
    assert (mine / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    result = bench_cli("dashboard", "--db", db_url, "--out", str(a_file))
    assert result.returncode == 2 and "not a folder" in result.stderr and a_file.read_text() == "keep"
    # `--out .` in a folder of the user's: refused, nothing deleted
    here = subprocess.run(
        [str(Path(sys.executable).with_name("bench")), "dashboard", "--db", db_url, "--out", "."],
        cwd=mine,
        capture_output=True,
        text=True,
        check=False,
    )
    assert here.returncode == 2 and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    # a site of perfgate's own is replaced, built beside it and swapped in
    site = tmp_path / "site"
    assert bench_cli("dashboard", "--db", db_url, "--out", str(site)).returncode == 0
    assert (site / MARKER).is_file() and (site / "index.html").is_file()
    (site / "stale.html").write_text("from an older site")
    assert bench_cli("dashboard", "--db", db_url, "--out", str(site)).returncode == 0
    assert not (site / "stale.html").exists()
    assert not [p for p in tmp_path.iterdir() if "perfgate-new" in p.name or "perfgate-old" in p.name]
    with pytest.raises(ConfigError), open_store(db_url) as store:
        build_site(store, mine)


def _import_rows(path: Path, names: list[str], machine: str = "f" * 16) -> None:
    rows = [
        {
            "run_id": 1,
            "build": build,
            "model": name,
            "status": "ok",
            "n_prompt": 512,
            "n_gen": 128,
            "pp_ts": 100.0,
            "tg_ts": 10.0,
            "samples_pp_ns": [5_120_000_000, 5_100_000_000],
            "samples_tg_ns": [12_800_000_000, 12_700_000_000],
            "machine_fingerprint": machine,
            "machine": "runner-1",
            "started_at": "2026-01-01T00:00:00",
        }
        for build in ("base", "cand")
        for name in names
    ]
    path.write_text(json.dumps(rows))


def test_hostile_names_get_distinct_files_and_escaped_text(browser: Browser, tmp_path: Path, db_url: str) -> None:
    names = list(HOSTILE_NAMES)
    if not db_url.startswith("sqlite"):  # PostgreSQL's name column holds 255 characters (the store refuses more)
        names = [n for n in names if len(n) <= 255]
    src = tmp_path / "hostile.json"
    _import_rows(src, names)
    assert bench_cli("import", str(src), "--format", "perfgate", "--db", db_url).returncode == 0
    out = tmp_path / "site"
    with open_store(db_url) as store:
        build_site(store, out, None, DashboardConfig(baseline="base"))
    histories = list((out / "history").glob("*.html"))
    assert len(histories) == len(names)  # one chart per model: no two names share a file
    assert all(len(p.name) < 40 for p in out.rglob("*"))
    shown = json.loads((out / "data" / "overview.json").read_text())
    assert {c for c in shown["machines"][0]["comparisons"][0]["cells"]} == set(names)
    page, errors, dialogs = _open(browser, out / "index.html")
    assert errors == [] and dialogs == []
    text = page.locator("table.overview").inner_text()
    assert "quote\"'&<b>bold</b>" in text and page.locator("table.overview b", has_text="bold").count() == 0
    assert visible("ctl\x01\x1b[31mred\x7f") in text and visible("a\u2028b\u2029c") in text  # shown, not dropped
    for href in [h for h in page.locator("table.overview tbody th a").evaluate_all("a => a.map(e => e.href)")][:3]:
        hist = browser.new_page()
        hist.goto(href)
        hist.wait_for_selector("#chart-tg_ts[data-ready='1']")
        assert hist.locator("#chart-tg_ts b", has_text="bold").count() == 0


def test_one_rule_resumed_run_and_reimport_give_the_same_sides(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    builds = [{"name": "A", "python": PYTHON}, {"name": "B", "python": PYTHON}]
    cfg = load_config(write_config([{"name": "tiny-q4", "path": str(models_dir / "tiny-Q4_0.gguf")}], builds=builds))
    with open_store(db_url) as store:
        first = run_matrix(store, cfg, show_progress=False)
        with store.session() as session:  # run 1 was killed before B × tiny-q4 finished
            killed = session.query(Result).filter_by(run_id=first).order_by(Result.id.desc()).first()
            assert killed is not None
            session.delete(killed)
            session.commit()
        second = run_matrix(store, cfg, show_progress=False)
        assert run_matrix(store, cfg, show_progress=False, resume_run_id=first) == first
    # B's newest result is the resumed run 1's, though run 2 has the higher id
    exported = tmp_path / "all.json"
    exported.write_text(bench_cli("results", "--all", "--format", "json", "--db", db_url).stdout)

    def sides() -> dict[str, Any]:
        cmp = bench_cli("compare", "--baseline", "A", "--candidate", "B", "--format", "json", "--db", db_url)
        assert cmp.returncode == 0, cmp.stderr
        payload = json.loads(cmp.stdout)
        gate = bench_cli("gate", "--baseline", "A", "--candidate", "B", "--db", db_url)
        assert gate.returncode in (0, 1, 3) and "Traceback" not in gate.stderr, gate.stderr
        site = tmp_path / "site"
        with open_store(db_url) as store:
            build_site(store, site, None, DashboardConfig(baseline="A"))
        shown = json.loads((site / "data" / "overview.json").read_text())["machines"][0]["comparisons"]
        cell = next(c for c in shown if c["candidate"]["build"] == "B")
        label = f"B@{','.join(map(str, payload['candidate']['run_ids']))}"
        assert label in gate.stdout.splitlines()[0]
        assert tuple(cell["candidate"]["result_ids"]) == tuple(payload["candidate"]["result_ids"])
        assert tuple(cell["baseline"]["result_ids"]) == tuple(payload["baseline"]["result_ids"])
        return payload

    before = sides()
    assert before["candidate"]["run_ids"] == [first] and before["baseline"]["run_ids"] == [second]
    imported = bench_cli("import", str(exported), "--format", "perfgate", "--db", db_url)
    assert imported.returncode == 0, imported.stderr
    after = sides()  # the re-imported copies stand now: the same rule for all three, and no crash
    assert after["candidate"]["result_ids"] != before["candidate"]["result_ids"]


def test_standing_rule_keys_by_model_name_and_prefers_finished() -> None:
    frame = pd.DataFrame(
        {
            "machine_fingerprint": ["m"] * 4,
            "build": ["b"] * 4,
            "model": ["x", "x", "y", "y"],
            "finished_at": [pd.Timestamp("2026-01-02"), pd.Timestamp("2026-01-01"), None, pd.Timestamp("2025-01-01")],
            "started_at": [pd.Timestamp("2026-01-01")] * 4,
            "result_id": [1, 2, 3, 4],
        }
    )
    assert standing(frame)["result_id"].tolist() == [1, 4]


def test_adding_a_run_rewrites_only_the_pages_it_touches(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_page, "HISTORY_BLOCK", 2)  # runs 1 and 2 in the history's first block, 3 in its next
    cfg = load_config(write_config([{"name": "tiny-q4", "path": str(models_dir / "tiny-Q4_0.gguf")}]))
    out = tmp_path / "site"
    with open_store(db_url) as store:
        run_matrix(store, cfg, show_progress=False)
        run_matrix(store, cfg, show_progress=False)
        build_site(store, out)
        inode = {p.relative_to(out): p.stat().st_ino for p in out.rglob("*") if p.is_file()}
        unchanged = build_site(store, out)
        assert unchanged.written <= 3  # the overview, its JSON and the history index
        run_matrix(store, cfg, show_progress=False)
        report = build_site(store, out)
    now = {p.relative_to(out): p.stat().st_ino for p in out.rglob("*") if p.is_file()}
    assert now[Path("run/1.html")] == inode[Path("run/1.html")]  # untouched: the same file, linked over
    assert now[Path("run/2.html")] == inode[Path("run/2.html")]
    assert Path("run/3.html") in now and Path("run/3.html") not in inode
    rewritten = {p for p in inode if p in now and now[p] != inode[p]}
    # the overview, the history of the one model, its data and the marker; every older comparison is kept
    assert {str(p) for p in rewritten if not str(p).startswith(("history/", "data/history-"))} == {
        "index.html",
        "history.html",
        "data/overview.json",
        MARKER,
    }
    assert all(now[p] == inode[p] for p in inode if str(p).startswith(("compare/", "plotly")))
    added = set(now) - set(inode)
    assert len([p for p in added if str(p).startswith("compare/")]) == 1  # run 3 against run 2
    assert report.written == len(rewritten) - 1 + len(added)  # the marker is written apart
    # the history's points: the full block of runs 1–2 kept, run 3's block added, the head naming both rewritten
    (stem,) = {p.stem for p in now if p.parts[0] == "history"}
    head = json.loads((out / "data" / f"history-{stem}.json").read_text())
    assert head["blocks"] == [f"history-{stem}-0", f"history-{stem}-1"]
    for ext in (".js", ".json"):
        assert now[Path(f"data/history-{stem}-0{ext}")] == inode[Path(f"data/history-{stem}-0{ext}")]
        assert Path(f"data/history-{stem}-1{ext}") in added
        assert Path(f"data/history-{stem}{ext}") in rewritten
    assert _history_line(out, stem, "tg_ts", "local")["run"] == [1, 2, 3]


def _dead_links(site: Path) -> list[str]:
    """Every relative href of every page of the site that names no file in it."""
    dead = []
    for page in site.rglob("*.html"):
        for href in re.findall(r'href="([^"#:]+)"', page.read_text()):
            if not (page.parent / href).resolve().is_file():
                dead.append(f"{page.relative_to(site)} → {href}")
    return dead


def test_a_kept_run_page_never_links_to_a_comparison_the_window_dropped(
    models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path
) -> None:
    """dashboard.nightly_pages keeps the newest runs' nightly comparisons: when a run falls out of that window,
    its page (unchanged results) is written again without its links to the comparisons gone."""
    cfg = load_config(write_config([{"name": "tiny-q4", "path": str(models_dir / "tiny-Q4_0.gguf")}]))
    out = tmp_path / "site"
    settings = DashboardConfig(nightly_pages=1)
    with open_store(db_url) as store:
        run_matrix(store, cfg, show_progress=False)
        run_matrix(store, cfg, show_progress=False)
        build_site(store, out, None, settings)
        assert 'class="nightly"' not in (out / "run" / "1.html").read_text()  # the first run: nothing before it
        assert 'class="nightly"' in (out / "run" / "2.html").read_text()
        run_matrix(store, cfg, show_progress=False)
        build_site(store, out, None, settings)
    assert 'class="nightly"' not in (out / "run" / "2.html").read_text()  # run 2 against run 1: out of the window
    assert 'class="nightly"' in (out / "run" / "3.html").read_text()
    assert _dead_links(out) == []


def test_forked_and_spawned_workers_write_the_site_the_serial_build_writes(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run pages read their samples and logs in the worker that writes them, on a connection of its own (SQLite
    and PostgreSQL alike); workers forked (Linux) or spawned from one pickle of the builder (macOS, where fork is
    unsafe): the site is byte for byte the one a single process writes."""
    from bench.report.site import pages
    from benchmarks.dashboard_scale import fill

    if pages._workers() < 2:
        pytest.skip("one CPU: the site is never written by workers here")
    fill(db_url, 12, 2, 3)
    with open_store(db_url) as store:
        forked = build_site(store, tmp_path / "forked")
        monkeypatch.setattr(pages, "START_METHOD", "spawn")
        spawned = build_site(store, tmp_path / "spawned")
        monkeypatch.setattr(pages, "_workers", lambda: 1)
        serial = build_site(store, tmp_path / "serial")
    # 12 runs, 3 histories, 7 nightlies of each build, build-1 against build-0, the overview and history index
    assert forked.pages == spawned.pages == serial.pages == 12 + 3 + 2 * 7 + 1 + 2
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*") if p.is_file())
    for other in ("forked", "spawned"):
        assert files == sorted(p.relative_to(tmp_path / other) for p in (tmp_path / other).rglob("*") if p.is_file())
        for rel in files:
            if str(rel) != MARKER:
                assert (tmp_path / other / rel).read_bytes() == (tmp_path / "serial" / rel).read_bytes(), (other, rel)


def _same_site(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != MARKER)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != MARKER)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_an_updated_site_reads_the_rows_of_what_changed_and_is_the_site_written_anew(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site brought up to date reads of every result only what its keys need, and whole rows (figures,
    reasons, samples) only for the runs of the pages it writes; the site is byte for byte the one written from
    nothing, after a nightly run is added and after a result of an old run changes."""
    from benchmarks.dashboard_scale import fill

    monkeypatch.setattr(history_page, "HISTORY_BLOCK", 4)  # 12 runs: three full blocks, run 13 opens a fourth
    fill(db_url, 12, 2, 3)
    per_run = 2 * 3
    out = tmp_path / "site"
    with open_store(db_url) as store:
        assert build_site(store, out).rows_read == 12 * per_run  # a new site reads every row at once
        assert build_site(store, out).rows_read == 2 * per_run  # unchanged: the overview's newest two runs
        fill(db_url, 1, 2, 3, first_night=12)
        added = build_site(store, out)
        # run 13, its previous night 12 (their comparison, the overview), and run 6, whose page loses its link to
        # the nightly comparison 5 → 6 that the window of dashboard.nightly_pages = 7 drops
        assert added.rows_read == 3 * per_run
        build_site(store, tmp_path / "anew")
        _same_site(out, tmp_path / "anew")
        with store.session() as session:  # a result of run 3 changes (a re-measured or re-classified result)
            changed = session.scalars(select(Result).where(Result.run_id == 3).order_by(Result.id)).first()
            assert changed is not None
            changed.status, changed.reason = Status.OUT_OF_MEMORY, "ggml_metal_graph_compute: out of memory"
            session.commit()
        again = build_site(store, out)
        # run 3's page, its history block (runs 1–4, written whole) and the overview's runs 12 and 13
        assert again.rows_read == 6 * per_run
        build_site(store, tmp_path / "anew-2")
    _same_site(out, tmp_path / "anew-2")
    assert Status.OUT_OF_MEMORY.value in (out / "run" / "3.html").read_text()
    # a result without a reason has no tooltip, whichever way its rows were read (never "nan" or "None")
    pages = [p.read_text() for p in out.rglob("*.html")]
    assert not [p for p in pages if re.search(r'title="(nan|None)"', p)]
    assert any('class="st-ok">ok</span>' in p for p in pages)


def test_an_update_touching_many_runs_reads_the_whole_store_and_is_the_site_written_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past site_data.RUNS_NAMED_AT_MOST runs (an upgrade of perfgate rewrites every page) the whole rows are read
    in one read of the store, never as an IN list of every run id."""
    from benchmarks.dashboard_scale import fill

    db = f"sqlite:///{tmp_path / 's.sqlite'}"
    fill(db, 6, 2, 2)
    out = tmp_path / "site"
    with open_store(db) as store:
        build_site(store, out)
        fill(db, 1, 2, 2, first_night=6)
        monkeypatch.setattr(site_data, "RUNS_NAMED_AT_MOST", 2)  # the added run's pages name 3 runs
        assert build_site(store, out).rows_read == 7 * 2 * 2
        build_site(store, tmp_path / "anew")
    _same_site(out, tmp_path / "anew")


@pytest.mark.slow
def test_wheel_installs_and_runs_every_command(
    models_dir: Path, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(wheels.glob("perfgate-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # the dependencies from this venv (llama-cpp-python is not rebuilt); a plain path line, so this venv's
    # editable perfgate (a .pth finder there) is not loaded: perfgate comes from the wheel alone
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    (site_dir / "perfgate_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True)
    bench = str(venv / "bin" / "bench")
    work = tmp_path / "elsewhere"  # no checkout around: templates and migrations must come from the wheel
    work.mkdir()
    config = write_config(
        [{"name": "tiny-q4", "path": str(models_dir / "tiny-Q4_0.gguf")}],
        builds=[{"name": "A", "python": PYTHON}, {"name": "B", "python": PYTHON}],
        repetitions=2,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFGATE_DB")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([bench, *args], cwd=work, capture_output=True, text=True, check=False, env=env)

    located = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import bench.store.db as d, bench.report.site.common as p; print(d.MIGRATIONS, p.TEMPLATES)",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert located.stdout.split() == [str(p) for p in located_in(venv)], located.stdout + located.stderr
    assert run("run", "--config", str(config), "--db", "w.sqlite").returncode == 0
    gate = run("gate", "--baseline", "A", "--candidate", "B", "--db", "w.sqlite", "--config", str(config))
    assert gate.returncode in (0, 1, 3) and "perfgate" in gate.stdout, gate.stderr
    site = run("dashboard", "--db", "w.sqlite", "--out", "site", "--config", str(config))
    assert site.returncode == 0, site.stderr
    assert (work / "site" / "index.html").is_file() and (work / "site" / "plotly.min.js").is_file()


def located_in(venv: Path) -> list[Path]:
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    return [site_dir / "bench" / "_migrations", site_dir / "bench" / "_templates"]


def test_baseline_pattern_picks_the_newest_earlier_matching_build(tmp_path: Path, db_url: str) -> None:
    rows = [
        {
            "run_id": night,
            "build": build,
            "model": "m",
            "status": "ok",
            "n_prompt": 512,
            "n_gen": 128,
            "samples_pp_ns": [5_120_000_000, 5_100_000_000],
            "samples_tg_ns": [12_800_000_000, 12_700_000_000],
            "machine_fingerprint": "f" * 16,
            "machine": "runner-1",
            "started_at": f"2026-01-0{night}T00:00:00",
        }
        for night, build in enumerate(["v1.0", "v1.1", "master-abc", "pr-7"], start=1)
    ]
    src = tmp_path / "nights.json"
    src.write_text(json.dumps(rows))
    assert bench_cli("import", str(src), "--format", "perfgate", "--db", db_url).returncode == 0
    with open_store(db_url) as store:
        build_site(store, tmp_path / "site", None, DashboardConfig(baseline_pattern="v*"))
    shown = json.loads((tmp_path / "site" / "data" / "overview.json").read_text())["machines"][0]
    assert [(c["candidate"]["build"], c["baseline"]["build"]) for c in shown["comparisons"]] == [("pr-7", "v1.1")]


def test_a_machine_without_a_gpu_beside_one_with_builds_the_site(tmp_path: Path) -> None:
    """A GPU machine's import next to a CPU-only one: the machines' gpu column holds a name and a missing value."""
    db = f"sqlite:///{tmp_path / 'mixed.sqlite'}"
    for args in (
        ("import", str(REPO / "benchmarks" / "results" / "cpu_fallback.json"), "--format", "perfgate"),
        ("import", str(REPO / "tests" / "data" / "llama-bench-t1.jsonl"), "--build", "cpu"),
        ("dashboard", "--out", str(tmp_path / "site")),
    ):
        proc = bench_cli(*args, "--db", db)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_site_does_not_judge_a_pair_the_gate_refuses(tmp_path: Path, db_url: str) -> None:
    """One way to a Comparison: a pair measured with different suite settings is refused by `bench gate` and shown,
    never judged, by the dashboard (before, the site built its own Comparison and passed it)."""
    rows = [
        {
            "run_id": run,
            "build": build,
            "model": "m",
            "status": "ok",
            "n_prompt": 512,
            "n_gen": n_gen,
            "samples_pp_ns": [5_120_000_000, 5_100_000_000, 5_110_000_000, 5_115_000_000],
            "samples_tg_ns": [n_gen * 100_000_000, n_gen * 100_100_000, n_gen * 99_900_000, n_gen * 100_050_000],
            "machine_fingerprint": "f" * 16,
            "machine": "runner-1",
            "started_at": f"2026-01-0{run}T00:00:00",
        }
        for run, build, n_gen in ((1, "v1.0", 128), (2, "v1.1", 64))
    ]
    src = tmp_path / "mixed.json"
    src.write_text(json.dumps(rows))
    assert bench_cli("import", str(src), "--format", "perfgate", "--db", db_url).returncode == 0
    gate = bench_cli("gate", "--baseline", "v1.0", "--candidate", "v1.1", "--db", db_url)
    assert gate.returncode == 2 and "different suite settings" in gate.stderr, gate.stderr
    with open_store(db_url) as store:
        build_site(store, tmp_path / "site", None, DashboardConfig(baseline="v1.0"))
    shown = json.loads((tmp_path / "site" / "data" / "overview.json").read_text())["machines"][0]["comparisons"]
    assert [(c["candidate"]["build"], c["verdict"]) for c in shown] == [("v1.1", "inconclusive")], shown
    page = next((tmp_path / "site" / "compare").glob("*.html")).read_text()
    assert "not judged" in page and "n_gen 128 → 64" in page, page

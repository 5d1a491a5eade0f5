"""The static site, built from a real store and opened in real headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from bench.config import load_config
from bench.dashboard import build_site
from bench.runner import run_matrix
from bench.store.db import open_store
from tests.conftest import PYTHON, SHARED_LOGS

XSS = "<script>alert(1)</script>"
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def site(models_dir: Path, write_config: Callable[..., Path], db_url: str, tmp_path: Path) -> Path:
    empty_lib = tmp_path / "empty-lib"
    empty_lib.mkdir()
    models = [
        {"name": "tiny-q4", "path": str(models_dir / "tiny-Q4_0.gguf")},
        {"name": XSS, "path": str(models_dir / "tiny-F16.gguf")},
    ]
    builds = [
        {"name": "baseline", "python": PYTHON},
        {"name": "candidate", "python": PYTHON},
        {"name": "no-lib", "python": PYTHON, "lib": str(empty_lib)},
    ]
    cfg = load_config(write_config(models, builds=builds, repetitions=2))
    out = tmp_path / "site"
    with open_store(db_url) as store:
        run_matrix(store, cfg, show_progress=False, interleave=True)
        build_site(store, out)
    return out


def _open(browser: Browser, path: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, dialogs


def test_overview_shows_the_failure_cell_and_escapes_names(browser: Browser, site: Path, tmp_path: Path) -> None:
    page, errors, dialogs = _open(browser, site / "index.html")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    assert errors == [] and dialogs == []
    assert "perfgate" in page.title()
    failed = page.locator("td.cell[data-status='build_failed']")
    assert failed.count() == 2
    assert "library" in failed.first.get_attribute("title")
    assert page.locator("td.cell[data-status='ok']").count() == 4
    assert page.locator(f"th:text-is('{XSS}')").count() == 1  # shown as text
    assert page.locator("script").count() == 0
    assert page.locator(".badge.fail").count() >= 1  # no-lib fails the gate against the baseline


def test_comparison_page_shows_both_builds(browser: Browser, site: Path, tmp_path: Path) -> None:
    index, _, _ = _open(browser, site / "index.html")
    href = index.locator("a", has_text="candidate vs baseline").first.get_attribute("href")
    page, errors, dialogs = _open(browser, site / href)
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    assert errors == [] and dialogs == []
    header = page.locator("table.compare thead").inner_text()
    assert "baseline" in header and "candidate" in header
    assert page.locator("table.compare tbody tr").count() == 2
    assert page.locator("img.plot").evaluate("img => img.naturalWidth") > 0
    assert XSS in page.locator("table.compare").inner_text()


def test_run_page_holds_logs_samples_and_json(browser: Browser, site: Path, tmp_path: Path) -> None:
    page, errors, dialogs = _open(browser, site / "run" / "1.html")
    assert errors == [] and dialogs == []
    assert "run 1" in page.title()
    logs = page.locator("details pre.log")
    assert logs.count() == 6 and "load_tensors" in (logs.first.text_content() or "")
    assert page.locator("a.data").get_attribute("href") == "../data/run-1.json"
    assert page.locator("table.matrix td.cell[data-status='build_failed']").count() == 2
    assert page.locator("table.matrix td.cell[data-status='ok']").count() == 4
    assert (site / "data" / "run-1.json").exists()
    history, errors, _ = _open(browser, site / "history.html")
    history.screenshot(path=str(tmp_path / "history.png"), full_page=True)
    assert errors == [] and history.locator("img.plot").count() == 2


def test_shared_logs_folder_is_reachable() -> None:
    assert (SHARED_LOGS / "MANIFEST.tsv").exists()

"""Every report writer against the one table of hostile names: the output stays valid in its format and the
name is shown (control characters as escapes), never dropped and never acting."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import xml.dom.minidom
import xml.etree.ElementTree as ET
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis import gate
from bench.analysis.compare import Comparison, Side
from bench.analysis.gate import Check, Verdict
from bench.analysis.sequential import Outcome
from bench.cli.app import console
from bench.escape import visible
from bench.report import render
from bench.report.site.common import environment, json_text
from tests.conftest import HOSTILE_NAMES, REPO

# what must never reach a report raw (bench.escape's rules, written again here so a mistake there shows)
HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def hidden_in(document: str) -> bool:
    """A hidden character inside a line (a multi-line document's own line breaks are not the name's)."""
    return HIDDEN.search(document.replace("\n", "")) is not None


def _ids(name: str) -> str:
    return ascii(name)[1:40]


def verdict_about(name: str) -> Verdict:
    """A verdict whose every text a user controls (model, build, machine, engine, settings, reason) is `name`."""
    side = Side(build=name, result_ids=(1,), run_ids=(1,), machine_fingerprint="f" * 16, machine=name)
    other = Side(build="cand", result_ids=(2,), run_ids=(2,), machine_fingerprint="e" * 16, machine="runner-2")
    comparison = Comparison(
        side, other, cross_machine=True, table=pd.DataFrame(), mixed_settings=(f"threads {name}",), engines=(name, "x")
    )
    return Verdict(
        comparison,
        [
            Check(name, "load", Outcome.FAIL, f"loaded ok on the baseline; candidate is crashed: {name}"),
            Check(name, "tg_ts", Outcome.INCONCLUSIVE, f"inconclusive: {name}"),
            Check(name, "pp_ts", Outcome.PASS, name),
        ],
    )


# -- markdown: GitHub's table rule: a row is split at every pipe that no backslash precedes


def _cells(row: str) -> list[str]:
    assert row.startswith("| ") and row.endswith(" |"), row[:80]
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]


def _md_shown(cell: str) -> str:
    """What a markdown renderer shows for a cell: backslash escapes, then entities, resolved."""
    return html.unescape(re.sub(r"\\(.)", r"\1", cell))


def check_markdown_verdict(name: str, _tmp: Path) -> None:
    text = gate.markdown(verdict_about(name), note=f"note {name}")
    assert text.count("\n") == gate.markdown(verdict_about("plain"), note="note plain").count("\n")  # no raw break
    assert not hidden_in(text)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 + 3 and all(len(_cells(r)) == 4 for r in rows)  # header, rule, one row per check
    assert [_md_shown(_cells(r)[0]) for r in rows[2:]] == [visible(name)] * 3
    assert _md_shown(_cells(rows[-1])[3]) == visible(name)
    assert "<" not in text and not re.search(r"(?<!\\)`", text.replace("`load`", "").replace("`tg_ts`", ""))


def check_markdown_table(name: str, _tmp: Path) -> None:
    text = render.markdown_table(pd.DataFrame({"model": [name], name: [1.5]}))
    lines = text.split("\n")
    assert len(lines) == 3 and all(len(_cells(line)) == 2 for line in (lines[0], lines[2]))
    assert _md_shown(_cells(lines[2])[0]) == _md_shown(_cells(lines[0])[1]) == visible(name)
    assert not hidden_in(text)


# -- JUnit: parsed by strict XML parsers


def check_junit(name: str, tmp: Path) -> None:
    path = tmp / "junit.xml"
    gate.junit(verdict_about(name), path)
    xml.dom.minidom.parse(str(path))  # a second strict parser: raises on any character XML 1.0 refuses
    cases = ET.parse(path).getroot().findall("testcase")
    assert [c.get("classname") for c in cases] == [f"perfgate.{visible(name)}"] * 3
    failure = cases[0].find("failure")
    assert failure is not None and failure.text == failure.get("message") == visible(cases_message(name))
    shown = cases[2].find("system-out")
    assert shown is not None and shown.text == visible(name)


def cases_message(name: str) -> str:
    return verdict_about(name).checks[0].message


# -- JSON: round-trips exactly, ASCII only


def check_json(name: str, _tmp: Path) -> None:
    document = gate.to_json(verdict_about(name))
    payload = json.loads(document)
    assert document.isascii() and payload["baseline"] == f"{name}@1" and payload["checks"][0]["model"] == name
    frame = render.to_json(pd.DataFrame({"model": [name], "ratio": [float("inf")]}))
    assert frame.isascii() and json.loads(frame) == [{"model": name, "ratio": None}]
    chart = json_text({"model": name})
    assert chart.isascii() and json.loads(chart) == {"model": name}


# -- HTML: the site's environment, read back by html.parser


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)


def _history_index(name: str) -> _Page:
    entry = {"host": name, "machine": name, "model": name, "href": "history/x.html", "runs": 1, "failed": 0}
    page = (
        environment()
        .get_template("history_index.html.j2")
        .render(root="", entries=[{**entry, "changes": 0}], title=name, data=None, scripts=[])
    )
    assert not hidden_in(page)
    parsed = _Page()
    parsed.feed(page)
    return parsed


def check_html(name: str, _tmp: Path) -> None:
    page = _history_index(name)
    assert page.tags == _history_index("plain").tags  # no tag of the name's own
    assert page.text["title"] == page.text["h1"] == page.text["a"][-1:] == page.text["small"] == [visible(name)]


# -- chart labels: site.js `esc`, run by node


@pytest.fixture(scope="module")
def chart_labels() -> dict[str, str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: site.js cannot run outside a browser")
    source = (REPO / "dashboard" / "templates" / "site.js").read_text()
    helpers = source[source.index("  var HIDDEN") : source.index("  function fmt(")]
    script = helpers + "process.stdout.write(JSON.stringify(JSON.parse(require('fs').readFileSync(0)).map(esc)));"
    out = subprocess.run([node, "-e", script], input=json.dumps(HOSTILE_NAMES), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(zip(HOSTILE_NAMES, json.loads(out.stdout), strict=True))


def check_chart_label(name: str, _tmp: Path, labels: dict[str, str]) -> None:
    label = labels[name]
    assert not HIDDEN.search(label) and not set("<>\"'") & set(label)
    assert html.unescape(label) == visible(name)  # the same rule as the Python writers


# -- terminal: rich tables through the command line's console


def check_terminal(name: str, _tmp: Path) -> None:
    table = render.frame_table(pd.DataFrame({"model": [name]}), title=name)
    with console().capture() as captured:
        console().print(table)  # "[/x]" would raise rich's MarkupError here if the console read markup
    out = captured.get()
    assert not hidden_in(out)

    def squash(text: str) -> str:
        return re.sub(r"[\s│┃]", "", text)

    assert squash(out).count(squash(visible(name))) == 2  # the title and the cell, folded over lines


WRITERS: dict[str, Callable[..., None]] = {
    "markdown-verdict": check_markdown_verdict,
    "markdown-table": check_markdown_table,
    "junit": check_junit,
    "json": check_json,
    "html": check_html,
    "terminal": check_terminal,
}


@pytest.mark.parametrize("writer", [*WRITERS, "chart-label"])
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=_ids)
def test_a_hostile_name_keeps_every_report_valid_and_is_shown(
    writer: str, name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if writer == "chart-label":
        check_chart_label(name, tmp_path, request.getfixturevalue("chart_labels"))
    else:
        WRITERS[writer](name, tmp_path)


def test_visible_shows_each_hidden_character_as_its_escape() -> None:
    assert visible("a\x01b\x1b[31m\x7f\t\n\r\u2028\u202e\ud800ok é 😀") == (
        "a\\x01b\\x1b[31m\\x7f\\t\\n\\r\\u2028\\u202e\\ud800ok é 😀"
    )


def test_visible_on_plain_ascii_is_the_rule_itself() -> None:
    """The shortcut for printable ASCII (most names) gives what the full rule gives, for every ASCII character
    alone and inside text."""
    from bench.escape import _HIDDEN, _escaped

    for char in map(chr, range(128)):
        for text in (char, f"a{char}b", f"{char}{char}"):
            assert visible(text) == _HIDDEN.sub(_escaped, text), repr(text)
    assert visible("build-1 Q4_K_M 7B") == "build-1 Q4_K_M 7B"


def test_visible_lines_keeps_a_logs_lines_and_shows_the_rest() -> None:
    from bench.escape import visible_lines

    log = "load_tensors: ok\r\n\tbuffer \x1b[31mred\x01\rx\u2028y\u202e\n"
    assert visible_lines(log) == "load_tensors: ok\n\tbuffer \\x1b[31mred\\x01\\rx\\u2028y\\u202e\n"
    # every other character of the rule is shown as visible() shows it
    for code in [*range(0x20), 0x7F, 0x85, 0x2028, 0x202E, 0xD800]:
        char = chr(code)
        if char not in "\n\t":
            assert visible_lines(char) == visible(char), hex(code)


def test_a_figure_is_missing_only_when_it_was_not_measured() -> None:
    """None, pandas' NA and NaT and a float NaN (numpy's included) are missing; zero, text and numbers are not."""
    import math

    import numpy as np

    missing = render.missing
    for value in (None, pd.NA, pd.NaT, float("nan"), np.float64("nan"), math.nan):
        assert missing(value), value
    for value in (0, 0.0, -1, 1.5, "", "nan", np.int64(3), np.float64(2.0), True, [], {}):
        assert not missing(value), value

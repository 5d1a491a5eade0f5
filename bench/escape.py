"""Untrusted text → each report format, through one helper per format.

Model, build and machine names come from a config or an imported file and reasons from a log: any character
can be in them. Every writer passes such text through the helper of its format, and every helper first makes
the characters that would act instead of show (controls, line and paragraph separators, bidi overrides,
lone surrogates) visible as Python-style escapes: `\\x01`, `\\u2028` — shown, never dropped.

- JUnit XML: `xml_text` (ElementTree escapes & < > " itself; XML 1.0 cannot carry \\x01 at all)
- markdown: `markdown_text` (a table cell stays one cell, a line stays one line)
- JSON: `json_text` (ASCII only: U+2028 cannot end a line of a script that carries it; round-trips exactly)
- HTML: the site's Jinja2 environment, autoescaped, with `visible_value` as its finalize
- terminal: `terminal_text` in rich tables; the console parses no markup (bench.cli.app)
- chart labels: `esc` in dashboard/templates/site.js, the same rules in JavaScript (plotly reads HTML there)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0, DEL, C1
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks and overrides: text that reads otherwise
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff\ufffe\uffff]"  # lone surrogates and the noncharacters XML refuses
)
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# the same set less line feed and tab: a multi-line text (a load log) keeps its lines in a <pre>
_HIDDEN_IN_LINES = re.compile(_HIDDEN.pattern.replace("\x00-\x1f", "\x00-\x08\x0b-\x1f", 1))


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str) -> str:
    """`text` with every character that would act instead of show written as its escape."""
    if text.isascii() and text.isprintable():  # the ASCII among _HIDDEN are exactly its unprintable characters
        return text
    return _HIDDEN.sub(_escaped, text)


def visible_lines(text: str) -> str:
    """visible() for a text whose lines are meant to show as lines (a load log in a <pre>): line feeds and tabs
    kept (a CRLF log's line ends too), every other hidden character written as its escape."""
    return _HIDDEN_IN_LINES.sub(_escaped, text.replace("\r\n", "\n"))


def visible_value(value: Any) -> Any:
    """visible() for plain text, anything else as it is (Jinja2's finalize: markup a template made stays)."""
    return visible(value) if type(value) is str else value


def xml_text(text: str) -> str:
    """For ElementTree attributes and text: only characters XML 1.0 can carry, the rest shown."""
    return visible(text)


_MARKDOWN = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "<": "&lt;", ">": "&gt;", "&": "&amp;"})


def markdown_text(text: str) -> str:
    """For a markdown table cell or list item: no raw line break, no cell-ending pipe, no HTML, no code span."""
    return visible(text).translate(_MARKDOWN)


def json_text(
    payload: Any,
    *,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    default: Callable[[Any], Any] | None = str,
) -> str:
    """JSON that round-trips every string: ASCII only, no NaN or infinity (null is the missing value).
    `default` turns what JSON has no type for into a value (None: such a value is a TypeError)."""
    return json.dumps(
        payload, ensure_ascii=True, allow_nan=False, default=default, indent=indent, separators=separators
    )


def terminal_text(text: str) -> str:
    """For a rich table cell or title (the console parses no markup): controls shown, never acted on."""
    return visible(text)

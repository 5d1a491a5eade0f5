"""Files that ship inside the package: templates and migrations, found in a wheel as in a checkout.

A wheel maps dashboard/templates/ and db/ into the packages bench._templates and bench._migrations
(setup.py); an editable install or a bare checkout finds them beside the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def data_dir(package: str, checkout_path: str) -> Path:
    """The folder of a data package (data-only packages have no __init__.py: a namespace package's first
    location), else `checkout_path` beside the package."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if Path(location).is_dir():
            return Path(location)
    return _CHECKOUT / checkout_path

"""Files that ship inside the package: templates and migrations, found in a wheel as in a checkout.

A wheel maps dashboard/templates/ and db/ into the packages bench._templates and bench._migrations
(setup.py); an editable install or a bare checkout finds them beside the package."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def data_dir(package: str, checkout_path: str) -> Path:
    try:
        found = importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        path = Path(str(importlib.resources.files(package)))
        if path.is_dir():
            return path
    return _CHECKOUT / checkout_path

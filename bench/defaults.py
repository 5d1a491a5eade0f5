"""Defaults the command line names before it imports anything heavy (pydantic, pandas, SQLAlchemy)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG = Path("models.yaml")

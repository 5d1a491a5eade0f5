"""Where the site goes: never over files perfgate did not make.

A site folder carries a marker file. A new site is written into a fresh folder beside the old one (files
that did not change are hard links to the old ones) and swapped in by renaming; a folder without the
marker, or a path that is not a folder, is refused. File names are hashes of what a page is about, so no
name (long, with '/', spaces or control characters) can make a path too long or two pages share one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bench.errors import ConfigError

MARKER = ".perfgate-site"
MARKER_MAGIC = "perfgate static site"


def file_key(*parts: object) -> str:
    """A short, stable, file-name-safe name for a page about `parts` (machine, model, build …)."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:20]


def content_key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()


def _marker(path: Path) -> dict[str, Any] | None:
    marker = path / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("magic") == MARKER_MAGIC else None


def check_out(out: Path) -> dict[str, Any] | None:
    """Refuse an `--out` perfgate may not replace; the old site's marker when there is one."""
    path = Path(os.path.abspath(out))
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError(f"--out {out}: not a folder (a file or a link is never replaced)")
    if path.parent == path:
        raise ConfigError(f"--out {out}: cannot replace the root folder")
    if not path.is_dir():
        return None
    found = _marker(path)
    if found is None and any(path.iterdir()):
        raise ConfigError(
            f"--out {out}: the folder holds files perfgate did not make (no {MARKER} marker); "
            "name a new or empty folder"
        )
    return found


class SiteOutput:
    """A staging folder beside `out`, swapped in by `commit()`."""

    def __init__(self, out: Path) -> None:
        found = check_out(out)
        self.out = Path(os.path.abspath(out))
        self.old = self.out if found is not None else None
        self.manifest = {str(k): str(v) for k, v in ((found or {}).get("pages") or {}).items()}
        self.stage = self.out.parent / f".{self.out.name[:100]}.perfgate-new-{os.getpid()}"
        if self.stage.exists():
            shutil.rmtree(self.stage)
        try:
            self.stage.mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot write beside it: {exc.strerror}") from exc
        self.pages: dict[str, str] = {}
        self.written = 0
        self.reused = 0
        self._folders: set[Path] = {self.stage}  # made in the stage: one mkdir per folder, not per file

    def _folder_of(self, target: Path) -> None:
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(target.parent)

    def unchanged(self, rel: str, key: str) -> bool:
        """Keep the old file when its inputs are the same: a hard link into the new site (a copy if the
        file system has no links)."""
        if self.old is None or self.manifest.get(rel) != key:
            return False
        source = self.old / rel
        if not source.is_file() or source.is_symlink():
            return False
        target = self.stage / rel
        self._folder_of(target)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        self.pages[rel] = key
        self.reused += 1
        return True

    def write(self, rel: str, text: str, key: str | None = None) -> None:
        target = self.stage / rel
        self._folder_of(target)
        target.write_text(text, encoding="utf-8")
        if key is not None:
            self.pages[rel] = key
        self.written += 1

    def copy(self, rel: str, source: Path) -> None:
        key = f"{source.stat().st_size}:{source.stat().st_mtime_ns}"
        if not self.unchanged(rel, key):
            target = self.stage / rel
            self._folder_of(target)
            shutil.copyfile(source, target)
            self.pages[rel] = key

    def commit(self) -> Path:
        (self.stage / MARKER).write_text(json.dumps({"magic": MARKER_MAGIC, "pages": self.pages}))
        trash = None
        if self.out.exists():
            trash = self.out.parent / f".{self.out.name[:100]}.perfgate-old-{os.getpid()}"
            self.out.rename(trash)
        self.stage.rename(self.out)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

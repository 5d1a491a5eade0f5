"""A build's source → what identifies it (commit, tree digest, sdist digest) and a clean copy to build.

Out-of-tree by default: a git ref is exported with `git archive` and a working tree is copied, so
files a developer left behind in a checkout never enter a CI build unless the tree itself is the
source (and then its dirty state and untracked files are part of the identity).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.builds.identity import sha256_file
from bench.config import Config, SourceConfig
from bench.errors import ConfigError


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # git | dir | sdist | pip
    location: str
    digest: str  # what the cache key takes: commit, tree digest, sdist sha256 or pip spec
    ref: str | None = None
    commit: str | None = None
    subject: str | None = None
    author_date: str | None = None
    dirty: bool = False
    untracked: tuple[str, ...] = field(default_factory=tuple)
    in_place: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _git(repo: Path | str, *args: str, check: bool = True) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ConfigError("git is not installed: a git or dir source needs it") from exc
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout, proc.stderr)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _is_git_tree(path: Path) -> bool:
    return _git(path, "rev-parse", "--is-inside-work-tree", check=False) == "true"


def _commit_facts(repo: Path | str, commit: str) -> tuple[str | None, str | None]:
    out = _git(repo, "show", "-s", "--format=%s%x00%aI", commit)
    subject, _, date = out.partition("\0")
    return subject, date


def _git_mirror(url: str, cache: Path) -> Path:
    """A remote repository as a local mirror in the cache, fetched before each resolve."""
    mirror = cache / "git" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not mirror.exists():
        mirror.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="mirror-", dir=mirror.parent))
        proc = subprocess.run(["git", "clone", "-q", "--mirror", url, str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ConfigError(f"cannot clone {url}: {proc.stderr.strip().splitlines()[-1:]}")
        tmp.rename(mirror)
    else:
        subprocess.run(["git", "-C", str(mirror), "fetch", "-q", "--prune"], capture_output=True, check=False)
    return mirror


def resolve(source: SourceConfig, config: Config, where: str, cache: Path) -> ResolvedSource:
    """What the source is right now. `where` is the config location for errors (file:line: field)."""
    if source.git is not None:
        local = config.resolve(Path(source.git))
        repo: Path = local if local.exists() else _git_mirror(source.git, cache)
        ref = source.ref or "HEAD"
        commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if not commit:
            raise ConfigError(f"{where}: unknown ref {ref!r} in {source.git}")
        subject, date = _commit_facts(repo, commit)
        return ResolvedSource("git", str(repo), commit, ref, commit, subject, date)
    if source.dir is not None:
        path = config.resolve(source.dir).resolve()
        if not path.is_dir():
            raise ConfigError(f"{where}: no directory at {path}")
        if _is_git_tree(path):
            head = _git(path, "rev-parse", "HEAD", check=False) or None
            status = _git(path, "status", "--porcelain", check=False)
            untracked = tuple(_git(path, "ls-files", "--others", "--exclude-standard", check=False).splitlines())
            digest = hashlib.sha256((head or "").encode())
            digest.update(_git(path, "diff", "HEAD", "--binary", check=False).encode())
            for name in untracked:
                if (path / name).is_file():
                    digest.update(name.encode() + sha256_file(path / name).encode())
            facts = _commit_facts(path, head) if head else (None, None)
            return ResolvedSource(
                "dir",
                str(path),
                digest.hexdigest(),
                None,
                head,
                facts[0],
                facts[1],
                dirty=bool(status),
                untracked=untracked,
                in_place=source.in_place,
            )
        return ResolvedSource("dir", str(path), _tree_digest(path), dirty=True, in_place=source.in_place)
    if source.sdist is not None:
        sdist = fetch_sdist(source.sdist, cache, where)
        return ResolvedSource("sdist", source.sdist, sha256_file(sdist), ref=source.sdist)
    assert source.pip is not None
    return ResolvedSource("pip", source.pip, source.pip, ref=source.pip)


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            f = Path(root, name)
            if f.is_file() and not f.is_symlink():
                digest.update(str(f.relative_to(path)).encode() + sha256_file(f).encode())
    return digest.hexdigest()


def fetch_sdist(spec: str, cache: Path, where: str) -> Path:
    """The sdist of a pinned PyPI release (`name==version`), downloaded once into the cache."""
    folder = cache / "sdists" / spec
    found = sorted(folder.glob("*.tar.gz")) if folder.exists() else []
    if found:
        return found[0]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sdist-", dir=folder.parent))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(tmp), spec],
        capture_output=True,
        text=True,
        check=False,
    )
    got = sorted(tmp.glob("*.tar.gz"))
    if proc.returncode != 0 or not got:
        shutil.rmtree(tmp, ignore_errors=True)
        last = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln] or proc.stderr.strip().splitlines()[-1:]
        raise ConfigError(f"{where}: no sdist {spec!r} on the package index ({' '.join(last).strip()})")
    try:
        tmp.rename(folder)
    except OSError:  # another runner fetched it first
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(folder.glob("*.tar.gz"))[0]


def export(resolved: ResolvedSource, dest: Path, cache: Path) -> Path:
    """A clean copy of the source under `dest`; returns the tree to build (the in-place tree itself)."""
    dest.mkdir(parents=True, exist_ok=True)
    if resolved.kind == "git":
        archive = dest / "src.tar"
        with archive.open("wb") as fh:
            subprocess.run(
                ["git", "-C", resolved.location, "archive", resolved.commit or "HEAD"], stdout=fh, check=True
            )
        with tarfile.open(archive) as tar:
            tar.extractall(dest / "src", filter="tar")
        archive.unlink()
        return dest / "src"
    if resolved.kind == "dir":
        if resolved.in_place:
            return Path(resolved.location)
        shutil.copytree(resolved.location, dest / "src", symlinks=True, ignore=shutil.ignore_patterns(".git"))
        return dest / "src"
    if resolved.kind == "sdist":
        sdist = fetch_sdist(resolved.location, cache, resolved.location)
        with tarfile.open(sdist) as tar:
            tar.extractall(dest / "sdist", filter="tar")
        vendored = next((dest / "sdist").glob("*/vendor/llama.cpp"), None)
        if vendored is None:
            raise ConfigError(f"{resolved.location}: the sdist vendors no llama.cpp (no vendor/llama.cpp)")
        # the vendored tree's .git file points at a submodule that is not in the sdist
        (vendored / ".git").unlink(missing_ok=True)
        # every kind of source is built from <work>/src: ccache (paths relative to the work folder) then
        # shares objects between a release's sdist and a git checkout of the same code
        vendored.rename(dest / "src")
        shutil.rmtree(dest / "sdist")
        return dest / "src"
    raise ValueError(f"a {resolved.kind} source is installed, not exported")

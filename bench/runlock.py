"""One measuring run per machine: a kernel lock (fcntl) on a file that names its holder.

The kernel drops the lock when its process ends, however it ends (kill -9, a crash, a reboot), so a lock
left behind by a dead run is simply taken; the text in the file (pid, host, start time) is only there to
tell a second run whom it is waiting for."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.errors import PerfgateError


class RunLockedError(PerfgateError):
    """Another measuring run holds this machine."""

    exit_code = 2


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started_at: str
    what: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, since {self.started_at} ({self.what})"


def lock_path(machine_fingerprint: str) -> Path:
    """$PERFGATE_RUN_LOCK, else one file per machine identity in the system's temporary directory."""
    override = os.environ.get("PERFGATE_RUN_LOCK")
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"perfgate-run-{machine_fingerprint}.lock"


def read_holder(path: Path) -> Holder | None:
    try:
        doc = json.loads(path.read_text())
        return Holder(int(doc["pid"]), str(doc["host"]), str(doc["started_at"]), str(doc.get("what", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def run_lock(path: Path, *, wait: bool, what: str, on_wait: object = None) -> Iterator[Holder]:
    """Hold the machine for one run. `wait`: block until the holder ends; else RunLockedError naming it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = read_holder(path)
            named = holder.describe() if holder else "another process"
            if not wait:
                raise RunLockedError(
                    f"another measuring run holds this machine: {named}; lock {path}. `bench run --wait` waits for it"
                ) from None
            if callable(on_wait):
                on_wait(named)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        me = Holder(os.getpid(), socket.gethostname(), datetime.now(UTC).isoformat(timespec="seconds"), what)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
        yield me
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the kernel lock

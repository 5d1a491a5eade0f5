"""The seam between the runner and what it measures.

An engine says who a build is, which process(es) to start for one (build, model) item, and how to
read what they left behind. `run_isolated` runs every engine's processes the same way: own session
and process group, PR_SET_PDEATHSIG, a timeout that kills the group, rusage from wait4, the log
captured to a file, a private temp folder that is always removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.builds.identity import BuildIdentity
from bench.diagnose import gpu_devices
from bench.metrics import Status
from bench.store.records import Figures, Measurement

LOG_LIMIT = 2_000_000  # characters of load log kept per result
TOKEN_VAR = "PERFGATE_ITEM_TOKEN"  # marks every process of one item, so none outlives it


@dataclass(frozen=True)
class ProcessSpec:
    """One process to start. Its maker is given a function that names the item's files (`/dev/fd/N`)."""

    argv: list[str]
    env: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)  # item files written before the start
    stdout_file: str | None = None  # stdout to this item file (else into the log)
    read: tuple[str, ...] = ()  # item files to read back
    cwd: Path | None = None


@dataclass(frozen=True)
class ProcessOutcome:
    returncode: int
    timed_out: bool
    log: str
    rss_peak_bytes: int | None
    wall_s: float
    files: dict[str, str] = field(default_factory=dict)  # read back; absent when the process did not write it


@dataclass(frozen=True)
class ItemSpec:
    """What to measure for one (build, model) item: the suite settings, resolved."""

    model_path: Path
    n_prompt: int
    n_gen: int
    repetitions: int
    warmup: int
    n_gpu_layers: int  # -1: all
    n_batch: int
    n_ubatch: int
    threads: int
    flash_attn: str  # auto | on | off
    seed: int
    n_layer: int | None = None  # from the GGUF header, where readable
    load_repetitions: int = 1  # fresh-process loads per item (the measuring process is the first)

    @property
    def layers_total(self) -> int | None:
        """Offloadable layers: the blocks and the output layer, as llama.cpp counts them."""
        return self.n_layer + 1 if self.n_layer else None


class Engine(Protocol):
    name: str

    def identify(self) -> BuildIdentity: ...

    def processes(self, item: ItemSpec) -> list[Callable[[FileNamer], ProcessSpec]]:
        """The processes of one item, run one after another (KoboldCPP: one per repetition)."""
        ...

    def measurement(self, item: ItemSpec, outcomes: list[ProcessOutcome], judge: Judge) -> Measurement: ...


class Judge(Protocol):
    """The runner's classifier, bound to the run's expectations (GPU expected, layers asked, timeout)."""

    def __call__(self, outcome: ProcessOutcome, *, layers_total: int | None = None, proof: str | None = None) -> Any:
        """`proof`: the load finished, shown outside the log (the engine read its result file)."""
        ...


def _die_with_parent(runner_pid: int) -> Callable[[], None]:
    def arm() -> None:
        if sys.platform.startswith("linux"):
            # PR_SET_PDEATHSIG = 1: a runner killed with SIGKILL takes its worker with it
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
            if os.getppid() != runner_pid:  # the runner died between fork and prctl: too late to be told
                os._exit(1)

    return arm


FileNamer = Callable[[str], str]  # an item file's name → the path the process opens it by
# a name with this prefix is a file the process creates itself (KoboldCPP writes a CSV header only into a file
# that does not exist yet): a real path in a private folder, removed after the item, or by the next runner
NEW_FILE = "new:"


def _sweep_folders_of_dead_runners() -> None:
    for leftover in Path(tempfile.gettempdir()).glob("perfgate-*-*"):
        pid = leftover.name.split("-")[1]
        if pid.isdigit() and leftover.is_dir() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def run_isolated(make: Callable[[FileNamer], ProcessSpec], timeout_s: float) -> ProcessOutcome:
    """Run one process in its own process group; kill the whole group past the timeout.

    The item's files (spec in, results out, the log) are unlinked temporary files handed to the process
    as /dev/fd/N: nothing is ever on disk under a name, so a runner killed mid-item leaves nothing behind
    (files a program must create itself, NEW_FILE names, live in a folder the next runner sweeps)."""
    _sweep_folders_of_dead_runners()
    with contextlib.ExitStack() as stack:
        handles: dict[str, Any] = {}
        folder: list[Path] = []

        def name_to_path(name: str) -> str:
            if name.startswith(NEW_FILE):  # a program that must create the file itself gets a real path
                if not folder:
                    folder.append(Path(tempfile.mkdtemp(prefix=f"perfgate-{os.getpid()}-")))
                    stack.callback(shutil.rmtree, folder[0], True)
                return str(folder[0] / name.removeprefix(NEW_FILE))
            if name not in handles:
                handles[name] = stack.enter_context(tempfile.TemporaryFile(prefix="perfgate-"))
            return f"/dev/fd/{handles[name].fileno()}"

        spec = make(name_to_path)
        for name, content in spec.files.items():
            name_to_path(name)
            handles[name].write(content.encode())
            handles[name].flush()
            handles[name].seek(0)
        for name in spec.read:
            name_to_path(name)
        if spec.stdout_file is not None and spec.stdout_file.startswith(NEW_FILE):
            raise ValueError("stdout goes to an unlinked item file, not a new one")
        log_fh = stack.enter_context(tempfile.TemporaryFile(prefix="perfgate-log-"))
        stdout: Any = log_fh
        if spec.stdout_file is not None:
            name_to_path(spec.stdout_file)
            stdout = handles[spec.stdout_file]
        start = time.monotonic()
        token = uuid.uuid4().hex
        try:
            proc = subprocess.Popen(
                spec.argv,
                env={**spec.env, TOKEN_VAR: token},
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=log_fh,
                pass_fds=[h.fileno() for h in handles.values()],
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as exc:  # not executable, wrong format: the process never existed
            return ProcessOutcome(127, False, f"perfgate: cannot start {spec.argv[0]}: {exc}\n", None, 0.0)
        timed_out, status, rusage = _wait(proc.pid, timeout_s, token)
        wall_s = time.monotonic() - start
        returncode = os.waitstatus_to_exitcode(status)
        _kill_tree(proc.pid, token)  # anything the process left running dies with its item
        log_fh.seek(0)
        log = log_fh.read().decode(errors="replace")
        files = {}
        for name in spec.read:
            if name.startswith(NEW_FILE):
                with contextlib.suppress(OSError):
                    files[name] = Path(name_to_path(name)).read_text(errors="replace")
                continue
            handles[name].seek(0)
            content = handles[name].read().decode(errors="replace")
            if content:  # an empty file: the process never wrote it
                files[name] = content
    rss = rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) if rusage else None
    if len(log) > LOG_LIMIT:
        log = log[: LOG_LIMIT // 2] + "\n[... perfgate cut the middle of this log ...]\n" + log[-LOG_LIMIT // 2 :]
    return ProcessOutcome(returncode, timed_out, log, rss, wall_s, files)


def _wait(pid: int, timeout_s: float, token: str) -> tuple[bool, int, Any]:
    """Block until the process ends (no polling to disturb its timing); kill its group past the timeout."""
    ended: list[tuple[int, int, Any]] = []
    waiter = threading.Thread(target=lambda: ended.append(os.wait4(pid, 0)), daemon=True)
    waiter.start()
    waiter.join(timeout_s)
    timed_out = waiter.is_alive()
    if timed_out:
        _kill_tree(pid, token)
        waiter.join()
    _, status, rusage = ended[0]
    return timed_out, status, rusage


def _marked(token: str) -> list[int]:
    """Live processes that carry this item's token in their environment: every descendant of the item,
    including those that started their own session or were orphaned (a pasted token is inherited)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").exists() else []:
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def _kill_tree(pgid: int, token: str) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    for pid in _marked(token):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def measurement_of(
    item: ItemSpec,
    diag: Any,
    outcome: ProcessOutcome,
    *,
    wrote_result: bool,
    layers_total: int | None,
    samples_pp_ns: list[int],
    samples_tg_ns: list[int],
    fields: dict[str, Any],
    n_prompt: int | None = None,
    n_gen: int | None = None,
    log: str | None = None,
    engine_info: dict[str, Any] | None = None,
    samples_load_ns: list[int] | None = None,
) -> Measurement:
    """An engine's reading of its processes, with the classifier's verdict, as one storable measurement.

    Samples are kept whenever the engine measured (a partial offload or CPU fallback still ran);
    comparisons only ever use results whose status is ok."""
    status, reason = diag.status, diag.reason
    if status == Status.OK and not wrote_result:
        status, reason = Status.CRASHED, f"exited with code {outcome.returncode} and wrote no result"
    if diag.offloaded:
        layers_total = diag.offloaded[1]
        layers_offloaded: int | None = diag.offloaded[0]
    elif layers_total is not None:
        layers_offloaded = layers_total if gpu_devices(diag.memory) else 0
    else:
        layers_offloaded = None
    memory = diag.memory
    measured = {
        "layers_offloaded": layers_offloaded,
        "layers_total": layers_total,
        "backend": diag.backend,
        "model_buf_bytes": sum(memory.get("model", {}).values()) or None,
        "kv_bytes": sum(memory.get("kv", {}).values()) or None,
        "compute_bytes": sum(memory.get("compute", {}).values()) or None,
        "device_budget_bytes": memory.get("device_budget_bytes"),
        "exit_code": outcome.returncode,
        "signal": signal.Signals(-outcome.returncode).name
        if outcome.returncode < 0 and -outcome.returncode in signal.valid_signals()
        else None,
        **{k: v for k, v in fields.items() if v is not None},
    }
    rss = [v for v in (fields.get("rss_peak_bytes"), outcome.rss_peak_bytes) if v]
    measured["rss_peak_bytes"] = max(rss) if rss else None
    return Measurement(
        str(status),
        reason,
        item.n_prompt if n_prompt is None else n_prompt,
        item.n_gen if n_gen is None else n_gen,
        samples_pp_ns=list(samples_pp_ns),
        samples_tg_ns=list(samples_tg_ns),
        log=outcome.log if log is None else log,
        figures=Figures(**measured),
        memory=memory,
        engine_info=engine_info or {},
        samples_load_ns=list(samples_load_ns or []),
    )

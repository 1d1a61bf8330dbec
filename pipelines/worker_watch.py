"""Which video a DALI worker was reading when a signal killed it.

A stored value can kill the process that reads it: a flipped size or page number inside an otherwise whole LMDB
file sends LMDB's read to a mapped page past the end of the file (SIGBUS). No check short of walking LMDB's pages
ourselves on every read sees it coming, and Python cannot survive the signal. DALI then reports only "Worker data
receiving interrupted", and its pool waits forever for the other workers if they ignore the SIGTERM it sends them
(a forked worker inherits the trainer's SIGTERM handler, which only records the signal).

So each worker writes the index of the video it is about to read into a slot file of its own (through a shared map
of it: no system call on the read path; blanked after the read), and arms faulthandler to write into a fault file
of its own. After a failed DALI call the loader asks `death()`: a fault file with text names the worker that a
signal killed and, through its slot, the video. `stop_workers` then kills the workers left (SIGKILL: see above) so
that closing the pipeline returns. The files live in the loader's temporary folder; the pickled watch is only that
folder's path.

Not covered: a read in the loader's own process dies with the signal (`ClipSource.sample`, which bench and tests
call without workers; the source never arms the watch there, so as not to take over the process's faulthandler).
Training and evaluation read only in workers (there is always at least one), and DALI's C++ threads never touch a
shard: the external source hands them copies in shared memory. `prep verify` reads in a pool of its own
(prep/verify.py) and names the video too.
"""
from __future__ import annotations

import faulthandler
import glob
import mmap
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

_BLANK = b" " * 20 + b"\n"
# faulthandler's first line, "Fatal Python error: <what>", for the signals it handles
_FAULTS = {"Bus error": "SIGBUS", "Segmentation fault": "SIGSEGV", "Floating-point exception": "SIGFPE",
           "Floating point exception": "SIGFPE", "Aborted": "SIGABRT", "Illegal instruction": "SIGILL"}
_armed: dict[str, tuple[int, mmap.mmap, object]] = {}  # folder -> (pid, slot map, fault file) of this process


@dataclass(frozen=True)
class WorkerDeath:
    pid: int
    signal: str  # "SIGBUS", ...
    video: int | None  # the index the worker was reading, None if it was between reads


class WorkerWatch:
    def __init__(self, folder: str):
        self.folder = folder

    # ------------------------------------------------------------------ in the worker

    def _slot(self) -> mmap.mmap:
        armed = _armed.get(self.folder)
        if armed is None or armed[0] != os.getpid():  # first read in this process (a forked child inherits _armed)
            pid = os.getpid()
            with open(os.path.join(self.folder, f"slot-{pid}"), "w+b") as f:
                f.write(_BLANK)
                f.flush()
                slot = mmap.mmap(f.fileno(), len(_BLANK))  # shared: what is written is in the file, death or not
            fault = open(os.path.join(self.folder, f"fault-{pid}"), "w")  # kept open: faulthandler writes to its fd
            faulthandler.enable(file=fault, all_threads=False)
            armed = _armed[self.folder] = (pid, slot, fault)
        return armed[1]

    def reading(self, video: int) -> None:
        self._slot()[:] = b"%20d\n" % video

    def done(self) -> None:
        self._slot()[:] = _BLANK

    # ------------------------------------------------------------------ in the loader's process

    def _pids(self, kind: str) -> list[int]:
        return sorted(int(p.rsplit("-", 1)[1]) for p in glob.glob(os.path.join(self.folder, f"{kind}-*")))

    def death(self) -> WorkerDeath | None:
        """The first worker that a signal killed (its fault file holds faulthandler's report), or None."""
        for pid in self._pids("fault"):
            with open(os.path.join(self.folder, f"fault-{pid}"), errors="replace") as f:
                first = f.readline().strip()
            if not first:
                continue
            what = first.removeprefix("Fatal Python error: ")
            with open(os.path.join(self.folder, f"slot-{pid}")) as f:
                slot = f.read().strip()
            return WorkerDeath(pid, _FAULTS.get(what, what), int(slot) if slot else None)
        return None

    def lost_one(self) -> bool:
        """Whether a worker that has read is gone (killed from outside, say by the OOM killer: no fault file)."""
        return any(_state_of(pid) in (None, "Z") for pid in self._pids("slot"))

    def stop_workers(self) -> None:
        """SIGKILL every worker of this watch still alive, then forget them all (a new pipeline has new workers)."""
        for pid in self._pids("slot"):
            if _parent_of(pid) == os.getpid():
                try:  # not reaped here: DALI's pool joins its processes and reaps them
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for kind in ("slot", "fault"):
                try:
                    os.remove(os.path.join(self.folder, f"{kind}-{pid}"))
                except FileNotFoundError:
                    pass


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, parent, ...), None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _state_of(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _parent_of(pid: int) -> int | None:
    """The parent of a process (None when it is gone): a pid is only ever killed if it is our child."""
    fields = _stat(pid)
    return int(fields[1]) if fields else None


class StuckPool:
    """The one case the loader cannot recover from: a worker killed while the thread that sends its results held the
    lock of DALI's result queue. DALI's pool then deadlocks: its observer waits for that lock to close the queue and
    the loader's thread waits for a notification that never comes (seen with 2 of the fuzz's 45 SIGBUS offsets, about
    one run in three). A daemon thread checks once a second while the loader's thread is inside a DALI call; when a
    worker's death has gone unhandled for `grace` seconds, it prints the one line and ends the process with status
    1: the run cannot checkpoint from there, but it says what to run instead of hanging."""

    def __init__(self, watch: WorkerWatch, line_of, grace: float = 30.0, prog: str = "pipelines"):
        self.watch, self.line_of, self.grace, self.prog = watch, line_of, grace, prog
        self.since: float | None = None  # when the loader's thread entered the DALI call it is in
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pipelines-stuck-pool")
        self._thread.start()

    @contextmanager
    def in_dali(self):
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.since = None

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seen = None
        while not self._stop.wait(1.0):
            death = self.watch.death() if self.since is not None else None
            if death is None:
                seen = None
                continue
            seen = seen or time.monotonic()
            if time.monotonic() - seen >= self.grace:
                os.write(2, f"{self.prog}: error: {self.line_of(death)}, and DALI's worker pool deadlocked after it: "
                            "check the dataset with `python -m prep verify`\n".encode())
                self.watch.stop_workers()
                os._exit(1)

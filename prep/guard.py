"""What keeps one prep run from harming another or itself: an exclusive lock per part of OUT, and stop signals
turned into an orderly stop (workers ended, open shard left resumable, one line saying how to resume)."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PrepFailed(Exception):
    """A run that cannot start or go on, or that gave nothing usable: one line, exit status 1."""


class Busy(PrepFailed):
    """Another process holds the lock."""


class PrepInterrupted(Exception):
    """SIGINT or SIGTERM arrived; `progress` says how far the run got."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum, self.progress = signum, ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name}{self.progress}; "
                "run the same command again to resume")


_HELD: dict[str, list] = {}  # lock path -> [fd, depth, pid]: a process may take its own lock again (merge in a run)
PREP_REFUSAL = "{what} is being written by another prep ({holder}): wait for it to end, or use another --out"


class LockHeld(Exception):
    """Another process holds the lock; `holder` says who (pid, host, start time)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextmanager
def exclusive(path: str, what: str, refusal: str = PREP_REFUSAL, on_stale=None):
    """Holds an exclusive fcntl lock on `path` (created if need be), the holder's pid, host and start time written
    in it, or raises Busy(`refusal` with {what} and {holder}). The lock dies with its process, so a killed run
    never leaves a lock that blocks; `on_stale(holder)` is told of a record such a run left behind (a run that
    ends normally clears it)."""
    held = _HELD.get(path)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
    else:
        try:
            fd, stale = take_lock(path)
        except LockHeld as e:
            raise Busy(refusal.format(what=what, holder=e.holder)) from None
        _HELD[path] = [fd, 1, os.getpid()]
        if stale and on_stale is not None:
            on_stale(stale)
    try:
        yield
    finally:
        held = _HELD[path]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[path]
            release_lock(held[0])


def take_lock(path: str) -> tuple[int, str]:
    """(a file descriptor holding an exclusive flock on `path`, the holder recorded there by a process that ended
    without releasing it, or ""); LockHeld naming the holder when another process holds it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LockHeld(holder) from None
    stale = _holder(fd, alive=False) if os.fstat(fd).st_size else ""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
    return fd, stale


def release_lock(fd: int) -> None:
    """Clears the holder's record (a later taker then knows the lock was released, not left) and unlocks."""
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _holder(fd: int, alive: bool = True) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0))
        text = f"pid {h['pid']} on {h['host']}, started {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet" if alive else "holder not recorded"
    if not alive and h["host"] == socket.gethostname() and not _running(h["pid"]):
        text += ", no longer running"
    return text


def _running(pid) -> bool:
    """Whether a process of this host has that pid (one we may not signal, or a pid we cannot read: assume so)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError, OverflowError):
        pass
    return True


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise PrepInterrupted in the main thread; repeats are ignored while the run cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise PrepInterrupted(signum)

    old = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def signals_blocked():
    """Around forking workers: a stop signal must not reach a child before it has set its own handlers."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def quiet_worker() -> None:
    """Pool initializer: the parent stops the workers (SIGTERM, the default action: no traceback); a Ctrl-C sent to
    the whole process group is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

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


@contextmanager
def exclusive(path: str, what: str):
    """Holds an exclusive fcntl lock on `path` (created if need be) or raises Busy naming the holder.
    The lock dies with its process, so a killed run never leaves a stale one."""
    held = _HELD.get(path)
    if held is not None and held[2] == os.getpid():
        held[1] += 1
    else:
        _HELD[path] = [_acquire(path, what), 1, os.getpid()]
    try:
        yield
    finally:
        held = _HELD[path]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[path]
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])


def _acquire(path: str, what: str) -> int:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise Busy(f"{what} is being written by another prep ({holder}): wait for it to end, or use another --out"
                   ) from None
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
    return fd


def _holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0))
        return f"pid {h['pid']} on {h['host']}, started {h['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"


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

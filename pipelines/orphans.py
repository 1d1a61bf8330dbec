"""DALI Python workers that die with the training process.

A trainer killed with SIGKILL (the OOM killer, a scheduler's preemption, `kill -9`) cannot stop DALI's Python
workers (the parallel external source), and they live on as orphans blocked on their queue, each holding hundreds
of MB (checked: tests/test_train.py's kill test found them alive). On Linux a worker asks the kernel to send it
SIGKILL when its parent goes (prctl PR_SET_PDEATHSIG); elsewhere this is a no-op. (prep's decode pool needs
none of this: multiprocessing's pool workers exit on their own when the parent's end of the task pipe closes.)

Ctrl-C sends SIGINT to the whole foreground process group, workers included. A forked worker inherits the
trainer's handler (which only records the signal), but a spawned one (the default on a GPU) starts with Python's
KeyboardInterrupt and dies, and the trainer's graceful stop then fails with "Worker data receiving interrupted"
instead of checkpointing. The stop is the trainer's decision: workers ignore SIGINT (`ignore_interrupts`). A forked
worker also ignores it from its first instant (`workers_ignore_interrupts` around their start): one waiting for its
first task would otherwise print a KeyboardInterrupt traceback of its own when `python -m eval` is interrupted.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_armed_in: int | None = None  # the pid that has asked already (a forked child inherits the variable)


def die_with_parent(parent_pid: int) -> None:
    """Call in the worker: from now on it is killed when `parent_pid` (its parent) exits."""
    global _armed_in
    if _armed_in == os.getpid() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: the worker only loses this safety net
    _armed_in = os.getpid()
    if os.getppid() != parent_pid:  # the parent died before the request reached the kernel
        os._exit(1)


def ignore_interrupts() -> None:
    """Call in a worker: SIGINT (Ctrl-C reaches the whole process group) is the parent's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def workers_ignore_interrupts():
    """Around the start of worker processes: SIGINT is blocked, so that the workers (forked or spawned, both inherit
    the signal mask) never take it, while one that reaches this process meanwhile stays pending and is delivered to
    its own handler when the block is lifted."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

"""What every command-line entry point shares: range-checked numeric option types, and the one place where an
expected failure becomes one line on stderr and an exit status instead of a traceback.

prep is the lowest package, so this module imports nothing from the others: `python -m train`, `eval`, `models`
and the bench scripts all use it.

Expected failures (damaged or missing input, a bad argument, permissions, a full disk, an interruption) print
`PROG: error: ...` naming the file and exit non-zero; anything else is a bug and keeps its traceback. `--debug`
on any command line (or VIDKIT_DEBUG=1) prints the traceback of an expected failure too.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import traceback
from typing import Callable, Sequence

import yaml

from .guard import PrepFailed, PrepInterrupted
from .store import DamagedEntry, DiskFull

DEBUG_FLAG = "--debug"
DEBUG_ENV = "VIDKIT_DEBUG"
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


# --------------------------------------------------------------------------- numeric option types


class Ranged:
    """An argparse `type=` that parses a number and refuses it outside its range (NaN and the infinities always: no
    setting is ever NaN). `range_checked` is what the test that walks every parser looks for."""

    range_checked = True

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, above: bool = False):
        """`above`: the value must be strictly greater than `low`."""
        self.kind, self.low, self.high, self.above = kind, low, high, above
        what = "integer" if kind is int else "number"
        if low is not None and high is not None and not above:
            self.__name__ = f"{what} in {low:g}..{high:g}"
        elif low is not None:
            self.__name__ = f"{what} {'>' if above else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        else:
            self.__name__ = f"{what} <= {high:g}" if high is not None else f"finite {what}"

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise self._refusal(text) from None
        too_low = self.low is not None and (value <= self.low if self.above else value < self.low)
        if too_low or (self.high is not None and value > self.high) or not math.isfinite(value):
            raise self._refusal(text)
        return value

    def _refusal(self, text: str) -> argparse.ArgumentTypeError:
        article = "an" if self.__name__[0] in "aeiou" else "a"
        return argparse.ArgumentTypeError(f"expected {article} {self.__name__}, got {text!r}")

    def __repr__(self) -> str:
        return self.__name__


def int_range(low: int | None = None, high: int | None = None) -> Ranged:
    return Ranged(int, low, high)


def float_range(low: float | None = None, high: float | None = None, above: bool = False) -> Ranged:
    return Ranged(float, low, high, above)


def range_checked(parse: Callable) -> Callable:
    """Marks a custom `type=` function that already refuses values out of range (e.g. sizes like 1G)."""
    parse.range_checked = True
    return parse


POSITIVE_INT = int_range(1)  # counts of things that must exist: clips, batch size, frames, steps
COUNT = int_range(0)  # 0 allowed: often "automatic" or "none"
POSITIVE_FLOAT = float_range(0.0, above=True)
NON_NEGATIVE_FLOAT = float_range(0.0)
FINITE_FLOAT = float_range()
JPEG_QUALITY = int_range(1, 100)


# --------------------------------------------------------------------------- one line instead of a traceback


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """Lists --debug in --help; `run_main` takes it off the command line before any parser sees it."""
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"print the traceback of an expected failure too (or set {DEBUG_ENV}=1)")


def _where(e: OSError) -> str:
    return f"{e.filename}: " if e.filename else ""


def _os_line(e: OSError) -> tuple[str, int]:
    reason = e.strerror or str(e)
    if isinstance(e, FileNotFoundError):
        return f"{_where(e)}{reason}: check the path", EXIT_BAD_INPUT
    if isinstance(e, PermissionError):
        return f"{_where(e)}{reason}: check the file's permissions or choose another path", EXIT_BAD_INPUT
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{_where(e)}{reason}: free some space and run the same command again", EXIT_FAILED
    return f"{_where(e)}{reason}", EXIT_FAILED


def _yaml_line(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is None:
        return f"YAML error: {problem}"
    return f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {problem}: fix the file"


def one_line(e: BaseException, expected: tuple = ()) -> tuple[str, int] | None:
    """(message, exit status) for an expected failure, None for a bug (whose traceback is wanted)."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)", EXIT_INTERRUPTED
    if isinstance(e, PrepInterrupted):
        return str(e), e.exit_code
    if isinstance(e, DiskFull):
        return f"error: {e}: free some space and run the same command again to resume", EXIT_FAILED
    if isinstance(e, PrepFailed):
        return f"error: {e}", EXIT_FAILED
    if isinstance(e, DamagedEntry):
        return f"error: {e}: check the dataset with `python -m prep verify`", EXIT_FAILED
    if isinstance(e, yaml.YAMLError):
        return f"error: {_yaml_line(e)}", EXIT_BAD_INPUT
    if isinstance(e, OSError):
        line, code = _os_line(e)
        return f"error: {line}", code
    if isinstance(e, (ValueError, *expected)):
        text = "; ".join(part.strip() for part in str(e).splitlines() if part.strip()) or type(e).__name__
        return f"error: {text}", EXIT_BAD_INPUT
    return None


def debug_wanted(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_main(prog: str, body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
             expected: tuple = ()) -> int:
    """Runs `body(argv)` (without --debug) and turns an expected failure into one line and its exit status.
    `expected`: further exception types that this command raises for bad input (besides ValueError, OSError...)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_wanted(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        return body(argv) or 0
    except BaseException as e:  # noqa: BLE001 - sorted below: only the expected ones are caught
        found = one_line(e, expected)
        if found is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"{prog}: {found[0]}", file=sys.stderr, flush=True)
        return found[1]

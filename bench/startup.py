"""Start-up time of every command: `--help`, an argument error and `models list`, against `python -c pass`.

    python -m bench.startup [--runs 5] [--only PATTERN] [--markdown]

Each command runs `--runs` times in a fresh interpreter from this checkout (wall time, the median and the fastest
are shown, and the median CPU time of the process, which a busy machine changes less); one more run under `python -X importtime` names the slowest top-level import and whether torch was
imported. The goal (issue #24) is under a second for each, which on most machines means: no torch, DALI or PyAV,
and no model family. The machine's load changes the figures, so it is printed beside them.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from prep.cli import POSITIVE_INT, add_debug_option, run_main

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "python -c pass"
BAD_OPTION = "--no-such-option"
GOAL_S = 1.0
# (what a user types after `python`, its arguments)
COMMANDS = [(BASELINE, ["-c", "pass"])]
for _command in ("prep", "train", "train average", "train.demo", "eval", "eval views", "eval features", "eval predict",
                 "eval ensemble", "models", "models list", "bench.startup"):
    _module, *_sub = _command.split()
    COMMANDS.append((f"-m {_command} --help", ["-m", _module, *_sub, "--help"]))
    if _command != "models list":
        COMMANDS.append((f"-m {_command} {BAD_OPTION}", ["-m", _module, *_sub, BAD_OPTION]))
COMMANDS.append(("-m models list", ["-m", "models", "list"]))


def run_once(args: list[str], importtime: bool = False) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the child, its result)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":"))
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), *args]
    before, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, _children_cpu() - before, done


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def slowest_import(importtime_log: str) -> tuple[str, float, bool]:
    """(top-level module, its cumulative seconds, whether torch was imported) from `-X importtime` lines."""
    best, best_us, torch_seen = "", 0, False
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        torch_seen |= name.strip() == "torch"
        if not name.startswith("  ") and int(cumulative) > best_us:  # one space: imported by the command itself
            best, best_us = name.strip(), int(cumulative)
    return best, best_us / 1e6, torch_seen


def measure(label: str, args: list[str], runs: int) -> dict:
    times, cpu, codes = [], [], set()
    for _ in range(runs):
        seconds, cpu_seconds, done = run_once(args)
        times.append(seconds)
        cpu.append(cpu_seconds)
        codes.add(done.returncode)
    _, _, traced = run_once(args, importtime=True)
    module, module_s, torch_seen = slowest_import(traced.stderr)
    return {"command": label, "median_s": statistics.median(times), "min_s": min(times),
            "cpu_s": statistics.median(cpu), "exit": sorted(codes), "slowest_import": module,
            "slowest_import_s": module_s, "torch": torch_seen}


def machine() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load}, "
            f"Python {platform.python_version()}")


def table(rows: list[dict]) -> list[str]:
    base = next((r["median_s"] for r in rows if r["command"] == BASELINE), 0.0)
    lines = ["| command (`python ...`) | median s | fastest s | over `python -c pass` s | CPU s | exit | torch "
             "| slowest import (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = "" if r["median_s"] - base < GOAL_S else " (over 1 s)"
        lines.append(f"| `{r['command']}` | {r['median_s']:.2f}{flag} | {r['min_s']:.2f} | "
                     f"{r['median_s'] - base:.2f} | {r['cpu_s']:.2f} | {','.join(map(str, r['exit']))} | "
                     f"{'yes' if r['torch'] else 'no'} | {r['slowest_import']} ({r['slowest_import_s']:.2f}) |")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=POSITIVE_INT, default=5, help="runs per command (the median is shown)")
    parser.add_argument("--only", default="*", help="fnmatch pattern on the commands, e.g. '*models*'")
    add_debug_option(parser)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    chosen = [(label, a) for label, a in COMMANDS if label == BASELINE or fnmatch.fnmatch(label, args.only)]
    print(f"# {machine()}; {args.runs} runs each; command: python -m bench.startup {' '.join(argv)}".rstrip())
    rows = []
    for label, command_args in chosen:
        rows.append(measure(label, command_args, args.runs))
        print(f"  {label}: {rows[-1]['median_s']:.2f} s", file=sys.stderr, flush=True)
    print("\n".join(table(rows)))
    return 0


def main(argv=None) -> int:
    return run_main("bench.startup", _main, argv)


if __name__ == "__main__":
    sys.exit(main())

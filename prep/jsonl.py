"""Reading JSON-lines files (manifests, reject lists, logs): the readers of a store and its writer share it, so that
reading a prepped store never imports the writer (prep.runner: the decoder, PyAV, simplejpeg)."""
from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("prep")


def read_jsonl(path: str, drop_torn_tail: bool = False) -> list[dict]:
    """Every row of a JSON-lines file ([] if there is none); a line that is not one JSON object (a file cut short,
    damaged or edited by hand) is refused naming the file and the line. `drop_torn_tail`: a log appended line by
    line may end in half a line (its writer was killed mid-write): that one is left out with a warning."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if drop_torn_tail and not line.endswith("\n"):
                try:
                    rows.append(json_line(line, path, number))
                except ValueError:
                    log.warning("%s, line %d: left out, cut short (its writer was stopped mid-line)", path, number)
                continue
            rows.append(json_line(line, path, number))
    return rows


def json_line(line: str, path: str, number: int) -> dict:
    """Line `number` of `path` as a JSON object, or a ValueError naming both."""
    try:
        row = json.loads(line)
    except ValueError as e:
        why = f"{e.msg}: column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        torn = "" if line.endswith("\n") else "; the file ends mid-line"
        raise ValueError(f"{path}, line {number}: not a whole JSON line ({why}{torn}): the file is damaged; "
                         "restore it or run the command that wrote it again") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}: the file is "
                         "damaged; restore it or run the command that wrote it again")
    return row

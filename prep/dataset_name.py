"""The name of the dataset a prepped folder holds, for `make train DATA=...` (runs/<model>_<dataset>, the recipe
configs/<model>_<dataset>.yaml): what its prep.json records (the prep preset: ssv2, kinetics400, ...), else, for a
store of `prep videos` or one prepped before names were recorded, the folder's name.

Standard library only, and run as a file (`python3 prep/dataset_name.py DATA`): the Makefile calls it before
`make install` has made the environment. Prints the name; exit status 1 with the reason when DATA is no prepped
dataset.
"""
from __future__ import annotations

import json
import os
import sys

JOB_FILE = "prep.json"  # prep.runner writes it first, with the job's arguments and the dataset's name


def dataset_name(data: str) -> tuple[str, str]:
    """(name, where it comes from); ValueError when `data` is no prepped dataset."""
    path = os.path.join(data, JOB_FILE)
    try:
        with open(path) as f:
            job = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"DATA={data} is no prepped dataset (no {path}): prep it first (make prep) or "
                         "give DATASET=NAME") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}): give DATASET=NAME") from None
    name = job.get("dataset") if isinstance(job, dict) else None
    if isinstance(name, str) and name:
        return name, path
    return os.path.basename(os.path.normpath(os.path.abspath(data))), "the folder's name"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 prep/dataset_name.py DATA")
        return 2
    try:
        name, source = dataset_name(argv[0])
    except ValueError as e:
        print(e)
        return 1
    print(name)
    print(f"DATASET={name} (from {source}; DATASET=NAME chooses another)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

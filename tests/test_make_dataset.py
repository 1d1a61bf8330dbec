"""`make train` names the run after the dataset DATA was prepped from (its prep.json), and refuses in one line
without DATA or DATASET (make -n: nothing is run, the command is printed)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "--no-print-directory", "train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def _store(folder: Path, **job) -> Path:
    folder.mkdir()
    (folder / "prep.json").write_text(json.dumps({"format": "lmdb", **job}))
    return folder


def test_prep_records_its_preset_in_prep_json(data):
    assert json.loads((data / "prep.json").read_text())["dataset"] == "synthetic"


def test_the_run_is_named_after_the_stores_dataset(tmp_path):
    store = _store(tmp_path / "k400", dataset="kinetics400")
    run = _make(f"DATA={store}")
    assert run.returncode == 0, run.stderr
    assert f"--dataset kinetics400 --data {store}" in run.stdout
    assert "DATASET=kinetics400 (from" in run.stderr
    given = _make(f"DATA={store}", "DATASET=mine")
    assert "--dataset mine " in given.stdout


def test_a_store_without_a_recorded_name_is_named_after_its_folder(tmp_path):
    store = _store(tmp_path / "my_clips")  # `prep videos`, or a store prepped before names were recorded
    assert "--dataset my_clips " in _make(f"DATA={store}").stdout


def test_neither_data_nor_dataset_is_refused_in_one_line(tmp_path):
    run = _make()
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.strip().count("\n") == 0 and "needs DATA=" in run.stderr
    missing = _make(f"DATA={tmp_path / 'nothing'}")
    assert missing.returncode != 0 and "no prepped dataset" in missing.stderr and missing.stdout == ""

"""The Makefile's front door, read with make -n (nothing is run, the commands are printed): `make train` names the run
after the dataset DATA was prepped from (its prep.json) and refuses in one line without DATA or DATASET; `make
install` shows what pip installs and takes torch's own index when asked."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(*args: str, target: str = "train") -> subprocess.CompletedProcess:
    # MODEL_NAME given: the registry lookup of an alias would import torch for each call
    return subprocess.run(["make", "-n", "-B", "--no-print-directory", target, "MODEL_NAME=i3d_resnet50", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


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


def test_install_shows_each_package_and_says_size_and_time():
    run = _make(target="install")
    pip = next(line for line in run.stdout.splitlines() if "pip install" in line and "-r " in line)
    assert " -q " not in pip and "Collecting" in pip  # pip's line per package reaches the user
    assert "6.7 GB" in run.stdout and re.search(r"done in .* s, .*du -sh", run.stdout)


def test_torch_index_installs_torch_and_torchvision_from_it_first():
    pins = re.findall(r"^(torch(?:vision)?==\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert len(pins) == 2
    run = _make("TORCH_INDEX=https://download.pytorch.org/whl/cpu", target="install")
    lines = run.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    assert "grep -oE '^torch(vision)?==[^ ]+'" in lines[first] + lines[first + 1]
    assert first < next(i for i, line in enumerate(lines) if "-r .venv/requirements.lock" in line)
    assert "--index-url" not in _make(target="install").stdout  # by default pip's configured index

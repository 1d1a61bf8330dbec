"""Every entry point against the faults of issue 21's "one line, not a traceback", by class: numeric options out of
range (refused at parse time), a manifest torn mid-line, a damaged shard header, a YAML syntax error, a torn
metrics.jsonl on resume, Ctrl-C during eval; and verify comparing the manifest with the shards both ways. Each test
failed on the code before prep/cli.py (see each one's note)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import models
from helpers import copy_store, stores_per_format
from procs import children
from prep import open_dataset
from prep.__main__ import main as prep_main
from train.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("prep", "pipelines", "models", "train", "eval", "bench")
HELP_ARGV = {"train.__main__": ["average", "--help"]}  # `python -m train --help` lists config keys (train/config.py)
NO_DEBUG = {"bench.gpu_check"}  # runs on a device's bare python3, without the project's environment


# --------------------------------------------------------------------------- every parser: numeric types


def _modules_with_parsers() -> list[str]:
    found = []
    for package in PACKAGES:
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith(".py") and "ArgumentParser(" in Path(os.path.join(ROOT, package, name)).read_text():
                found.append(f"{package}.{name[:-3]}")
    return found


def _parsers_of(module: str, monkeypatch, capsys) -> list[argparse.ArgumentParser]:
    """The parsers `module.main(--help)` parses with (its subcommands' through their _SubParsersAction)."""
    seen, parse = [], argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        seen.append(self)
        return parse(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(HELP_ARGV.get(module, ["--help"]))
    assert e.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    return seen


def _actions(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{prefix}{name} ")
        else:
            yield f"{prefix}{(action.option_strings or [action.dest])[-1]}", action


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take options in the end: `parser` itself, or its subcommands'."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [leaf for a in subs for sub in a.choices.values() for leaf in _parsers(sub)] if subs else [parser]


def _numeric(action: argparse.Action) -> bool:
    if action.nargs == 0 or action.choices is not None:  # flags; a fixed set of values is its own check
        return False
    default = action.default[0] if isinstance(action.default, list) and action.default else action.default
    plain_number = isinstance(default, (int, float)) and not isinstance(default, bool)
    return action.type in (int, float) or (action.type is None and plain_number) or \
        getattr(action.type, "range_checked", False)


def test_every_numeric_option_of_every_command_is_range_checked(monkeypatch, capsys):
    """Walks the parser of every module that builds one (a new entry point or option cannot skip it). Old code:
    `--quality`, `--fps`, `--clips`... were plain int/float."""
    modules = _modules_with_parsers()
    assert {"prep.__main__", "eval.__main__", "eval.features", "eval.predict", "eval.ensemble", "models.__main__",
            "train.__main__", "bench.prep"} <= set(modules)
    unchecked, checked = [], 0
    for module in modules:
        for parser in _parsers_of(module, monkeypatch, capsys):
            leaves = [sub for sub in _parsers(parser) if module not in NO_DEBUG]
            assert all("--debug" in sub._option_string_actions for sub in leaves), f"{module}: no --debug"
            for name, action in _actions(parser):
                if not _numeric(action):
                    continue
                if not getattr(action.type, "range_checked", False):
                    unchecked.append(f"{module}: {name}")
                    continue
                checked += 1
                for bad in ("nan", "inf", "-inf", "x"):  # never a setting, whatever the range
                    with pytest.raises(argparse.ArgumentTypeError):
                        action.type(bad)
                low = getattr(action.type, "low", None)
                if low is not None:
                    with pytest.raises(argparse.ArgumentTypeError):
                        action.type(str(low - 1))
    assert not unchecked, f"numeric options without a range-checked type (prep.cli): {unchecked}"
    assert checked > 60


PARSE_REFUSALS = [
    ("prep.__main__", ["videos", "--list", "L", "--root", "R", "--out", "O", "--quality", "150"], "--quality"),
    ("prep.__main__", ["videos", "--list", "L", "--root", "R", "--out", "O", "--short-side", "-5"], "--short-side"),
    ("prep.__main__", ["ssv2", "--root", "R", "--out", "O", "--fps", "0"], "--fps"),
    ("prep.__main__", ["ucf101", "--root", "R", "--out", "O", "--fps", "inf"], "--fps"),
    ("prep.__main__", ["synthetic", "--out", "O", "--fps", "nan"], "--fps"),
    ("prep.__main__", ["synthetic", "--out", "O", "--videos", "0"], "--videos"),
    ("prep.__main__", ["verify", "O", "--workers", "0"], "--workers"),
    ("eval.__main__", ["--ckpt", "C", "--clips", "0"], "--clips"),
    ("eval.__main__", ["--ckpt", "C", "--batch-size", "0"], "--batch-size"),
    ("eval.__main__", ["--ckpt", "C", "--eval-scale", "nan"], "--eval-scale"),
    ("eval.__main__", ["features", "--ckpt", "C", "--clips", "0"], "--clips"),
    ("eval.__main__", ["predict", "V.mp4", "--ckpt", "C", "--batch-size", "0"], "--batch-size"),
    ("eval.__main__", ["predict", "V.mp4", "--ckpt", "C", "--top", "0"], "--top"),
    ("eval.__main__", ["ensemble", "A", "B", "--weights", "nan", "1"], "--weights"),
    ("models.__main__", ["export", "--ckpt", "C", "--out", "O", "--frames", "0"], "--frames"),
    ("models.__main__", ["info", "tsn_tiny", "--num-classes", "0"], "--num-classes"),
    ("train.__main__", ["average", "RUN", "--top", "0"], "--top"),
    ("bench.prep", ["--quality", "0"], "--quality"),
    ("bench.images", ["--batch", "-1"], "--batch"),
]


@pytest.mark.parametrize("module,argv,option", PARSE_REFUSALS, ids=[" ".join(a[:2] + a[-2:]) for _, a, _ in
                                                                    PARSE_REFUSALS])
def test_values_out_of_range_are_refused_at_parse_time(module, argv, option, tmp_path, monkeypatch, capsys):
    """Old code: prep ran with --quality 150 and rejected every video as unreadable, --fps 0/inf exited 0, --fps nan
    was stored in prep.json; eval reached its own check (or none) after parsing."""
    monkeypatch.chdir(tmp_path)  # whatever ran anyway would write here
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "expected" in err, err
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- a small store with several shards


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """20 synthetic videos (10 train, 10 val) in small shards, one store per format."""
    return stores_per_format(tmp_path_factory, "--shard-size", "20K")


def _checkpoint(path, data) -> str:
    classes = open_dataset(data).classes
    torch.manual_seed(0)
    model = models.create_model("tsn_tiny", num_classes=len(classes), num_frames=4)
    cfg = TrainConfig(model="tsn_tiny", data=str(data), threads=1).to_dict()
    torch.save({"model_name": "tsn_tiny", "num_classes": len(classes), "classes": list(classes),
                "contract": model.input_contract.replace(crop_size=32).to_dict(), "config": cfg,
                "model": model.state_dict(), "ema": None}, path)
    return str(path)


def _train_argv(data, output, *extra) -> list[str]:
    return ["--model", "tsn_tiny", "--data", str(data), "--output", str(output), "--name", "run", "--batch-size", "2",
            "--py-workers", "1", "--threads", "1", "--amp", "none", "--optimizer", "adamw", "--lr", "0.002",
            "--epochs", "1", "--eval-every", "0", "--seed", "0", "--no-progress", *extra]


def _eval_argv(ckpt, data, out, *extra) -> list[str]:
    return ["--ckpt", ckpt, "--data", data, "--out", str(out), "--batch-size", "4", "--py-workers", "1",
            "--frames", "4", "--no-progress", *extra]


def _main(command: str):
    module = {"verify": "prep.__main__", "train": "train.__main__", "eval": "eval.__main__",
              "features": "eval.features"}[command]
    return importlib.import_module(module).main


def _run(command: str, data: str, tmp_path) -> int:
    """`command` on the store `data` in-process, with what it needs beside it."""
    if command == "verify":
        return prep_main(["verify", data, "--workers", "1"])
    if command == "train":
        return _main("train")(_train_argv(data, tmp_path / "runs"))
    ckpt = _checkpoint(tmp_path / "best.pt", data)
    return _main(command)(_eval_argv(ckpt, data, tmp_path / f"{command}-out"))


def _only_line(err: str, prefix: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("WARNING", "INFO"))]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- a manifest torn mid-line


@pytest.mark.parametrize("command", ["verify", "train", "eval", "features"])
def test_a_torn_manifest_is_one_line_naming_file_and_line(stores, tmp_path, capsys, command):
    """Old code: "Expecting value: line 1 column 172" (naming no file) or a traceback."""
    data = copy_store(stores["lmdb"], tmp_path)
    manifest = os.path.join(data, "manifest.jsonl")
    text = Path(manifest).read_text()
    lines = text.splitlines(keepends=True)
    ckpt = _checkpoint(tmp_path / "best.pt", data) if command in ("eval", "features") else ""
    Path(manifest).write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    if ckpt:
        code = _main(command)(_eval_argv(ckpt, data, tmp_path / "out"))
    else:
        code = _run(command, data, tmp_path)
    assert code == 2
    prog = {"verify": "prep", "features": "eval features"}.get(command, command)
    line = _only_line(capsys.readouterr().err, f"{prog}: error: ")
    assert f"{manifest}, line {len(lines)}: not a whole JSON line" in line and "ends mid-line" in line, line


def test_debug_adds_the_traceback(stores, tmp_path, capsys, monkeypatch):
    data = copy_store(stores["lmdb"], tmp_path)
    with open(os.path.join(data, "manifest.jsonl"), "a") as f:
        f.write('{"id": "x", "spl')
    assert prep_main(["verify", data, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("prep: error: ")
    monkeypatch.setenv("VIDKIT_DEBUG", "1")
    assert prep_main(["verify", data]) == 2 and "Traceback" in capsys.readouterr().err


# --------------------------------------------------------------------------- damaged shard headers


def _shard_of(data: str, split: str) -> str:
    return open_dataset(data, split).rows[0]["shard"]


def _flip(path: str, offsets) -> None:
    raw = bytearray(Path(path).read_bytes())
    for at in offsets:
        raw[at] ^= 0xFF
    Path(path).write_bytes(raw)


def damage_lmdb_version(data: str, shard: str) -> None:
    """The version field of both LMDB meta pages (page header 16 bytes, then magic, then version)."""
    _flip(os.path.join(data, "shards", shard), [20, 4096 + 20])


def damage_arrow_identity(data: str, shard: str) -> None:
    """A byte of the shard identity in the Arrow schema's metadata, every copy (not valid UTF-8 any more)."""
    path = os.path.join(data, "shards", shard)
    identity = next(r["shard_id"] for r in open_dataset(data).rows if r["shard"] == shard).encode()
    raw = Path(path).read_bytes()
    places = [i for i in range(len(raw)) if raw.startswith(identity, i)]  # the schema at the start and in the footer
    _flip(path, [i + len(identity) - 1 for i in places])


def damage_arrow_batch(data: str, shard: str) -> None:
    """The first byte of a video's key inside its record batch (not valid UTF-8 any more)."""
    path = os.path.join(data, "shards", shard)
    key = next(r["key"] for r in open_dataset(data).rows if r["shard"] == shard).encode()
    raw = Path(path).read_bytes()
    _flip(path, [raw.index(key, 8)])


DAMAGES = {"lmdb-version": ("lmdb", damage_lmdb_version), "arrow-identity": ("arrow", damage_arrow_identity),
           "arrow-batch": ("arrow", damage_arrow_batch)}


@pytest.mark.parametrize("damage", DAMAGES)
def test_verify_lists_a_damaged_shard_and_its_videos(stores, tmp_path, capsys, damage):
    """Old code: lmdb.Error "LMDB data format v254 is not supported", UnicodeDecodeError: tracebacks."""
    fmt, damage_fn = DAMAGES[damage]
    data = copy_store(stores[fmt], tmp_path)
    shard = _shard_of(data, "val")
    damage_fn(data, shard)
    assert prep_main(["verify", data, "--workers", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    in_shard = sorted(r["id"] for r in open_dataset(data).rows if r["shard"] == shard)
    assert [line for line in out if line.startswith("UNREADABLE SHARD")] == [
        line for line in out if line.startswith(f"UNREADABLE SHARD {shard}: ")] != []
    assert sorted(line.split()[1] for line in out if line.startswith("DAMAGED ")) == in_shard
    assert out[-1].startswith(f"verify: {len(in_shard)} damaged entr")


@pytest.mark.slow
@pytest.mark.parametrize("command,damage", [("eval", "arrow-batch"), ("eval", "lmdb-version"),
                                            ("features", "arrow-identity")])
def test_eval_and_features_leave_out_the_videos_of_a_damaged_shard(stores, tmp_path, capsys, command, damage):
    """Old code: a traceback from the pipeline's workers (the damage raised a ValueError or crashed the reader)."""
    fmt, damage_fn = DAMAGES[damage]
    data = copy_store(stores[fmt], tmp_path)
    shard = _shard_of(data, "val")
    damage_fn(data, shard)
    assert _run(command, data, tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    summary = json.loads(out[-1])
    in_shard = sorted(r["id"] for r in open_dataset(data, "val").rows if r["shard"] == shard)
    assert sorted(d["id"] for d in summary["damaged"]) == in_shard
    assert shard in summary["damaged"][0]["reason"]
    assert f"{len(in_shard)} damaged videos left out" in out[-2]


@pytest.mark.slow
def test_training_replaces_the_videos_of_a_damaged_shard_and_says_so(stores, tmp_path, capsys):
    """Old code: the first read of the shard raised UnicodeDecodeError in a data worker: the run died."""
    data = copy_store(stores["arrow"], tmp_path)
    shard = _shard_of(data, "train")
    damage_arrow_batch(data, shard)
    assert _run("train", data, tmp_path) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out.splitlines()[-1])
    in_shard = [r["id"] for r in open_dataset(data, "train").rows if r["shard"] == shard]
    assert row["damaged_videos"] == len(in_shard) and row["replaced_samples"] >= len(in_shard)
    said = [line for line in captured.err.splitlines() if line.startswith("train: ")]
    assert len(said) == 1 and f"{len(in_shard)} damaged stored videos" in said[0] and in_shard[0] in said[0]


def test_a_shard_truncated_while_in_use_is_a_damaged_shard(stores, tmp_path):
    """Old code: the next read touched a mapped page past the end of the file and the reader died of SIGBUS."""
    from prep import DamagedShard

    for fmt in ("lmdb", "arrow"):
        data = copy_store(stores[fmt], tmp_path, fmt)
        ds = open_dataset(data)
        ds.frames(0, [0])  # the shard is open and checked
        path = os.path.join(data, "shards", ds.rows[0]["shard"])
        os.truncate(path, os.path.getsize(path) // 2)
        with pytest.raises(DamagedShard, match="truncated while in use"):
            ds.frames(0, range(ds.rows[0]["num_frames"]))


# --------------------------------------------------------------------------- verify: the manifest both ways


@pytest.mark.parametrize("fmt", ["lmdb", "arrow"])
def test_verify_compares_the_manifest_with_the_shards_both_ways(stores, tmp_path, capsys, fmt):
    """Old code: a manifest without a whole row passed (exit 0); a row naming no stored video was a DAMAGED line."""
    data = copy_store(stores[fmt], tmp_path)
    manifest = os.path.join(data, "manifest.jsonl")
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    dropped = rows.pop(3)
    ghost = dict(rows[0], id="ghost.mp4", key="99999999")
    Path(manifest).write_text("".join(json.dumps(r) + "\n" for r in rows + [ghost]))
    assert prep_main(["verify", data, "--workers", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"UNLISTED {dropped['id']} ({dropped['shard']}): stored in the shard, but manifest.jsonl does not list it" \
        in out
    assert f"MISSING ghost.mp4 ({ghost['shard']}): listed in manifest.jsonl, but its shard does not hold it" in out
    assert not [line for line in out if line.startswith("DAMAGED")]
    assert out[-1] == "verify: 0 damaged entries in 0 damaged shards, 1 listed but not stored, 1 stored but not listed"


# --------------------------------------------------------------------------- config and run-folder files


def test_a_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path, capsys):
    """Old code: a yaml.scanner.ScannerError traceback."""
    config = tmp_path / "bad.yaml"
    config.write_text("model: tsn_tiny\nlr: 0.1\naugment: {flip: true\nepochs: 2\n")
    assert _main("train")(["--config", str(config)]) == 2
    line = _only_line(capsys.readouterr().err, "train: error: ")
    assert f"{config}, line " in line and "YAML syntax error" in line, line


@pytest.mark.slow
def test_a_torn_metrics_log_is_dropped_on_resume_and_a_damaged_one_named(stores, tmp_path, capsys):
    """A kill mid-append leaves half a last line: the resume leaves it out. Damage elsewhere: one line naming the
    file and line. Old code: "Unterminated string starting at: line 1 column 181" or a traceback."""
    data = copy_store(stores["lmdb"], tmp_path)
    train = _main("train")
    assert train(_train_argv(data, tmp_path / "runs", "--batch-size", "4")) == 0  # one epoch: 2 steps
    metrics = tmp_path / "runs" / "run" / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + whole[: len(whole) // 2])  # the second epoch's line, cut short by a kill
    capsys.readouterr()
    assert train(_train_argv(data, tmp_path / "runs", "--batch-size", "4", "--epochs", "2")) == 0
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text("{oops\n" + metrics.read_text())
    assert train(_train_argv(data, tmp_path / "runs", "--batch-size", "4", "--epochs", "3")) == 2
    line = _only_line(capsys.readouterr().err, "train: error: ")
    assert f"{metrics}, line 1: not a whole JSON line" in line, line


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_during_eval_is_one_line_and_exit_130(stores, tmp_path):
    """Old code: about 100 lines, the main process's KeyboardInterrupt traceback and one per DALI worker."""
    data = copy_store(stores["lmdb"], tmp_path)
    ckpt = _checkpoint(tmp_path / "best.pt", data)
    argv = _eval_argv(ckpt, data, tmp_path / "out", "--clips", "50", "--crops", "10", "--batch-size", "2",
                      "--py-workers", "2")
    proc = subprocess.Popen([sys.executable, "-m", "eval", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while len(children(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # the pipeline's workers are up
    time.sleep(2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _only_line(err, "eval: ") == "eval: interrupted (Ctrl-C)"

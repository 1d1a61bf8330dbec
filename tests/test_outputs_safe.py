"""Nothing of the user's is destroyed: every kept output is written whole or not at all (a disk that fills up
mid-write leaves the previous file, never a torn one); an output that is an input is refused; what would end a
command after its work (an output folder it cannot write, a missing validation split, too little space for a
checkpoint) is refused at its start, in one line."""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil

import pytest
import torch

import models
from eval.__main__ import main as eval_main
from models.__main__ import main as models_main
from prep.__main__ import main as prep_main
from train import checkpoint as ckpt
from train.__main__ import main as train_main
from helpers import FillingFile

TRAIN = dict(model="tsn_tiny", batch_size=4, py_workers=1, threads=1, amp="none", optimizer="adamw", lr=0.002,
             epochs=1, eval_every=0, seed=0, name="run")


# ------------------------------------------------------------------------------ a disk that fills up


@pytest.fixture
def full_disk(monkeypatch):
    """full_disk(folder, budget): from now on files opened for writing below `folder` fill the disk after
    `budget` bytes in all. Python's open is where every writer here ends up (numpy, csv, json, matplotlib/PIL,
    onnx, torch.save to a file object), so the writers themselves run unchanged."""
    real_open = builtins.open

    def arm(folder, budget: int) -> None:
        left, folder = [budget], os.path.realpath(folder)

        def filling_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and \
                    os.path.realpath(file).startswith(folder + os.sep):
                return FillingFile(f, left)
            return f

        monkeypatch.setattr(builtins, "open", filling_open)
        monkeypatch.setattr(io, "open", filling_open)

    return arm


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _write_reports(out, version: int, labelled: bool = True):
    from eval.metrics import accuracy_report
    from eval.run import write_reports

    classes = ["a", "b", "c"]
    scores = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(version)), 1)
    labels = [0, 1, 2, 0, 1, 2] if labelled else [None] * 6
    report = accuracy_report(scores, torch.tensor(labels), classes) if labelled else None
    summary = {"model": f"m{version}", "checkpoint": "x.pt", "split": "val", "videos": 6,
               **{k: report[k] if report else None for k in ("top1", "top5", "mean_class_acc")}}
    write_reports(str(out), summary, report, scores, [{"id": f"v{i}", "label": label} for i, label in
                                                      enumerate(labels)], classes, views=scores[:, None])


def _ensemble(out, version: int):
    from eval.fusion import ensemble

    inputs = out.parent / "inputs"
    if not inputs.exists():
        for k in (1, 2):
            _write_reports(inputs / f"m{k}" / "eval", version=10 + k)
    ensemble([str(inputs / "m1" / "eval"), str(inputs / "m2" / "eval")], [1.0, float(version)], str(out))


def _features(out, version: int):
    from eval.dump import save_features

    feats = torch.randn(5, 16, generator=torch.Generator().manual_seed(version))
    save_features(str(out), feats, [{"id": f"v{i}", "label": i % 2} for i in range(5)], ["a", "b"], {"model": "m"})


def _checkpoints(out, version: int):
    model = torch.nn.Linear(64, 32)
    torch.nn.init.constant_(model.weight, version)
    state = {"model_name": "linear", "num_classes": 32, "model": model.state_dict(), "epoch": version}
    try:
        ckpt.save_atomic(state, str(out / ckpt.LAST), keep_previous=True)
    except ckpt.CheckpointWriteError as e:  # what the trainer turns into its one line
        assert str(e).startswith(f"no space left on device writing {out / ckpt.LAST}"), e
        raise


def _export(out, version: int):
    from models.export import export

    torch.manual_seed(version)
    export(models.create_model("tsn_tiny", num_classes=5, num_frames=2).eval(), "onnx", str(out / "model.onnx"))


def _curves(out, version: int):
    from eval.plots import plot_curves

    rows = [{"epoch": e, "train_loss": 1.0 / (e + version), "val_top1": 10.0 * e, "lr": 0.1} for e in range(1, 4)]
    plot_curves(rows, str(out / "curves.png"), title=f"run {version}")


WRITERS = {"eval reports": _write_reports, "eval submissions": lambda out, v: _write_reports(out, v, labelled=False),
           "eval ensemble": _ensemble, "eval features": _features, "train checkpoints": _checkpoints,
           "models export": _export, "train curves": _curves}


@pytest.mark.parametrize("share", [0, 0.5])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_disk_full_midway_leaves_each_file_old_or_new_never_torn(writer, share, tmp_path, full_disk):
    """Each kept file, after a write that failed part-way, holds its previous contents or the whole new ones; no
    temporary file is left behind. (Before: the files were written in place and a failure left them cut.)"""
    write = WRITERS[writer]
    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir(), new.mkdir()
    write(out, 1)
    old = _contents(out)
    write(new, 2)
    fresh = {k: v.replace(bytes(new), bytes(out)) for k, v in _contents(new).items()}  # reports name their folder
    full_disk(out, int(share * sum(map(len, fresh.values()))))  # the disk fills up this far into the new files
    with pytest.raises((OSError, RuntimeError)):
        write(out, 2)
    after = _contents(out)
    assert not [n for n in after if n.endswith(".tmp")], after.keys()
    for name, data in after.items():
        assert data in (old.get(name), fresh.get(name)), f"{name} is torn ({len(data)} bytes)"
    if share == 0:  # failed at its first byte: everything as it was
        assert after == old


def test_prep_manifests_are_rewritten_whole(data, tmp_path, full_disk):
    """`prep merge` rewrites manifest.jsonl and rejects.jsonl; a full disk leaves the previous ones."""
    from prep.runner import merge

    out = tmp_path / "data"
    shutil.copytree(data, out, ignore=shutil.ignore_patterns("source"))
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text().replace('"train"', '"train" '))
    old = _contents(out)
    full_disk(out, 100)
    with pytest.raises(Exception, match="no space left on device"):
        merge(str(out))
    assert _contents(out) == old


# ------------------------------------------------------------------------------ an output that is an input


def _one_line(err: str, prefix: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def test_ensemble_refuses_to_write_over_an_input(tmp_path, capsys):
    for k in (1, 2):
        _write_reports(tmp_path / f"m{k}", version=k)
    kept = _contents(tmp_path / "m1")
    assert eval_main(["ensemble", str(tmp_path / "m1"), str(tmp_path / "m2" / "scores.npy"),
                      "--out", str(tmp_path / "m1" / ".." / "m1")]) == 2
    line = _one_line(capsys.readouterr().err, "eval ensemble: error: ")
    assert "--out" in line and line.count(str(tmp_path / "m1")) == 2, line
    assert _contents(tmp_path / "m1") == kept


def _toolkit_checkpoint(path, classes=("a", "b", "c", "d", "e")) -> str:
    model = models.create_model("tsn_tiny", num_classes=len(classes), num_frames=2)
    torch.save({"model_name": "tsn_tiny", "num_classes": len(classes), "classes": list(classes),
                "contract": model.input_contract.to_dict(), "config": {"model_args": {}}, "model": model.state_dict(),
                "ema": None}, path)
    return str(path)


def test_export_refuses_to_write_over_its_checkpoint_and_keeps_a_model_it_cannot_check(tmp_path, capsys,
                                                                                        monkeypatch):
    ckpt_path = _toolkit_checkpoint(tmp_path / "best.pt")
    before = (tmp_path / "best.pt").read_bytes()
    assert models_main(["export", "--ckpt", ckpt_path, "--out", str(tmp_path / "." / "best.pt")]) == 2
    line = _one_line(capsys.readouterr().err, "models: error: ")
    assert "--out" in line and "--ckpt" in line, line
    assert (tmp_path / "best.pt").read_bytes() == before
    # an export that fails its check is not written: the model.onnx the user kept stays
    (tmp_path / "model.onnx").write_bytes(b"the user's kept export")
    monkeypatch.setattr("models.export.TOLERANCE", -1.0)
    assert models_main(["export", "--ckpt", ckpt_path, "--out", str(tmp_path / "model.onnx")]) == 2
    assert "not written" in _one_line(capsys.readouterr().err, "models: error: ")
    assert (tmp_path / "model.onnx").read_bytes() == b"the user's kept export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "model.onnx"]


def test_prep_refuses_a_class_list_it_would_replace(data, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    src = data / "source"
    (out / "classes.json").write_text((src / "classes.txt").read_text())  # the user's list, under prep's name
    kept = (out / "classes.json").read_bytes()
    assert prep_main(["videos", "--list", f"train={src / 'train.txt'}", "--root", str(src), "--classes",
                      str(out / "classes.json"), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err, "prep: error: ")
    assert "--classes" in line and "--out" in line, line
    assert (out / "classes.json").read_bytes() == kept and sorted(os.listdir(out)) == ["classes.json"]


def test_train_average_refuses_to_write_over_an_averaged_checkpoint(tmp_path, capsys):
    for epoch, score in ((1, 50.0), (2, 60.0)):
        state = {"model_name": "linear", "num_classes": 2, "model": {"w": torch.full((2,), float(epoch))},
                 "epoch": epoch, "config": {}}
        ckpt.save_atomic(state, str(tmp_path / ckpt.kept_name(epoch, score)))
    target = tmp_path / ckpt.kept_name(2, 60.0)
    kept = target.read_bytes()
    assert train_main(["average", str(tmp_path), "--top", "2", "--out", str(target)]) == 2
    assert "--out" in _one_line(capsys.readouterr().err, "train average: error: ")
    assert target.read_bytes() == kept


def _train_argv(data, output, *extra) -> list[str]:
    argv = ["--no-progress", "--data", str(data), "--output", str(output)]
    for key, value in TRAIN.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv + list(extra)


def test_training_refuses_a_pretrained_checkpoint_of_its_own_run_folder(data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    _toolkit_checkpoint(run / "best.pt")
    kept = (run / "best.pt").read_bytes()
    monkeypatch.setattr("train.engine.Trainer.train_epoch", _no_training)
    assert train_main(_train_argv(data, tmp_path, "--pretrained", str(run / "best.pt"), "--resume", "none")) == 2
    line = _one_line(capsys.readouterr().err, "train: error: ")
    assert "--pretrained" in line and str(run) in line and "--name" in line, line
    assert (run / "best.pt").read_bytes() == kept


def test_predict_refuses_an_input_inside_the_folders_it_writes(tmp_path, capsys, monkeypatch):
    keep = tmp_path / "keep"
    (keep / "store").mkdir(parents=True)
    (keep / "store" / "a.mp4").write_bytes(b"a video the user put there")
    monkeypatch.setattr("eval.predict.prep_videos", _no_training)
    assert eval_main(["predict", str(keep / "store" / "a.mp4"), "--ckpt", _toolkit_checkpoint(tmp_path / "m.pt"),
                      "--keep", str(keep), "--device", "cpu"]) == 2
    line = _one_line(capsys.readouterr().err, "eval predict: error: ")
    assert str(keep / "store" / "a.mp4") in line and "--keep" in line, line


# ------------------------------------------------------------------------------ checked at the start


def _no_training(*args, **kwargs):
    raise AssertionError("the work started before the checks")


@pytest.fixture
def blocked(tmp_path):
    """An output path that cannot be made: a file stands where its folder would be (a read-only folder does not
    stop root, who runs these tests on CI)."""
    (tmp_path / "a_file").write_text("")
    return tmp_path / "a_file" / "out"


def _eval_checkpoint(tmp_path, data) -> str:
    from train.config import TrainConfig

    path = tmp_path / "best.pt"
    classes = json.loads((data / "classes.json").read_text())
    model = models.create_model("tsn_tiny", num_classes=len(classes), num_frames=2)
    torch.save({"model_name": "tsn_tiny", "num_classes": len(classes), "classes": classes,
                "contract": model.input_contract.replace(crop_size=32).to_dict(),
                "config": TrainConfig(model="tsn_tiny", data=str(data), threads=1).to_dict(),
                "model": model.state_dict(), "ema": None}, path)
    return str(path)


@pytest.mark.parametrize("command", ["eval", "features", "ensemble", "predict", "export", "prep"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(command, data, tmp_path, blocked,
                                                                             monkeypatch, capsys):
    monkeypatch.setattr("eval.run.score_videos", _no_training)
    monkeypatch.setattr("eval.embedding.average_views", _no_training)
    monkeypatch.setattr("eval.predict.prep_videos", _no_training)
    monkeypatch.setattr("eval.fusion.fuse", _no_training)
    monkeypatch.setattr("models.__main__._recognise", _no_training)
    ckpt_path = _eval_checkpoint(tmp_path, data)
    view = ["--ckpt", ckpt_path, "--device", "cpu", "--py-workers", "1", "--no-progress"]
    argv, prefix = {
        "eval": (["--out", str(blocked)] + view, "eval: error: "),
        "features": (["features", "--out", str(blocked)] + view, "eval features: error: "),
        "ensemble": (["ensemble", str(tmp_path / "m1"), str(tmp_path / "m2"), "--out", str(blocked)],
                     "eval ensemble: error: "),
        "predict": (["predict", str(data / "source" / "videos"), "--keep", str(blocked)] + view,
                    "eval predict: error: "),
        "export": (None, "models: error: "),
        "prep": (None, "prep: error: "),
    }[command]
    if command == "ensemble":
        for k in (1, 2):
            _write_reports(tmp_path / f"m{k}", version=k)
    if command == "export":
        code = models_main(["export", "--ckpt", ckpt_path, "--out", str(blocked / "model.onnx")])
    elif command == "prep":
        src = data / "source"
        code = prep_main(["videos", "--list", f"train={src / 'train.txt'}", "--root", str(src), "--out", str(blocked),
                          "--workers", "1", "--no-progress"])
    else:
        code = eval_main(argv)
    assert code == 2
    line = _one_line(capsys.readouterr().err, prefix)
    assert "cannot write to" in line and str(tmp_path / "a_file") in line, line


def test_training_refuses_an_unwritable_run_folder_at_start(data, blocked, capsys, monkeypatch):
    monkeypatch.setattr("train.engine.Trainer.train_epoch", _no_training)
    assert train_main(_train_argv(data, blocked)) == 2
    assert "cannot write to" in _one_line(capsys.readouterr().err, "train: error: ")


def test_a_missing_validation_split_is_refused_before_the_first_epoch(data, tmp_path, capsys, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr("train.engine.Trainer.train_epoch", _no_training)
        assert train_main(_train_argv(data, tmp_path, "--eval-every", "1", "--val-split", "valid")) == 2
        line = _one_line(capsys.readouterr().err, "train: error: ")
        assert "'valid'" in line and "eval_every 0" in line, line
        assert not (tmp_path / "run").exists()  # a run refused at its start leaves no folder behind
    # asked for no validation, the run trains without the split
    assert train_main(_train_argv(data, tmp_path, "--eval-every", "0", "--val-split", "valid", "--max-steps",
                                  "1")) == 0
    assert ckpt.load(str(tmp_path / "run" / "last.pt"))["step"] == 1


def test_too_little_space_for_a_checkpoint_is_refused_at_start(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("train.engine.Trainer.train_epoch", _no_training)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("prep.outputs.shutil.disk_usage", lambda p: usage._replace(free=1024))
    assert train_main(_train_argv(data, tmp_path)) == 2
    line = _one_line(capsys.readouterr().err, "train: error: ")
    assert str(tmp_path / "run") in line and "0 MiB free" in line and "checkpoint" in line, line
    assert not (tmp_path / "run").exists()

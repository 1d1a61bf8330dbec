"""python -m eval on any checkpoint: damaged videos reported (never a crash), class lists checked,
reports valid JSON."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from eval.run import evaluate
from prep import open_dataset

from helpers import CPU, damage_video, tsn_checkpoint


def test_damaged_val_video_is_listed_and_left_out(data, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(data, root)
    damage_video(root, 2, "val")
    classes = open_dataset(root, "val").classes
    ckpt = tsn_checkpoint(tmp_path / "best.pt", root, classes)
    summary = evaluate(ckpt, CPU, clips=2, crops=1, batch_size=4, py_workers=1, progress=False,
                       out_dir=str(tmp_path / "out"))
    val = open_dataset(root, "val")
    assert summary["videos"] == len(val) - 1
    assert [d["id"] for d in summary["damaged"]] == [val.rows[2]["id"]]
    assert summary["damaged"][0]["reason"]
    saved = json.loads(Path(tmp_path / "out" / "metrics.json").read_text())
    assert saved["damaged"] == summary["damaged"]
    preds = json.loads(Path(tmp_path / "out" / "predictions.json").read_text())
    assert len(preds) == len(val) - 1 and val.rows[2]["id"] not in {p["id"] for p in preds}


def test_checkpoint_of_other_classes_is_refused(data, tmp_path):
    ckpt = tsn_checkpoint(tmp_path / "best.pt", data, [f"other{i}" for i in range(5)])
    with pytest.raises(ValueError, match="other classes than the dataset"):
        evaluate(ckpt, CPU, batch_size=4, py_workers=1, progress=False, out_dir=str(tmp_path / "out"))


def test_subset_of_checkpoint_classes_is_scored_by_name(data, tmp_path):
    classes = open_dataset(data, "val").classes
    wider = ["extra_b"] + list(reversed(classes)) + ["extra_a"]
    ckpt = tsn_checkpoint(tmp_path / "best.pt", data, wider)
    summary = evaluate(ckpt, CPU, batch_size=4, py_workers=1, progress=False, out_dir=str(tmp_path / "out"))
    assert summary["videos"] == len(open_dataset(data, "val"))
    preds = json.loads(Path(tmp_path / "out" / "predictions.json").read_text())
    assert all(t["class"] in classes for p in preds for t in p["top"])


def test_nan_weights_give_an_error_not_an_accuracy(data, tmp_path):
    classes = open_dataset(data, "val").classes
    path = tmp_path / "best.pt"
    tsn_checkpoint(path, data, classes)
    state = torch.load(path, weights_only=True)
    state["model"]["fc.weight"].fill_(float("nan"))
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="non-finite scores"):
        evaluate(str(path), CPU, batch_size=4, py_workers=1, progress=False, out_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_scores_dump_and_ensemble(data, tmp_path):
    """Each eval writes its score matrix and index; fusing two dumps equals the weighted mean of their scores."""
    import numpy as np

    from eval.__main__ import main as eval_main
    from eval.dump import load_scores

    classes = open_dataset(data, "val").classes
    outs = []
    for seed in (0, 1):
        ckpt = tsn_checkpoint(tmp_path / f"m{seed}.pt", data, classes, seed=seed)
        out = tmp_path / f"eval{seed}"
        evaluate(ckpt, CPU, clips=2, batch_size=4, py_workers=1, progress=False, out_dir=str(out), save_views=True)
        outs.append(str(out))
    (a, index), (b, _) = load_scores(outs[0]), load_scores(outs[1])
    val = open_dataset(data, "val")
    assert a.shape == (len(val), len(classes)) and index["ids"] == [r["id"] for r in val.rows]
    views = np.load(os.path.join(outs[0], "scores_views.npy"))
    assert views.shape == (len(val), 2, len(classes))
    np.testing.assert_allclose(views.mean(1), a, atol=1e-6)
    assert not np.allclose(a, b)
    fused_dir = tmp_path / "fused"
    assert eval_main(["ensemble", *outs, "--weights", "3", "1", "--out", str(fused_dir)]) == 0
    fused, _ = load_scores(str(fused_dir))
    np.testing.assert_allclose(fused, (3 * a + b) / 4, atol=1e-6)
    metrics = json.loads(Path(fused_dir / "metrics.json").read_text())
    expected_top1 = 100 * np.mean(((3 * a + b) / 4).argmax(1) == np.array(index["labels"]))
    assert abs(metrics["top1"] - expected_top1) < 1e-6 and (fused_dir / "confusion.png").exists()
    assert (fused_dir / "confusion.csv").read_text().startswith("true \\ predicted,")


def test_ensemble_refuses_other_videos(data, tmp_path, capsys):
    from eval.__main__ import main as eval_main

    classes = open_dataset(data, "val").classes
    ckpt = tsn_checkpoint(tmp_path / "m.pt", data, classes)
    evaluate(ckpt, CPU, batch_size=4, py_workers=1, progress=False, out_dir=str(tmp_path / "a"))
    evaluate(ckpt, CPU, split="train", batch_size=4, py_workers=1, progress=False, out_dir=str(tmp_path / "b"))
    assert eval_main(["ensemble", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "differ in their videos" in err and len(err.splitlines()) == 1

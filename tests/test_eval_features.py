"""python -m eval features: pre-logit embeddings of the evaluation's views, averaged or per view, damaged videos
left out and listed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from eval.__main__ import main as eval_main
from eval.embedding import extract_features
from eval.run import evaluate
from prep import open_dataset
from prep.synthetic_images import SHAPES, generate_image_folder
from helpers import CPU, damage_video, tsn_checkpoint
from train.config import TrainConfig

COMMON = ["--device", "cpu", "--batch-size", "4", "--py-workers", "1", "--no-progress", "--amp", "none"]


def _features(out) -> tuple[np.ndarray, dict]:
    return np.load(out / "features.npy", allow_pickle=False), json.loads(Path(out / "features_index.json").read_text())


@pytest.fixture(scope="module")
def extracted(data, tmp_path_factory):
    """A 2-clip evaluation's scores, and the features of the same views: averaged and per view."""
    tmp = tmp_path_factory.mktemp("features")
    classes = open_dataset(data, "val").classes
    ckpt = tsn_checkpoint(tmp / "best.pt", data, classes)
    evaluate(ckpt, CPU, clips=2, batch_size=4, py_workers=1, progress=False, amp="none", out_dir=str(tmp / "eval"),
             save_views=True)
    for name, extra in (("mean", []), ("views", ["--per-view"])):
        assert eval_main(["features", "--ckpt", ckpt, "--clips", "2", "--out", str(tmp / name), *COMMON, *extra]) == 0
    return ckpt, tmp


def test_one_embedding_per_video_with_its_index(data, extracted):
    ckpt, tmp = extracted
    features, index = _features(tmp / "mean")
    val = open_dataset(data, "val")
    dim = models.create_model("tsn_tiny").num_features
    assert features.dtype == np.float32 and features.shape == (len(val), dim)
    assert index["ids"] == [r["id"] for r in val.rows] and index["labels"] == [r["label"] for r in val.rows]
    assert index["classes"] == val.classes and index["damaged"] == []
    assert (index["model"], index["checkpoint"], index["split"], index["views"]) == ("tsn_tiny", ckpt, "val", 2)
    assert np.isfinite(features).all() and not np.allclose(features[0], features[1])


def test_view_mean_equals_the_mean_of_the_per_view_features(extracted):
    _, tmp = extracted
    mean, _ = _features(tmp / "mean")
    views, index = _features(tmp / "views")
    assert views.shape == (mean.shape[0], 2, mean.shape[1]) and index["per_view"]
    np.testing.assert_allclose(views.mean(1), mean, rtol=0, atol=1e-6)
    assert not np.allclose(views[:, 0], views[:, 1])  # two clips, two embeddings


def test_features_are_what_the_classifier_scored(extracted):
    """The classifier on each view's embedding gives that view's evaluation scores: the same views, pre-logits."""
    ckpt, tmp = extracted
    views, _ = _features(tmp / "views")
    fc = torch.load(ckpt, weights_only=True)["model"]
    logits = torch.from_numpy(views) @ fc["fc.weight"].T + fc["fc.bias"]
    scored = np.load(tmp / "eval" / "scores_views.npy")
    np.testing.assert_allclose(logits.softmax(-1).numpy(), scored, rtol=0, atol=1e-5)


def test_damaged_video_is_left_out_and_listed(data, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(data, root)
    damage_video(root, 2, "val")
    val = open_dataset(root, "val")
    ckpt = tsn_checkpoint(tmp_path / "best.pt", root, val.classes)
    index = extract_features(ckpt, CPU, clips=2, batch_size=4, py_workers=1, progress=False,
                             out_dir=str(tmp_path / "out"), per_view=True)
    features, saved = _features(tmp_path / "out")
    assert [d["id"] for d in index["damaged"]] == [val.rows[2]["id"]] and index["damaged"][0]["reason"]
    assert saved["damaged"] == index["damaged"]
    assert features.shape[:2] == (len(val) - 1, 2)
    assert saved["ids"] == [r["id"] for i, r in enumerate(val.rows) if i != 2]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert eval_main(["features", "--ckpt", str(tmp_path / "missing.pt"), *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval features: error:") and len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------------- --twice
def test_twice_keeps_the_centre_view_and_adds_the_segment_starts(extracted):
    """`--twice` (mmaction's twice_sample): 2 x clips views per video, first the centre view it takes without it,
    then one at the segments' starts, which embeds differently. One clip: on these 8-frame videos (2-frame
    segments) the starts of two clips are frames their centres already take."""
    ckpt, tmp = extracted
    for name, extra in (("once1", []), ("twice1", ["--twice"])):
        assert eval_main(["features", "--ckpt", ckpt, "--per-view", "--out", str(tmp / name), *extra, *COMMON]) == 0
    once, once_index = _features(tmp / "once1")
    twice, index = _features(tmp / "twice1")
    assert (index["clips"], index["views"], index["twice_sample"]) == (1, 2, True) and not once_index["twice_sample"]
    assert once.shape[1] == 1 and twice.shape == (once.shape[0], 2, once.shape[2]) and index["ids"] == once_index["ids"]
    np.testing.assert_allclose(twice[:, 0], once[:, 0], rtol=0, atol=1e-5)
    assert not np.allclose(twice[:, 1], once[:, 0], rtol=0, atol=1e-3)
    # averaged, into its own default folder beside the checkpoint (not the centre views' one)
    assert eval_main(["features", "--ckpt", ckpt, "--twice", *COMMON]) == 0
    mean, mean_index = _features(tmp / "features_val_best_vidkit_1x1_twice")
    assert mean_index["views"] == 2 and not mean_index["per_view"]
    assert not (tmp / "features_val_best_vidkit_1x1").exists()
    np.testing.assert_allclose(mean, twice.mean(1), rtol=0, atol=1e-5)
    assert not np.allclose(mean, once[:, 0], rtol=0, atol=1e-3)


def _image_checkpoint(path, data: str) -> str:
    """A checkpoint of an image pre-training run (`train --task image`) on the image folder `data`."""
    model = models.create_model("tsn_tiny", num_classes=len(SHAPES), num_frames=1)
    cfg = TrainConfig(model="tsn_tiny", data=data, task="image", threads=1).to_dict()
    torch.save({"model_name": "tsn_tiny", "num_classes": len(SHAPES), "classes": list(SHAPES),
                "contract": model.input_contract.replace(crop_size=32).to_dict(), "config": cfg,
                "model": model.state_dict(), "ema": None}, path)
    return str(path)


def test_twice_is_refused_where_eval_refuses_it(extracted, tmp_path, capsys):
    """The same one-line refusals as `python -m eval --twice`: tsn sampling only, no image checkpoints."""
    ckpt, _ = extracted
    generate_image_folder(tmp_path / "images", per_class=2, val_per_class=1, size=32, progress=False)
    image_ckpt = _image_checkpoint(tmp_path / "image.pt", str(tmp_path / "images"))
    for argv, reason in (([ckpt, "--sampling", "dense"], "tsn sampling, not dense"),
                         ([image_ckpt], "one centre crop per image")):
        for command in (["features"], []):
            assert eval_main([*command, "--ckpt", *argv, "--twice", "--out", str(tmp_path / "out"), *COMMON]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and reason in err, err
    assert not (tmp_path / "out").exists()

"""bench.images: its JSON summary is well formed and both sides read the same images (no timed assertions)."""
import json
import os

import pytest
import torch
from PIL import Image

from bench.images import baseline_transform, main, make_folder, parse_args, training_sets
from prep.synthetic_images import SHAPES


def test_main_prints_a_well_formed_summary(tmp_path, capsys):
    assert main(["--images", "16", "--size", "64", "--batch", "4", "--batches", "2", "--warmup", "1",
                 "--repeats", "1", "--threads", "1", "--root", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 18 and result["size"] == [64, 85] and result["batch"] == 4  # 6 classes x 3
    rows = {r["role"]: r for r in result["rows"]}
    assert set(rows) == {"ours", "gpu", "baseline"}
    baseline = rows["baseline"]["rate"]
    assert baseline > 0 and rows["baseline"]["ratio"] == 1.0
    measured = [r for r in result["rows"] if r["rate"] is not None]
    for r in measured:
        assert r["rate"] > 0 and r["ratio"] == pytest.approx(r["rate"] / baseline)
    if not torch.cuda.is_available():
        assert rows["gpu"]["rate"] is None and rows["gpu"]["ratio"] is None and "skipped" in rows["gpu"]["note"]
    headline = next(r for r in result["rows"] if r["pipeline"] == result["headline"])
    assert headline["role"] in ("ours", "gpu") and result["speedup"] == headline["ratio"]


def test_both_sides_read_the_same_cached_images(tmp_path):
    root = make_folder(str(tmp_path), 32, 90, per_class=3)
    first = os.path.join(root, "train", SHAPES[0], f"{SHAPES[0]}_00000.JPEG")
    stamp = os.stat(first).st_mtime_ns
    assert make_folder(str(tmp_path), 32, 90, per_class=2) == root  # reused, not rewritten
    with Image.open(first) as image:
        assert os.stat(first).st_mtime_ns == stamp and image.size == (43, 32)
    ours, theirs = training_sets(root, per_class=2, samples=30, rand_augment=0)  # 12 distinct, replayed to 36
    assert len(ours) == len(theirs) == 36 and len(set(ours.files)) == 12
    assert all(int(f.split("_")[-1].split(".")[0]) < 2 for f in ours.files)  # the cache's third image is left out
    assert [(os.path.join(ours.root, f), int(c)) for f, c in zip(ours.files, ours.labels)] == theirs.samples
    assert [ours.classes[c] for c in ours.labels] == [f.split("/")[0] for f in ours.files]
    assert theirs.classes == ours.classes


def test_baseline_transform_gives_normalized_crops(tmp_path):
    image = Image.new("RGB", (85, 64), (200, 30, 90))
    torch.manual_seed(0)
    for rand_augment in (0, 2):
        x = baseline_transform(rand_augment)(image)
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert baseline_transform(0)(image)[0].mean() == pytest.approx((200 / 255 - 0.485) / 0.229, abs=0.02)


@pytest.mark.parametrize("argv", [["--batch", "0"], ["--threads", "0"], ["--quality", "101"], ["--warmup", "-1"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        parse_args(argv)

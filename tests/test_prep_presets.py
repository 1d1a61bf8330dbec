"""Dataset presets read the official annotation layouts (tiny generated copies of them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from prep import open_dataset
from prep.__main__ import main as prep_main
from prep.synthetic import encode_video, render


def _video(path, seed, codec):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode_video(path, render(seed % 10, np.random.default_rng(seed), 6, (48, 64)), fps=12, codec=codec)


def test_ssv2_preset(tmp_path):
    labels = {"Pushing something from left to right": "0", "Pushing something from right to left": "1",
              "Putting something on a surface": "2"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    train = [{"id": "11", "label": "pushing a cup from left to right", "template":
              "Pushing [something] from left to right", "placeholders": ["a cup"]},
             {"id": "12", "label": "x", "template": "Putting [something] on a surface", "placeholders": ["x"]},
             {"id": "13", "label": "y", "template": "Dancing with [something]", "placeholders": ["y"]}]
    val = [{"id": "21", "label": "z", "template": "Pushing [something] from right to left", "placeholders": ["z"]}]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "validation.json").write_text(json.dumps(val))
    for vid in ("11", "12", "13", "21"):
        _video(str(tmp_path / "20bn-something-something-v2" / f"{vid}.webm"), int(vid), "vp9")
    out = tmp_path / "out"
    assert prep_main(["ssv2", "--root", str(tmp_path), "--out", str(out), "--short-side", "32",
                      "--workers", "1", "--no-progress", "--max-rejected", "100"]) == 0
    ds = open_dataset(str(out), split="train")
    assert ds.classes == list(labels)
    assert {(ds.record(i)["id"], ds.record(i)["label"]) for i in range(len(ds))} == {("11", 0), ("12", 2)}
    val_ds = open_dataset(str(out), split="val")
    assert val_ds.record(0)["label_name"] == "Pushing something from right to left"
    rejects = [json.loads(x) for x in Path(out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in rejects] == [("13", "unknown label 'Dancing with something'")]


def test_kinetics400_preset(tmp_path):
    ann = tmp_path / "annotations"
    os.makedirs(ann)
    (ann / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                   "abseiling,aaa,10,20,train\nzumba,bbb,0,10,train\nabseiling,ccc,5,15,train\n")
    (ann / "validate.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                      "zumba,ddd,30,40,val\nbowling,eee,1,11,val\n")
    # the usual download layout: one folder per split and class
    _video(str(tmp_path / "train/abseiling/aaa_000010_000020.mp4"), 1, "h264")
    _video(str(tmp_path / "train/zumba/bbb_000000_000010.mp4"), 2, "h264")
    _video(str(tmp_path / "val/ddd_000030_000040.mp4"), 3, "h264")
    _video(str(tmp_path / "val/eee_000001_000011.mp4"), 4, "h264")
    out = tmp_path / "out"
    assert prep_main(["kinetics400", "--root", str(tmp_path), "--out", str(out), "--short-side", "32",
                      "--workers", "2", "--no-progress", "--format", "arrow", "--max-rejected", "100"]) == 0
    train = open_dataset(str(out), split="train")
    assert train.classes == ["abseiling", "zumba"]
    assert sorted((r["id"], r["label"]) for r in train.rows) == [("aaa_000010_000020", 0), ("bbb_000000_000010", 1)]
    assert [r["id"] for r in open_dataset(str(out), split="val").rows] == ["ddd_000030_000040"]
    reasons = {r["id"]: r["reason"] for r in map(json.loads, Path(out / "rejects.jsonl").read_text().splitlines())}
    assert reasons == {"ccc_000005_000015": "missing file", "eee_000001_000011": "unknown label 'bowling'"}

"""Kinetics-700, Diving48, UCF101, HMDB51 and --subset presets on tiny generated copies of the official layouts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest

from prep import open_dataset
from prep.__main__ import main as prep_main
from prep.presets import diving48_tasks, hmdb51_tasks, ucf101_tasks
from prep.synthetic import encode_video, render

CSV_HEAD = "label,youtube_id,time_start,time_end,split\n"


def _frames(seed):
    return render(seed % 10, np.random.default_rng(seed), 6, (48, 64))


def _video(path, seed, codec="h264"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode_video(path, _frames(seed), fps=12, codec=codec)


def _avi(path, seed):
    """A real AVI with MPEG-4 part 2 video, the container and codec of the UCF101 and HMDB51 downloads."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for frame in _frames(seed):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _prep(*argv):
    # the presets' fixtures leave videos out on purpose: their rejects are checked, not the share
    return prep_main([*map(str, argv), "--short-side", "32", "--workers", "1", "--no-progress", "--max-rejected", "100"])


def _stored(out):
    return {(r["split"], r["id"], r["label"], r["label_name"]) for r in open_dataset(str(out)).rows}


def _rejects(out):
    return {r["id"]: r["reason"] for r in map(json.loads, Path(out / "rejects.jsonl").read_text().splitlines())}


def test_kinetics700_preset(tmp_path):
    (tmp_path / "kinetics_700_train.csv").write_text(CSV_HEAD + "abseiling,aaa,10,20,train\n"
                                                     "zumba,bbb,0,10,train\nabseiling,ccc,5,15,train\n")
    (tmp_path / "kinetics_700_val.csv").write_text(CSV_HEAD + "zumba,ddd,30,40,validate\n")
    for i, vid in enumerate(("aaa_000010_000020", "bbb_000000_000010", "ddd_000030_000040")):
        _video(str(tmp_path / "videos" / f"{vid}.mp4"), i)
    out = tmp_path / "out"
    assert _prep("kinetics700", "--root", tmp_path, "--out", out) == 0
    assert open_dataset(str(out)).classes == ["abseiling", "zumba"]
    assert _stored(out) == {("train", "aaa_000010_000020", 0, "abseiling"), ("train", "bbb_000000_000010", 1, "zumba"),
                            ("val", "ddd_000030_000040", 1, "zumba")}
    assert _rejects(out) == {"ccc_000005_000015": "missing file"}
    # the Kinetics-400 preset does not take Kinetics-700 CSV names
    assert prep_main(["kinetics400", "--root", str(tmp_path), "--out", str(tmp_path / "k400")]) == 2


def test_kinetics400_subset_relabels_in_file_order(tmp_path, capsys):
    (tmp_path / "train.csv").write_text(CSV_HEAD + "abseiling,aaa,0,10,train\nriding a bike,bbb,0,10,train\n"
                                        "zumba,ccc,0,10,train\nzumba,eee,0,10,train\n")
    (tmp_path / "validate.csv").write_text(CSV_HEAD + "riding a bike,ddd,0,10,val\n")
    for i, vid in enumerate(("aaa", "bbb", "ccc", "ddd")):  # eee's video is missing
        _video(str(tmp_path / f"{vid}_000000_000010.mp4"), i)
    (tmp_path / "mini.txt").write_text("zumba\nriding_a_bike\n")  # published lists write underscores
    out = tmp_path / "out"
    assert _prep("kinetics400", "--root", tmp_path, "--out", out, "--subset", tmp_path / "mini.txt") == 0
    assert open_dataset(str(out)).classes == ["zumba", "riding a bike"]
    assert _stored(out) == {("train", "ccc_000000_000010", 0, "zumba"), ("train", "bbb_000000_000010", 1,
                            "riding a bike"), ("val", "ddd_000000_000010", 1, "riding a bike")}
    assert _rejects(out) == {"eee_000000_000010": "missing file"}  # abseiling is left out, not rejected
    (tmp_path / "bad.txt").write_text("zumba\nbowling\n")
    assert prep_main(["kinetics400", "--root", str(tmp_path), "--out", str(tmp_path / "o2"),
                      "--subset", str(tmp_path / "bad.txt")]) == 2
    assert "classes not in the dataset" in capsys.readouterr().err


def test_ssv2_subset(tmp_path):
    labels = {"Pushing something from left to right": "0", "Putting something on a surface": "1",
              "Dropping something": "2"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    item = lambda vid, template: {"id": vid, "label": "x", "template": template, "placeholders": ["x"]}  # noqa: E731
    (tmp_path / "train.json").write_text(json.dumps([item("1", "Pushing [something] from left to right"),
                                                     item("2", "Dropping [something]"),
                                                     item("3", "Putting [something] on a surface")]))
    (tmp_path / "validation.json").write_text(json.dumps([item("4", "Dropping [something]")]))
    for vid in ("2", "4"):
        _video(str(tmp_path / "20bn-something-something-v2" / f"{vid}.webm"), int(vid), "vp9")
    (tmp_path / "mini.txt").write_text("Dropping [something]\nPutting something on a surface\n")
    out = tmp_path / "out"
    assert _prep("ssv2", "--root", tmp_path, "--out", out, "--subset", tmp_path / "mini.txt") == 0
    assert open_dataset(str(out)).classes == ["Dropping something", "Putting something on a surface"]
    assert _stored(out) == {("train", "2", 0, "Dropping something"), ("val", "4", 0, "Dropping something")}
    assert _rejects(out) == {"3": "missing file"}


def test_diving48_preset(tmp_path):
    vocab = [["Back", "35som", "NoTwis", "PIKE"], ["Forward", "15som", "1Twis", "FREE"]]
    (tmp_path / "Diving48_vocab.json").write_text(json.dumps(vocab))
    row = lambda vid, label: {"vid_name": vid, "label": label, "start_frame": 0, "end_frame": 6}  # noqa: E731
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps([row("aa_00001", 0), row("bb_00002", 1),
                                                                 row("cc_00003", 7)]))
    (tmp_path / "Diving48_V2_test.json").write_text(json.dumps([row("dd_00004", 1), row("ee_00005", 0)]))
    for i, vid in enumerate(("aa_00001", "bb_00002", "dd_00004")):
        _video(str(tmp_path / "rgb" / f"{vid}.mp4"), i)
    out = tmp_path / "out"
    assert _prep("diving48", "--root", tmp_path, "--out", out) == 0
    assert open_dataset(str(out)).classes == ["Back 35som NoTwis PIKE", "Forward 15som 1Twis FREE"]
    assert _stored(out) == {("train", "aa_00001", 0, "Back 35som NoTwis PIKE"),
                            ("train", "bb_00002", 1, "Forward 15som 1Twis FREE"),
                            ("val", "dd_00004", 1, "Forward 15som 1Twis FREE")}
    assert _rejects(out) == {"cc_00003": "unknown label 7", "ee_00005": "missing file"}


def test_diving48_without_vocab_names_classes_by_number(tmp_path):
    (tmp_path / "Diving48_train.json").write_text(json.dumps([{"vid_name": "a", "label": 2}]))
    (tmp_path / "Diving48_test.json").write_text(json.dumps([{"vid_name": "b", "label": 0}]))
    tasks, classes = diving48_tasks(str(tmp_path))
    assert classes == ["0", "1", "2"]
    assert [(t.split, t.id, t.label, t.path) for t in tasks] == [("train", "a", 2, str(tmp_path / "a.mp4")),
                                                                ("val", "b", 0, str(tmp_path / "b.mp4"))]
    (tmp_path / "Diving48_train.json").write_text(json.dumps([{"name": "a"}]))
    with pytest.raises(ValueError, match="vid_name"):
        diving48_tasks(str(tmp_path))


def _ucf_lists(ann, split_id, train, test):
    (ann / f"trainlist0{split_id}.txt").write_text("".join(f"{rel} {label}\r\n" for rel, label in train))
    (ann / f"testlist0{split_id}.txt").write_text("".join(f"{rel}\r\n" for rel in test))


def test_ucf101_preset_split_2(tmp_path):
    ann = tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n3 Archery\r\n")
    _ucf_lists(ann, 1, [("Archery/v_Archery_g01_c01.avi", 3)], ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"])
    _ucf_lists(ann, 2, [("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 1), ("Archery/v_Archery_g08_c01.avi", 3)],
               ["ApplyLipstick/v_ApplyLipstick_g01_c01.avi", "Archery/v_Archery_g01_c02.avi"])
    for i, rel in enumerate(("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g08_c01.avi",
                             "ApplyLipstick/v_ApplyLipstick_g01_c01.avi")):
        _avi(tmp_path / "UCF-101" / rel, i)
    out = tmp_path / "out"
    assert _prep("ucf101", "--root", tmp_path, "--out", out, "--split-id", "2") == 0
    assert open_dataset(str(out)).classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert _stored(out) == {("train", "v_ApplyEyeMakeup_g08_c01", 0, "ApplyEyeMakeup"),
                            ("train", "v_Archery_g08_c01", 2, "Archery"),
                            ("val", "v_ApplyLipstick_g01_c01", 1, "ApplyLipstick")}
    assert _rejects(out) == {"v_Archery_g01_c02": "missing file"}


def test_ucf101_bad_lists(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 A\n3 B\n")
    with pytest.raises(ValueError, match="class numbers must run 1..2"):
        ucf101_tasks(str(tmp_path))
    (tmp_path / "classInd.txt").write_text("1 A\n")
    _ucf_lists(tmp_path, 1, [("A/v_A_g01_c01.avi", 4)], ["Z/v_Z_g01_c01.avi"])
    tasks, _ = ucf101_tasks(str(tmp_path))  # videos directly under root without UCF-101/
    assert [(t.path, t.reject) for t in tasks] == [(str(tmp_path / "A/v_A_g01_c01.avi"), "unknown label 3"),
                                                   (str(tmp_path / "Z/v_Z_g01_c01.avi"), "unknown label 'Z'")]
    with pytest.raises(ValueError, match="split id"):
        ucf101_tasks(str(tmp_path), split_id=4)


def test_hmdb51_preset(tmp_path):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a_brush.avi 1 \nd_brush.avi 0 \ne_brush.avi 2 \n")
    (splits / "climb_test_split1.txt").write_text("b_climb.avi 1 \nc_climb.avi 2 \n")
    (splits / "brush_hair_test_split2.txt").write_text("a_brush.avi 2 \n")  # other splits are not read
    (splits / "climb_test_split2.txt").write_text("b_climb.avi 0 \n")
    for i, rel in enumerate(("brush_hair/a_brush.avi", "climb/b_climb.avi", "climb/c_climb.avi")):
        _avi(tmp_path / rel, i)
    out = tmp_path / "out"
    assert _prep("hmdb51", "--root", tmp_path, "--out", out) == 0
    assert open_dataset(str(out)).classes == ["brush_hair", "climb"]
    assert _stored(out) == {("train", "a_brush", 0, "brush_hair"), ("train", "b_climb", 1, "climb"),
                            ("val", "c_climb", 1, "climb")}
    assert _rejects(out) == {"e_brush": "missing file"}  # d_brush (flag 0) is in no split
    assert [(t.split, t.id) for t in hmdb51_tasks(str(tmp_path), split_id=2)[0]] == [("val", "a_brush")]
    (splits / "climb_test_split1.txt").write_text("b_climb.avi 3\n")
    with pytest.raises(ValueError, match="split flag must be 0, 1 or 2"):
        hmdb51_tasks(str(tmp_path))

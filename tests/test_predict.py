"""Using a trained model: unlabelled test splits (prep stores them, eval writes submissions and no accuracy, train
refuses them) and `python -m eval predict` on video files, which must score exactly as prep + eval do."""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.__main__ import main as eval_main
from eval.dump import load_scores
import eval.predict as predict_module
from eval.predict import MAX_CHUNKS, MIN_CHUNK, PredictError, chunk_size, model_classes, predict, read_class_names
from eval.run import evaluate
from models.checkpoints import Recognized
from prep import open_dataset
from prep.__main__ import main as prep_main
from prep.synthetic import CLASS_NAMES, encode_video, render
from train.setup import Dist
from helpers import ordinary_scheduling

CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
CLASSES = list(CLASS_NAMES[:4])
# name -> (codec, class rendered); c.mp4 sits in a sub-folder
VIDEOS = {"a.mp4": ("h264", 0), "b.webm": ("vp9", 3), "sub/c.mp4": ("h264", 1)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, (name, (codec, label)) in enumerate(VIDEOS.items()):
        os.makedirs(os.path.dirname(root / name), exist_ok=True)
        encode_video(str(root / name), render(label, np.random.default_rng(i), 8, (32, 48)), fps=12, codec=codec)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root


def _prep_test_list(videos, out, *extra) -> None:
    (videos / "test.txt").write_text("".join(f"{name}\n" for name in VIDEOS))
    assert prep_main(["videos", "--list", f"test={videos / 'test.txt'}", "--root", str(videos), "--out", str(out),
                      "--workers", "1", "--no-progress", *extra]) == 0


def test_unlabelled_split_gets_submissions_and_no_accuracy(videos, tsn_tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "store"
    _prep_test_list(videos, out)  # no --classes: eval takes the checkpoint's
    test = open_dataset(str(out), "test")
    assert [r["label"] for r in test.rows] == [None] * len(VIDEOS) and not test.labelled and test.classes == []
    report = tmp_path / "eval"
    assert eval_main(["--ckpt", tsn_tiny_ckpt, "--data", str(out), "--split", "test", "--out", str(report),
                      "--clips", "2", "--py-workers", "1", "--device", "cpu", "--no-progress"]) == 0
    assert "no accuracy" in capsys.readouterr().out
    metrics = json.loads(Path(report / "metrics.json").read_text())
    assert metrics["top1"] is None and metrics["top5"] is None and metrics["videos"] == len(VIDEOS)
    assert not (report / "per_class.csv").exists() and not (report / "confusion.png").exists()
    scores, index = load_scores(str(report))
    assert index["labels"] == [None] * len(VIDEOS) and index["classes"] == CLASSES
    ranked = [[CLASSES[c] for c in np.argsort(-row)] for row in scores]
    rows = list(csv.reader(Path(report / "submission.csv").read_text().splitlines()))
    assert rows[0] == ["id", "top1", "top2", "top3", "top4"]
    assert rows[1:] == [[vid, *names] for vid, names in zip(index["ids"], ranked)]
    lines = Path(report / "submission_ssv2.csv").read_text().splitlines()
    assert lines == [f"{vid};{names[0]}" for vid, names in zip(index["ids"], ranked)]
    assert [p["label"] for p in json.loads(Path(report / "predictions.json").read_text())] == [None] * len(VIDEOS)
    # an ensemble of unlabelled dumps is a submission too: here of one dump with itself, so the same answers
    assert eval_main(["ensemble", str(report), str(report), "--out", str(tmp_path / "fused")]) == 0
    assert Path(tmp_path / "fused" / "submission.csv").read_text() == Path(report / "submission.csv").read_text()
    assert json.loads(Path(tmp_path / "fused" / "metrics.json").read_text())["top1"] is None


def test_training_on_an_unlabelled_split_is_refused(videos, tmp_path, capsys):
    from train.__main__ import main as train_main

    out = tmp_path / "store"
    _prep_test_list(videos, out, "--classes", str(videos / "classes.txt"))
    assert train_main(["--model", "tsn_tiny", "--data", str(out), "--train-split", "test", "--output",
                       str(tmp_path / "runs"), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no labels" in err[0], err


def test_a_list_mixing_labelled_and_bare_lines_is_refused(videos, tmp_path, capsys):
    (tmp_path / "test.txt").write_text("a.mp4 moving_right\nb.webm\n")
    assert prep_main(["videos", "--list", str(tmp_path / "test.txt"), "--root", str(videos),
                      "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "test.txt:2: no label, but other lines of the list have one" in capsys.readouterr().err


def test_ssv2_test_json_becomes_an_unlabelled_split(videos, tmp_path):
    root = tmp_path / "ssv2"
    os.makedirs(root / "20bn-something-something-v2")
    (root / "labels.json").write_text(json.dumps({name: str(i) for i, name in enumerate(CLASSES)}))
    (root / "something-something-v2-train.json").write_text(json.dumps(
        [{"id": "1", "template": CLASSES[0], "label": "x", "placeholders": []}]))
    (root / "something-something-v2-validation.json").write_text("[]")
    (root / "something-something-v2-test.json").write_text(json.dumps([{"id": "7"}, {"id": "8"}]))
    for vid, name in (("1", "a.mp4"), ("7", "b.webm"), ("8", "sub/c.mp4")):
        os.link(videos / name, root / "20bn-something-something-v2" / f"{vid}.webm")
    out = tmp_path / "out"
    assert prep_main(["ssv2", "--root", str(root), "--out", str(out), "--workers", "1", "--short-side", "32",
                      "--no-progress"]) == 0
    test = open_dataset(str(out), "test")
    assert [(r["id"], r["label"], r["label_name"]) for r in test.rows] == [("7", None, None), ("8", None, None)]
    assert open_dataset(str(out), "train").labelled


def test_predict_codecs_folder_list_and_unreadable_files(videos, tsn_tiny_ckpt, tmp_path, capsys):
    """An H.264 mp4 and a VP9 webm given directly, a folder, a list file; a corrupt and a missing file get one
    line each and the others are still predicted."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    os.makedirs(tmp_path / "folder")
    os.link(videos / "sub/c.mp4", tmp_path / "folder" / "c.mp4")
    (tmp_path / "list.txt").write_text("# relative to the list\nfolder/c.mp4\n")
    inputs = [str(videos / "a.mp4"), str(videos / "b.webm"), str(tmp_path / "folder"), str(tmp_path / "list.txt"),
              str(bad), str(tmp_path / "missing.mp4")]
    assert eval_main(["predict", *inputs, "--ckpt", tsn_tiny_ckpt, "--json", "--top", "3", "--workers", "1",
                      "--py-workers", "1", "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)  # one JSON object
    rows = {r["video"]: r for r in result["videos"]}
    predicted = [str(videos / "a.mp4"), str(videos / "b.webm"), str(tmp_path / "folder" / "c.mp4")]
    assert list(rows) == predicted + [str(bad), str(tmp_path / "missing.mp4")]  # the list's entry is the folder's
    for video in predicted:
        assert [t["class"] for t in rows[video]["top"]] != [] and len(rows[video]["top"]) == 3
        assert {t["class"] for t in rows[video]["top"]} <= set(CLASSES)
        assert sum(t["probability"] for t in rows[video]["top"]) < 1 + 1e-6
    assert rows[str(bad)]["reason"].startswith("unreadable")
    assert rows[str(tmp_path / "missing.mp4")]["reason"] == "missing file"
    assert result["predicted"] == 3 and result["unreadable"] == 2


def _encode_with(path: str, encoder: str, pix_fmt: str) -> bool:
    """8 synthetic frames through PyAV's `encoder`; False when this FFmpeg build lacks it."""
    import av

    try:
        with ordinary_scheduling(), av.open(path, "w") as container:
            stream = container.add_stream(encoder, rate=12)
            # 64x48: this build's libx265 aborts the process (SIGABRT) after encoding 48x32 frames
            stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
            for frame in render(2, np.random.default_rng(0), 8, (48, 64)):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    except (av.error.FFmpegError, ValueError):  # UnknownCodecError: an encoder missing from this build
        return False
    return True


def test_predict_reads_other_codecs_and_containers(tsn_tiny_ckpt, tmp_path, capsys):
    cases = {"hevc.mkv": [("libx265", "yuv420p")], "av1.mp4": [("libsvtav1", "yuv420p"), ("libaom-av1", "yuv420p")],
             "mpeg4.avi": [("mpeg4", "yuv420p")], "mjpeg.avi": [("mjpeg", "yuvj420p")]}
    made = [str(tmp_path / name) for name, encoders in cases.items()
            if any(_encode_with(str(tmp_path / name), *encoder) for encoder in encoders)]
    if not made:
        pytest.skip("this FFmpeg build has none of the encoders")
    assert eval_main(["predict", *made, "--ckpt", tsn_tiny_ckpt, "--json", "--workers", "1", "--py-workers", "1",
                      "--device", "cpu", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["video"] for r in result["videos"] if "top" in r] == made, result["videos"]
    assert len(made) == len(cases) or os.environ.get("VIDKIT_ALLOW_MISSING_ENCODERS"), f"only {made} encoded"


def test_predict_text_output_and_nothing_readable(videos, tsn_tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF" + b"\x01" * 300)
    assert eval_main(["predict", str(videos / "a.mp4"), str(bad), "--ckpt", tsn_tiny_ckpt, "--workers", "1",
                      "--py-workers", "1", "--device", "cpu", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{videos / 'a.mp4'}: ")
    assert len(lines[0].split(", ")) == len(CLASSES)  # --top 5 of 4 classes: all of them, by name
    assert lines[1].startswith(f"{bad}: not predicted: ")
    assert eval_main(["predict", str(bad), "--ckpt", tsn_tiny_ckpt, "--device", "cpu", "--no-progress"]) == 1
    assert capsys.readouterr().out.startswith(f"{bad}: not predicted: ")


def test_predict_scores_what_prep_and_eval_score(videos, tsn_tiny_ckpt, tmp_path, capsys):
    """The same videos prepped (unlabelled, the checkpoint's classes) and evaluated give the very same scores:
    predict runs that code, not a copy of it."""
    out = tmp_path / "store"
    _prep_test_list(videos, out, "--classes", str(videos / "classes.txt"))
    evaluate(tsn_tiny_ckpt, CPU, data=str(out), split="test", clips=2, crops=3, batch_size=4, py_workers=1,
             progress=False, out_dir=str(tmp_path / "eval"))
    expected, index = load_scores(str(tmp_path / "eval"))
    capsys.readouterr()
    assert eval_main(["predict", str(videos / "test.txt"), "--ckpt", tsn_tiny_ckpt, "--clips", "2", "--crops", "3",
                      "--batch-size", "4", "--top", "4", "--json", "--workers", "1", "--py-workers", "1",
                      "--device", "cpu", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)["videos"]
    assert [os.path.relpath(r["video"], videos) for r in rows] == index["ids"]
    got = np.array([[next(t["probability"] for t in r["top"] if t["class"] == c) for c in CLASSES] for r in rows])
    np.testing.assert_array_equal(got.astype(np.float32), expected)
    assert not np.allclose(expected[0], expected[1])  # different videos, different scores: the test can fail


def test_class_names_come_from_the_checkpoint_or_a_file(tmp_path):
    authors = Recognized(origin="IBM action-recognition", model="tsn_resnet50", classes=None)
    with pytest.raises(PredictError, match="records no class names and matches no zoo row .*: pass --classes FILE"):
        model_classes("K400.pth.tar", authors, None)
    (tmp_path / "names.txt").write_text("b\na\n")
    (tmp_path / "classes.json").write_text(json.dumps(["b", "a"]))
    (tmp_path / "labels.json").write_text(json.dumps({"a": "1", "b": "0"}))
    for name in ("names.txt", "classes.json", "labels.json"):
        assert model_classes("x.pth", authors, str(tmp_path / name)) == ["b", "a"]
    toolkit = Recognized(origin="vidkit", model="tsn_tiny", classes=["x", "y"])
    assert model_classes("best.pt", toolkit, None) == ["x", "y"]
    with pytest.raises(PredictError, match="class list not found"):
        read_class_names(str(tmp_path / "nope.txt"))


def test_predict_twice_scores_twice_the_views(videos, tsn_tiny_ckpt, tmp_path, capsys):
    """--twice reaches the evaluation predict runs: 2 x clips x crops views per video, other scores than the
    centre views alone, recorded in the output; refused where `python -m eval --twice` refuses it."""
    common = [str(videos / "a.mp4"), str(videos / "b.webm"), "--ckpt", tsn_tiny_ckpt, "--top", "4", "--json",
              "--workers", "1", "--py-workers", "1", "--device", "cpu", "--no-progress"]
    results = {}
    for name, extra in (("once", []), ("twice", ["--twice"])):
        assert eval_main(["predict", *common, "--keep", str(tmp_path / name), *extra]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    once, twice = results["once"], results["twice"]
    assert (once["views"], once["twice_sample"], twice["views"], twice["twice_sample"]) == (1, False, 2, True)
    metrics = json.loads(Path(tmp_path / "twice" / "eval" / "metrics.json").read_text())
    assert (metrics["views"], metrics["twice_sample"], metrics["videos"]) == (2, True, 2)

    def probabilities(result):
        return np.array([[next(t["probability"] for t in r["top"] if t["class"] == c) for c in CLASSES]
                         for r in result["videos"]])

    expected, _ = load_scores(str(tmp_path / "twice" / "eval"))
    np.testing.assert_array_equal(probabilities(twice).astype(np.float32), expected)  # what eval scored
    assert not np.allclose(probabilities(twice), probabilities(once), rtol=0, atol=1e-4)
    assert eval_main(["predict", *common, "--twice", "--sampling", "dense"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tsn sampling, not dense" in err, err


def test_predict_refuses_an_image_checkpoint(videos, tsn_tiny_ckpt, tmp_path, capsys):
    state = torch.load(tsn_tiny_ckpt, weights_only=True)
    state["config"]["task"] = "image"
    torch.save(state, tmp_path / "image.pt")
    assert eval_main(["predict", str(videos / "a.mp4"), "--ckpt", str(tmp_path / "image.pt"), "--twice",
                      "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image pre-training checkpoint" in err, err


def test_predict_in_chunks_gives_the_unchunked_output(videos, tsn_tiny_ckpt, tmp_path, capsys):
    """--chunk 1 and 2 (each chunk prepped into its own store, the next one in the background while one is scored)
    print what one chunk prints, exactly: the same probabilities in the same order, each unreadable file's line;
    and the work dir's merged report is the one chunk's report."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    inputs = [str(videos / "a.mp4"), str(bad), str(videos / "b.webm"), str(videos / "sub/c.mp4"),
              str(tmp_path / "missing.mp4")]
    results = {}
    for chunk in (0, 1, 2):
        assert eval_main(["predict", *inputs, "--ckpt", tsn_tiny_ckpt, "--clips", "2", "--json", "--workers", "1",
                          "--py-workers", "1", "--device", "cpu", "--no-progress", "--chunk", str(chunk),
                          "--keep", str(tmp_path / f"chunk{chunk}")]) == 0
        results[chunk] = json.loads(capsys.readouterr().out)
    one = results[0]
    assert [r["video"] for r in one["videos"]] == inputs and (one["predicted"], one["unreadable"]) == (3, 2)
    assert [("reason" in r) for r in one["videos"]] == [False, True, False, False, True]
    assert [results[c]["chunks"] for c in (0, 1, 2)] == [1, 5, 3]
    for chunk in (1, 2):
        assert results[chunk]["videos"] == one["videos"]
        assert (results[chunk]["predicted"], results[chunk]["unreadable"]) == (3, 2)
    whole, parts = tmp_path / "chunk0", tmp_path / "chunk2"
    assert sorted(os.listdir(parts)) == ["chunk-000", "chunk-001", "chunk-002", "eval"]
    assert sorted(os.listdir(whole)) == ["eval", "store"]
    for name in ("submission.csv", "submission_ssv2.csv", "predictions.json", "scores_index.json"):
        assert Path(parts / "eval" / name).read_text() == Path(whole / "eval" / name).read_text(), name
    np.testing.assert_array_equal(load_scores(str(parts / "eval"))[0], load_scores(str(whole / "eval"))[0])
    merged, single = (json.loads(Path(d / "eval" / "metrics.json").read_text()) for d in (parts, whole))
    assert merged["chunks"] == [str(parts / f"chunk-00{k}" / "store") for k in (0, 1)]  # chunk 2: nothing stored
    skip = ("data", "chunks", "submission")
    assert {k: v for k, v in merged.items() if k not in skip} == {k: v for k, v in single.items() if k not in skip}
    assert single["videos"] == 3


def test_the_default_chunks_keep_small_inputs_whole():
    assert all(chunk_size(n) >= n for n in range(1, MIN_CHUNK + 1))
    assert chunk_size(MIN_CHUNK + 1) == MIN_CHUNK
    for n in (MIN_CHUNK * 3, 1000, 12345):
        chunks = -(-n // chunk_size(n))
        assert 1 < chunks <= MAX_CHUNKS and chunk_size(n) >= MIN_CHUNK
        assert chunk_size(n, overlap=False) == n  # on the CPU prep and the model share the cores: one chunk


def _group_members(groups: set[int]) -> set[int]:
    """The live processes of these process groups."""
    found = set()
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) in groups and fields[0] != "Z":
            found.add(int(name))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_an_interrupt_while_scoring_stops_the_background_prep(videos, tsn_tiny_ckpt, tmp_path, monkeypatch):
    """A Ctrl-C (or an error) while chunk 0 is scored stops chunk 1's prep, still decoding in its own process with
    2 workers, by prep's own interrupt handling (its spool removed), and starts no further chunk."""
    inputs = []
    for i in range(6):  # 3 chunks of 2: 2 decoding workers each
        os.link(videos / list(VIDEOS)[i % len(VIDEOS)], tmp_path / f"v{i}.mp4")
        inputs.append(str(tmp_path / f"v{i}.mp4"))
    monkeypatch.setenv("VIDKIT_PREP_DELAY", "1")  # prep's writer waits 1 s a video: chunk 1 is mid-run
    spool = tmp_path / "work" / "chunk-001" / "store" / "parts"
    groups, running = set(), set()

    def interrupted(*args, **kwargs):
        deadline = time.time() + 60
        while not (spool.is_dir() and any(n.endswith(".spool") for n in os.listdir(spool))
                   and len(_group_members({p.pid for p in mp.active_children()})) >= 3):
            assert time.time() < deadline, "chunk 1's prep and its 2 workers never ran"
            time.sleep(0.05)
        time.sleep(0.5)  # the workers decoding
        groups.update(p.pid for p in mp.active_children())  # prep's process leads its own group
        running.update(_group_members(groups))
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(inputs, tsn_tiny_ckpt, CPU, workers=2, chunk=2, keep=str(tmp_path / "work"), progress=False)
    assert len(running) == 3, running  # prep's process and its 2 workers were running: the test can fail
    assert _group_members(groups) == set() and mp.active_children() == []
    assert not [n for n in os.listdir(spool) if n.endswith(".spool")]  # prep stopped itself: not killed
    assert not (tmp_path / "work" / "chunk-002").exists()

"""One reader per kind of user list (prep/lists.py), used by every command that reads one: a class list that is
not a clean list of unique names, and a video-list line that can be read two ways, are refused with one line
naming the file and the line; class names with spaces ("playing guitar") are read whole; `eval predict` tells a
list from a video by content."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import models
from eval.__main__ import main as eval_main
from eval.predict import collect_videos
from models.__main__ import main as models_main
from prep.__main__ import main as prep_main
from prep.lists import ListError, looks_like_text, read_class_list, read_video_list
from prep.presets import restrict_to_classes
from prep.synthetic import CLASS_NAMES, encode_video, render
from prep.tasks import Task, parse_video_lists

CLASSES = list(CLASS_NAMES[:4])
KINETICS = ["playing guitar", "playing drums", "singing"]

# (file bytes, the line the refusal names, a word of the reason)
BAD_CLASS_LISTS = {
    "blank line": (b"moving_up\n\nmoving_down\n", 2, "blank"),
    "trailing space": (b"moving_up\nmoving_down \n", 2, "whitespace"),
    "leading tab": (b"\tmoving_up\nmoving_down\n", 1, "whitespace"),
    "duplicate": (b"moving_up\nmoving_down\nmoving_up\n", 3, "repeats line 1"),
    "BOM": (b"\xef\xbb\xbfmoving_up\nmoving_down\n", 1, "byte-order mark"),
    "CRLF": (b"moving_up\r\nmoving_down\r\n", 1, "CR LF"),
    "not UTF-8": (b"moving_up\nmoving_\xb8down\n", 2, "UTF-8"),
}


def _bad_list(tmp_path, case: str) -> tuple[str, int, str]:
    content, line, word = BAD_CLASS_LISTS[case]
    path = tmp_path / "classes.txt"
    path.write_bytes(content)
    return str(path), line, word


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(("a.mp4", "b.mp4")):
        encode_video(str(root / name), render(i, np.random.default_rng(i), 8, (32, 48)), fps=12, codec="h264")
    (root / "train.txt").write_text("a.mp4 moving_up\nb.mp4 moving_down\n")
    return root


# --------------------------------------------------------------------------- class lists, every command


@pytest.mark.parametrize("case", list(BAD_CLASS_LISTS))
def test_prep_videos_refuses_an_unclean_class_list_before_any_work(videos, tmp_path, capsys, case):
    classes, line, word = _bad_list(tmp_path, case)
    out = tmp_path / "out"
    assert prep_main(["videos", "--list", str(videos / "train.txt"), "--root", str(videos), "--classes", classes,
                      "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{classes}:{line}:" in err and word in err, err
    assert not (out / "manifest.jsonl").exists()


@pytest.mark.parametrize("case", list(BAD_CLASS_LISTS))
def test_eval_predict_refuses_an_unclean_class_list(videos, tsn_tiny_ckpt, tmp_path, capsys, case):
    classes, line, word = _bad_list(tmp_path, case)
    assert eval_main(["predict", str(videos / "a.mp4"), "--ckpt", tsn_tiny_ckpt, "--classes", classes, "--workers", "1",
                      "--device", "cpu", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{classes}:{line}:" in err and word in err, err


@pytest.mark.parametrize("command", ["info", "export"])
def test_models_commands_refuse_an_unclean_class_list(tmp_path, capsys, command):
    """`models info/export --classes` give a text classifier (ILA's K400 head) its class names."""
    classes, line, word = _bad_list(tmp_path, "blank line")
    extra = ["--format", "onnx", "--out", str(tmp_path / "m.onnx")] if command == "export" else []
    assert models_main([command, "--ckpt", str(tmp_path / "ila.pth"), "--classes", classes, *extra]) != 0
    err = _one_line(capsys.readouterr().err)
    assert f"{classes}:{line}:" in err and word in err, err


def test_a_preset_subset_is_read_with_the_same_checks(tmp_path):
    tasks = [Task(str(i), f"{i}.mp4", "train", i % 2, CLASSES[i % 2]) for i in range(4)]
    subset, line, _ = _bad_list(tmp_path, "duplicate")
    with pytest.raises(ListError, match=f"{subset}:{line}: class name 'moving_up' repeats line 1"):
        restrict_to_classes(tasks, CLASSES[:2], subset)


@pytest.mark.parametrize("names, word", [(["a", "a"], "repeats entry 0"), (["a", ""], "blank"),
                                         (["a", " b"], "whitespace")])
def test_a_text_classifier_refuses_unclean_class_names(names, word):
    with pytest.raises(ValueError, match=word):
        models.create_model("ila_tiny", num_classes=2, arch="k400", class_names=names)


@pytest.mark.parametrize("content, word", [(["a", "a"], "repeats entry 0"), ({"a": 0, "b": 2}, "indices 0..1"),
                                           (["a", " b"], "whitespace"), (["a", 3], "not a class name")])
def test_json_class_lists_get_the_same_checks(tmp_path, content, word):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ListError, match=word):
        read_class_list(str(path))


def test_clean_class_lists_in_every_form(tmp_path):
    (tmp_path / "names.txt").write_text("playing guitar\nb")  # no final newline: fine
    (tmp_path / "labels.json").write_text(json.dumps({"b": "1", "playing guitar": "0"}))
    os.makedirs(tmp_path / "store")
    (tmp_path / "store" / "classes.json").write_text(json.dumps(["playing guitar", "b"]))
    for name in ("names.txt", "labels.json", "store"):
        assert read_class_list(str(tmp_path / name)) == ["playing guitar", "b"]


# --------------------------------------------------------------------------- video lists


def _labels(tmp_path, lines: list[str], classes: list[str] | None = None) -> list[tuple[str, str]]:
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"{line}\n" for line in lines))
    classes_file = None
    if classes:
        classes_file = tmp_path / "classes.txt"
        classes_file.write_text("".join(f"{c}\n" for c in classes))
    tasks, names = parse_video_lists([str(lst)], str(tmp_path), classes_file and str(classes_file))
    assert not [t.reject for t in tasks if t.reject]
    return [(t.id, names[t.label]) for t in tasks]


def test_class_names_with_spaces_are_read_whole(tmp_path):
    expected = [("a.mp4", "playing guitar"), ("my clips/b.mp4", "playing drums"), ("c.mp4", "singing")]
    tab = ["a.mp4\tplaying guitar", "my clips/b.mp4\tplaying drums", "c.mp4\tsinging"]
    quoted = ['a.mp4 "playing guitar"', '"my clips/b.mp4" "playing drums"', 'c.mp4 singing']
    by_class_list = ["a.mp4 playing guitar", "my clips/b.mp4 playing drums", "c.mp4 singing"]
    assert sorted(_labels(tmp_path, tab)) == sorted(expected)
    assert sorted(_labels(tmp_path, quoted)) == sorted(expected)
    assert _labels(tmp_path, by_class_list, KINETICS) == expected
    assert _labels(tmp_path, ["a.mp4 2", "my clips/b.mp4 0"], KINETICS) == [("a.mp4", "singing"),
                                                                           ("my clips/b.mp4", "playing guitar")]


@pytest.mark.parametrize("lines, classes, line, word", [
    (["a.mp4 guitar", "b.mp4 playing guitar"], None, 2, "ambiguous"),  # no class list: where does the path end?
    (["a.mp4 guitar", "b.mp4 playing guitar"], ["playing guitar", "guitar"], 2,
     "'playing guitar' and 'guitar'"),  # both are classes
    (["a.mp4 singing", "b.mp4 playing the banjo"], KINETICS, 2, "no known class"),
    (['a.mp4 "playing guitar" x'], None, 1, "3 fields"),
    (['"a.mp4 guitar'], None, 1, "unbalanced"),
    (["a.mp4\tguitar\tx"], None, 1, "tab-separated"),
    (["a.mp4 0", "b.mp4 1"], ["1", "0"], 1, "label 0 is ambiguous"),  # a name of one class, the index of another
])
def test_an_ambiguous_video_list_line_is_refused_with_its_number(videos, tmp_path, capsys, lines, classes, line,
                                                                 word):
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"{x}\n" for x in lines))
    extra = []
    if classes:
        (tmp_path / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
        extra = ["--classes", str(tmp_path / "classes.txt")]
    assert prep_main(["videos", "--list", str(lst), "--root", str(videos), "--out", str(tmp_path / "out"),
                      "--workers", "1", "--no-progress", *extra]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"{lst}:{line}:" in err and word in err, err


def test_video_lists_skip_comments_and_blank_lines_and_take_crlf(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"# clips\r\n\r\na.mp4 0\r\n  b.mp4 1  \r\n")
    assert [(e.line, e.path, e.label) for e in read_video_list(str(lst))] == [(3, "a.mp4", "0"), (4, "b.mp4", "1")]
    lst.write_bytes(b"\xef\xbb\xbfa.mp4 0\n")
    with pytest.raises(ListError, match=f"{lst}:1: starts with a byte-order mark"):
        read_video_list(str(lst))


# --------------------------------------------------------------------------- eval predict: list or video by content


def test_predict_tells_lists_from_videos_by_content(videos, tmp_path):
    video_named_txt = tmp_path / "clip.txt"
    video_named_txt.write_bytes((videos / "a.mp4").read_bytes())
    labelled = tmp_path / "clips.mp4"  # a list, whatever its name, with labels that hold spaces
    labelled.write_text(f"{videos / 'a.mp4'} playing guitar\n{videos / 'b.mp4'}\tplaying drums\n")
    assert looks_like_text(str(labelled)) and not looks_like_text(str(video_named_txt))
    found, empty, readings = collect_videos([str(video_named_txt), str(labelled)], KINETICS)
    assert found == [str(video_named_txt), str(videos / "a.mp4"), str(videos / "b.mp4")] and not empty
    assert readings == [{"input": str(video_named_txt), "read_as": "video"},
                        {"input": str(labelled), "read_as": "list", "videos": 2, "labels_ignored": True}]


@pytest.mark.slow
def test_predict_scores_a_video_named_txt_and_a_labelled_list(videos, tsn_tiny_ckpt, tmp_path, capsys):
    video_named_txt = tmp_path / "clip.txt"
    video_named_txt.write_bytes((videos / "a.mp4").read_bytes())
    labelled = tmp_path / "list.txt"
    labelled.write_text(f"{videos / 'b.mp4'} moving_down\n")
    assert eval_main(["predict", str(video_named_txt), str(labelled), "--ckpt", tsn_tiny_ckpt, "--json",
                      "--workers", "1", "--py-workers", "1", "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["predicted"] == 2 and result["unreadable"] == 0
    assert f"{video_named_txt}: binary content, read as a video" in captured.err
    assert f"{labelled}: text, read as a list of 1 videos, labels ignored" in captured.err


def test_labels_inferred_from_the_lists_are_names_even_when_numeric(tmp_path):
    """Without --classes the labels are the class names themselves: "1" names class "1", never index 1."""
    assert _labels(tmp_path, ["a.mp4 1", "b.mp4 jumping"]) == [("a.mp4", "1"), ("b.mp4", "jumping")]

"""The class names of the zoo's datasets ship as package data (models/classes/), each zoo row names its list, and
`eval predict` prints names for an authors' file the zoo lists."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.predict import PredictError, model_classes
from eval.predict import main as predict_main
from models import dataset_classes, zoo
from models.checkpoints import Recognized, recognize_file
from models.dataset_classes import CLASS_LISTS, ClassListError, load_class_list

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT.parent / "shared" / "refs"

# (list, index, name): spot checks against the sources' own files (models/classes/README.md)
KNOWN = [("kinetics400", 0, "abseiling"), ("kinetics400", 399, "zumba"),
         ("kinetics400", 6, "arm wrestling"), ("kinetics600", 1, "acting in play"),
         ("kinetics700", 699, "zumba"), ("ssv2", 0, "Approaching something with your camera"),
         ("ssv2", 100, "Pushing something so that it slightly moves"),
         ("ssv2", 173, "Wiping something off of something"), ("diving48", 0, "Back+15som+05Twis+FREE"),
         ("diving48", 30, "Forward+Dive+NoTwis+STR"), ("diving48", 47, "Reverse+Dive+NoTwis+TUCK")]


@pytest.mark.parametrize("name", sorted(CLASS_LISTS))
def test_each_list_has_its_count_of_distinct_names(name):
    names = load_class_list(name)
    assert len(names) == CLASS_LISTS[name] == len(set(names))
    assert all(n == n.strip() and n for n in names)


@pytest.mark.parametrize("name,index,expected", KNOWN)
def test_names_sit_at_the_released_heads_indices(name, index, expected):
    assert load_class_list(name)[index] == expected


def test_kinetics_lists_are_alphabetical():
    for name in ("kinetics400", "kinetics600", "kinetics700"):
        names = load_class_list(name)
        assert names == sorted(names)


def test_every_video_row_names_a_list_of_its_head_size():
    for entry in zoo.ZOO:
        if entry.dataset == "imagenet":
            assert entry.classes == ""
            continue
        assert entry.classes in CLASS_LISTS, entry.key
        assert len(load_class_list(entry.classes)) == entry.num_classes, entry.key


def test_each_row_is_found_from_its_model_and_arguments():
    for entry in zoo.ZOO:
        found = zoo.class_list_for(entry.model, dict(entry.args, num_classes=entry.num_classes, num_frames=8))
        if entry.classes:
            assert found is not None and found[0] == entry.classes, entry.key
        else:
            assert found is None, entry.key


def test_a_file_of_another_variant_or_head_size_gets_no_list():
    # ILA's SSv2 architecture with a 400-way head is no released file; an I3D with temporal strides neither
    assert zoo.class_list_for("ila_vit_base_patch16", {"arch": "ssv2", "num_classes": 400}) is None
    assert zoo.class_list_for("i3d_resnet50", {"num_classes": 400, "temporal_stride": True}) is None
    assert zoo.class_list_for("i3d_resnet50", {"num_classes": 51, "temporal_stride": False}) is None


def test_a_damaged_installed_list_is_refused_in_one_line(tmp_path, monkeypatch):
    bad = tmp_path / "ssv2.txt"
    bad.write_text("one\ntwo\n")
    monkeypatch.setattr(dataset_classes, "class_list_path", lambda name: bad)
    with pytest.raises(ClassListError, match="2 lines .* expected 174") as err:
        load_class_list("ssv2")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(dataset_classes, "class_list_path", lambda name: tmp_path / "missing.txt")
    with pytest.raises(ClassListError, match="not installed"):
        load_class_list("ssv2")


def test_predict_takes_the_zoo_list_for_an_authors_file_and_asks_otherwise():
    ibm = Recognized(origin="IBM action-recognition", model="i3d_resnet50",
                     model_args={"num_classes": 174, "temporal_stride": False})
    assert model_classes("SSV2-I3D-ResNet-50-f32.pth.tar", ibm, None) == load_class_list("ssv2")
    tsn = Recognized(origin="IBM action-recognition", model="tsn_resnet50", model_args={"num_classes": 400})
    with pytest.raises(PredictError, match="matches no zoo row.*--classes") as err:
        model_classes("model_best.pth.tar", tsn, None)
    assert "(IBM action-recognition: tsn_resnet50, 400 classes)" in str(err.value)  # not "a IBM ... file"


def _materialize(case: str, folder: Path) -> str:
    if not (REFS / "materialize.py").is_file():
        pytest.skip(f"golden-logit fixtures not found at {REFS}")
    sys.path.insert(0, str(REFS))
    import materialize

    spec = materialize.load_spec(str(REFS / "cases" / f"{case}.json"))
    path = folder / spec["container"]["file_name"]
    torch.save(materialize.build_checkpoint(spec), path)
    return str(path)


def test_an_authors_file_is_recognised_to_its_rows_list(tmp_path):
    path = _materialize("sts_slowonly50_f8", tmp_path)  # saved as epoch_50.pth: the name tells nothing
    rec = recognize_file(path)
    assert rec.classes is None
    assert model_classes(path, rec, None) == load_class_list("kinetics400")


@pytest.mark.slow
def test_predict_prints_class_names_for_an_authors_file(tmp_path, capsys):
    from prep.synthetic import encode_video, render

    path = _materialize("sts_x3d_s_f13", tmp_path)  # the cheapest network of the fixtures
    video = tmp_path / "clip.mp4"
    encode_video(str(video), render(0, np.random.default_rng(0), 8, (32, 48)), fps=12, codec="h264")
    assert predict_main([str(video), "--ckpt", path, "--frames", "4", "--top", "3", "--workers", "1",
                         "--no-progress", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    names = set(load_class_list("kinetics400"))
    top = [part.rsplit(" ", 1)[0] for part in line.split(": ", 1)[1].split(", ")]
    assert len(top) == 3 and all(name in names for name in top), line


@pytest.mark.slow
def test_the_lists_are_installed_with_the_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("*.whl"))
    inside = set(zipfile.ZipFile(wheel).namelist())
    for name in CLASS_LISTS:
        assert f"models/classes/{name}.txt" in inside

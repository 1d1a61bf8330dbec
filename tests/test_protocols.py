"""The source projects' sampling and crops against their own code's outputs (../shared/refs/sampling): every
request of requests.jsonl through `python -m eval views --batch`, compared with its case as the fixtures' README
says (temporal cases also with the geometry of their protocol's crop family)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines import protocols
from pipelines.protocols import ClipRule, ProtocolError

HERE = os.path.dirname(os.path.abspath(__file__))
REFS = os.path.join(HERE, "..", "..", "shared", "refs", "sampling")
FILES = ("ibm", "sifar", "sts", "aim", "ila", "rescale")
SIZES = ([340, 256], [256, 340], [320, 240], [456, 256])
# the crop family whose geometry a protocol name's temporal requests take (fixtures README, "Requests")
NAME_GEOMETRY = {"ibm": "ibm.crops.in224.c1", "sifar": "sifar.crops.in224.c1",
                 "mmaction": "aim.crops.val_resize256_centercrop224", "ila": "ila.master.crops.16_8.crop1"}


def _families() -> dict:
    if not os.path.isdir(REFS):
        if os.environ.get("CI"):
            pytest.fail(f"the sampling fixtures are missing: {REFS}")
        pytest.skip(f"no sampling fixtures at {REFS}")
    out = {}
    for name in FILES:
        with open(os.path.join(REFS, f"{name}.json")) as f:
            out.update({fam["id"]: fam for fam in json.load(f)["families"]})
    return out


@pytest.fixture(scope="module")
def answered():
    """(requests, families, answers): one `eval views --batch` run over every fixture request."""
    families = _families()
    with open(os.path.join(REFS, "requests.jsonl")) as f:
        requests = [json.loads(line) for line in f]
    batch = "".join(json.dumps(r["request"]) + "\n" for r in requests)
    root = os.path.dirname(HERE)
    run = subprocess.run([sys.executable, "-m", "eval", "views", "--batch", "-"], input=batch, capture_output=True,
                         text=True, cwd=root, env=dict(os.environ, PYTHONPATH=root), timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(answers) == len(requests)
    return requests, families, answers


def _crop_geometry(families: dict, request: dict) -> list:
    """The sorted (resize, box) pairs a temporal request's views must carry."""
    name = request["protocol"]
    if name in NAME_GEOMETRY:
        fam = families[NAME_GEOMETRY[name]]
    elif name == "aim-b16-diving48-f32":  # README 6: the README's single crop (ThreeCrop's middle box) or all three
        fam = families["aim.crops.k400_resize224_centercrop224"]
    else:
        fam = next(f for f in families.values() if f["output"] == "crops" and f["id"].split(".")[0] != "rescale"
                   and any(name in r["rows"] for r in f.get("released", [])))
    case = next(c for c in fam["cases"] if c["frame"] == request["frame_size"])
    return sorted((case["resized"], box) for box in case["crops"])


def _inside(indices: list, case: dict) -> bool:
    return len(indices) == len(case["lo"]) and all(lo <= i <= hi for i, lo, hi in zip(indices, case["lo"], case["hi"]))


def _matches(family: str, output: str, case: dict, request: dict, answer: dict, families: dict) -> bool:
    if "error" in answer:
        return False
    views = answer.get("views", [])
    geometry = sorted((v["resize"], v["box"]) for v in views)
    if output == "views":
        boxes = _crop_geometry(families, request)
        if request["protocol"] == "aim-b16-diving48-f32" and len(views) == 3 * len(case["views"]):
            boxes = _crop_geometry(families, {**request, "protocol": "aim-b16-k700-f32"})  # the config's ThreeCrop
        want = sorted((list(ix), list(r), list(b)) for ix in case["views"] for r, b in boxes)
        return sorted((v["indices"], v["resize"], v["box"]) for v in views) == want
    if output == "support":
        draws = answer.get("draws", [])
        return len(draws) == 50 and all(_inside(d["indices"], case) for d in draws)
    if output == "support_per_view":
        per_view = _crop_geometry(families, request)
        return (all(_inside(v["indices"], case) for v in views)
                and geometry == sorted(per_view * case["num_views"]))
    if output == "crops":
        return geometry == sorted((case["resized"], box) for box in case["crops"])
    if output == "resize":
        return len(views) == (3 if family == "rescale.mmcv_source.s224" else 1) and \
            all(v["resize"] == case["resized"] for v in views)
    raise AssertionError(f"unknown output {output}")


def test_every_fixture_case_matches(answered):
    requests, families, answers = answered
    failed = {}
    for r, answer in zip(requests, answers):
        fam = families[r["family"]]
        case = fam["cases"][r["case"]]
        if not _matches(fam["id"], fam["output"], case, r["request"], answer, families):
            failed.setdefault(r["family"], (r["request"], answer))
    assert not failed, f"{len(failed)} families differ, e.g. " + json.dumps(next(iter(failed.items())))[:1500]
    assert len(answers) == 5193


def test_every_family_is_asked(answered):
    requests, families, _ = answered
    assert {r["family"] for r in requests} == set(families)


# ------------------------------------------------------------------ the arithmetic's corners, by hand


def test_ibm_uniform_clips_shift_by_whole_frames():
    """n=270, T=8, 3 clips: the authors' first frames 15, 16, 17 (the issue's example)."""
    views = protocols.get("ibm").test_clips(270, ClipRule(8, "uniform", 1, 3))
    assert sorted(int(v[0]) for v in views) == [15, 16, 17]


def test_ibm_short_video_takes_the_seeded_choice():
    views = protocols.get("ibm").test_clips(8, ClipRule(8, "uniform", 1, 1))
    assert views[0].tolist() == [0, 3, 3, 3, 4, 5, 7, 7]


def test_mmaction_dense_loops_short_videos():
    view = protocols.get("mmaction").test_clips(62, ClipRule(32, "dense", 2, 1))[0]
    assert view.tolist() == list(range(0, 62, 2)) + [0]


def test_twice_on_a_short_video_gives_only_the_first_views():
    rule = ClipRule(8, "dense", 8, 3, twice=True)
    assert len(protocols.get("mmaction").test_clips(63, rule)) == 3
    assert len(protocols.get("mmaction").test_clips(64, rule)) == 6


def test_ila_views_stay_inside_the_random_support():
    """ILA's multi-view test draws each position in [c * (n // T), c * (n // T) + n // T - 1]."""
    n, frames = 270, 8
    avg = n // frames
    for v in protocols.get("ila").test_clips(n, ClipRule(frames, clips=4)):
        assert all(c * avg <= i < (c + 1) * avg for c, i in enumerate(v.tolist()))


def test_mmaction_three_crop_floors_odd_steps():
    boxes = protocols.get("mmaction").boxes(320, 240, 3, 256, 256)
    assert sorted(b.box[0] for b in boxes) == [0, 42, 84] and boxes[0].resize == (341, 256)


def test_resizes_truncate_or_round_as_their_library():
    assert protocols.torchvision_resize(340, 256, 224) == (297, 224)
    assert protocols.mmcv_resize(340, 256, 224) == (298, 224)
    assert protocols.dali_resize(340, 256, 224) == (298, 224)


def test_ten_crops_carry_their_mirror_images():
    boxes = protocols.get("ibm").boxes(340, 256, 10, 224, 256)
    assert len(boxes) == 10 and sum(b.flip for b in boxes) == 5
    assert {b.box for b in boxes if b.flip} == {b.box for b in boxes if not b.flip}


@pytest.mark.parametrize("name, rule, why", [
    ("ibm", ClipRule(8, "uniform", 1, 1, twice=True), "twice"),
    ("ibm", ClipRule(8, "frame_uniform"), "frame_uniform"),
    ("ibm", ClipRule(8, "uniform", 3), "divide"),
    ("mmaction", ClipRule(8, "uniform", 1, 2), "clips must be 1"),
    ("ila", ClipRule(8, "dense", 2), "sampling"),
])
def test_options_a_protocol_lacks_are_refused(name, rule, why):
    with pytest.raises(ProtocolError, match=why):
        protocols.get(name).test_clips(100, rule)


def test_training_draws_are_reproducible_and_vary():
    rule = ClipRule(8, "uniform")
    proto = protocols.get("mmaction")
    a = [proto.train_clip(300, rule, np.random.default_rng(s)).tolist() for s in range(5)]
    b = [proto.train_clip(300, rule, np.random.default_rng(s)).tolist() for s in range(5)]
    assert a == b and len({tuple(x) for x in a}) > 1

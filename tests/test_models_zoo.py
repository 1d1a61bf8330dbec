"""models.zoo: the released checkpoints of the five source projects, their toolkit models and test protocols,
`python -m models zoo` and `python -m models info --ckpt`."""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

import models
from eval.__main__ import augment_overrides, build_parser
from eval.plan import ViewOptions, plan_frames, settle
from eval.run_config import run_config
from pipelines import protocols
from models import zoo
from models.__main__ import main as models_main
from models.profile import count_params
from models.registry import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from pipelines.augment import EVAL_CROPS
from train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT.parent / "shared" / "refs"
NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}
KEYS = [e.key for e in zoo.ZOO]


def test_every_released_file_of_the_readmes_is_listed():
    """IBM: 4 K400 + 4 SSv2 files; SIFAR: the 4 linked; STS: 6 + 4 (100-epoch) K400, 5 SSv2, 6 ImageNet;
    AIM: 6 K400, 1 K700, 1 Diving-48 (the ViT-L K700/Diving-48 rows have no file); ILA: 6 K400, 4 SSv2."""
    counts = {p: sum(e.project == p for e in zoo.ZOO) for p in zoo.PROJECTS}
    assert counts == {"ibm": 8, "sifar": 4, "sts": 21, "aim": 8, "ila": 10}
    assert len(set(KEYS)) == len(KEYS)
    assert len({e.file_name for e in zoo.ZOO}) == len(KEYS)  # no two rows would save to the same CKPT


@pytest.mark.parametrize("key", KEYS)
def test_entry_is_well_formed(key):
    e = zoo.find(key)
    p = e.protocol
    assert e.project in zoo.PROJECTS and e.dataset in zoo.DATASETS and e.num_classes == zoo.DATASETS[e.dataset]
    assert 0 < e.top1 < 100 and e.url.startswith("https://")
    assert p.sampling in ("tsn", "dense", "frame_uniform") and p.frames >= 1 and p.frame_stride >= 1 and p.clips >= 1
    # every row names its authors' protocol; the image pre-training rows are evaluated as images (timm's crop)
    assert p.scheme in protocols.PROTOCOLS and (p.scheme != "vidkit") == (e.dataset != "imagenet")
    assert p.crops in EVAL_CROPS and p.crop <= p.short_side and p.norm in NORMS
    assert not e.config or (ROOT / e.config).is_file()


@pytest.mark.parametrize("key", KEYS)
def test_model_builds_with_the_files_arguments_and_normalisation(key):
    """The toolkit model the file maps to (if registered yet) builds on the meta device with the entry's
    arguments, for the protocol's clip length, and normalises as the authors' test pipeline does."""
    e = zoo.find(key)
    assert zoo.available(e), f"{key}: {e.model} is not registered (a typo in models/zoo.py?)"
    with torch.device("meta"):
        model = models.create_model(e.model, **zoo.build_args(e))
    # an image pre-training file records its own contract (ImageNet statistics, 224 images): zoo.contract's
    c = model.input_contract if e.dataset != "imagenet" else zoo.contract(key)
    assert model.num_classes == e.num_classes
    if e.dataset != "imagenet":
        assert c.num_frames == e.protocol.frames
    mean, std = NORMS[e.protocol.norm]
    torch.testing.assert_close(torch.tensor(c.mean), torch.tensor(mean), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.tensor(c.std), torch.tensor(std), atol=1e-3, rtol=0)


def _runnable() -> list[str]:
    return [e.key for e in zoo.ZOO if not e.unsupported]


class _AuthorsFile:
    """What models.checkpoints recognises in an authors' file: its origin, model and arguments, no run config."""

    def __init__(self, project: str, model: str = "", **model_args):
        self.origin = {"ibm": "IBM action-recognition", "sifar": "SIFAR", "sts": "mmaction", "aim": "AIM",
                       "ila": "ILA"}[project]
        self.config, self.model, self.model_args = None, model, model_args


@pytest.mark.parametrize("key", _runnable())
def test_eval_command_reproduces_the_protocol(key):
    """The command's ARGS, parsed by `python -m eval` and settled as evaluation settles them (eval.plan), give
    exactly the row's protocol: frames, sampling, stride, views, resize and crop, and the evaluated set."""
    e = zoo.find(key)
    assert zoo.available(e), f"{key}: {e.model} is not registered (a typo in models/zoo.py?)"
    words = shlex.split(zoo.command(e))
    assert words[:2] == ["make", "eval"]
    make = dict(w.split("=", 1) for w in words[2:])
    assert make["CKPT"] == e.file_name and make["DATA"] == f"data/{e.dataset}"
    args = build_parser().parse_args(["--ckpt", e.file_name, *shlex.split(make["ARGS"])])
    options = ViewOptions(args.protocol, args.clips, args.crops, args.twice, args.frames, args.sampling,
                          args.frame_stride, augment_overrides(args))
    rec = _AuthorsFile(e.project)
    c = zoo.contract(e.key)
    plan = settle(rec, e.file_name, run_config(rec), options, c.crop_size)
    p = e.protocol
    assert plan_frames(rec, e.file_name, options) == p.frames and plan.zoo_key == key
    assert (plan.scheme, plan.clips, plan.crops, plan.min_frames) == (p.scheme, p.clips, p.crops, p.min_frames)
    c = plan.contract(c)
    assert c.sampling == p.sampling and (p.sampling != "dense" or c.frame_stride == p.frame_stride)
    assert plan.geometry == protocols.get(p.scheme).geometry(p.crops, p.crop, None if p.scheme == "ila" else
                                                             p.short_side)


def test_a_file_named_as_a_row_takes_its_protocol_by_default():
    e = zoo.find("ibm-i3d-r50-k400")
    rec = _AuthorsFile("ibm")
    plan = settle(rec, f"/somewhere/{e.file_name}", run_config(rec), ViewOptions(), 224)
    assert (plan.zoo_key, plan.clips, plan.crops, plan.geometry, plan.min_frames) == (e.key, 10, 3, (256, 256), 30)
    other = settle(rec, "/somewhere/renamed.pth", run_config(rec), ViewOptions(), 224)
    assert (other.scheme, other.zoo_key, other.clips) == ("ibm", "", 1)
    # a renamed file whose model, head and variant leave one protocol takes it (the 4 IBM SSv2 I3D-R50 rows: one)
    ssv2 = _AuthorsFile("ibm", "i3d_resnet50", num_classes=174, temporal_stride=False)
    found = settle(ssv2, "best.pth", run_config(ssv2), ViewOptions(), 224)
    assert (found.zoo_key, found.clips, found.min_frames) == ("ibm-i3d-r50-ssv2", 2, 3)
    # AIM's K400 rows differ in frames: no default, the project's protocol and a warning naming the rows
    aim_file = _AuthorsFile("aim", "aim_vit_base_patch16", num_classes=400)
    aim = settle(aim_file, "best.pth", run_config(aim_file), ViewOptions(), 224)
    assert (aim.scheme, aim.zoo_key) == ("mmaction", "")


@pytest.mark.parametrize("path", sorted({e.config for e in zoo.ZOO if e.config}))
def test_fine_tuning_configs_load_and_build(path):
    """Every config an entry points to is a valid recipe whose model builds with its arguments, and agrees
    with the arguments of the files that point to it and are of its model."""
    cfg = load_config(["--config", str(ROOT / path), "--data", "unused"])
    with torch.device("meta"):
        models.create_model(cfg.model, num_classes=10, num_frames=cfg.num_frames or None, **cfg.model_args)
    same = [e for e in zoo.ZOO if e.config == path and e.model == cfg.model]
    assert same, f"{path} trains {cfg.model}, which none of the entries pointing to it is"
    for e in same:
        shared = set(e.args) & set(cfg.model_args)
        assert {k: e.args[k] for k in shared} == {k: cfg.model_args[k] for k in shared}


# ----------------------------------------------------------------------------------------------- the CLI


def test_zoo_table_and_json(capsys):
    assert models_main(["zoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == KEYS
    assert all(r["command"] is None for r in rows if r["unsupported"])
    assert models_main(["zoo", "sifar-*"]) == 0
    out = capsys.readouterr().out.splitlines()
    table = out[:5]  # header + the 4 SIFAR rows
    assert [line.split()[0] for line in table] == ["key"] + [k for k in KEYS if k.startswith("sifar-")]
    columns = [[line.index(word, len(line.split()[0])) for word in line.split()[1:3]] for line in table]
    assert all(c == columns[0] for c in columns)  # dataset and top-1 start at the same place on every line
    commands = [line for line in out if line.startswith("make eval")]
    assert commands == [zoo.command(zoo.find(k)) for k in KEYS if k.startswith("sifar-")]
    assert models_main(["zoo", "--project", "ila", "--dataset", "ssv2", "--json"]) == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == [
        e.key for e in zoo.ZOO if e.project == "ila" and e.dataset == "ssv2"]
    assert models_main(["zoo", "--project", "sifar", "--dataset", "diving48"]) == 2
    assert "no zoo entry matches" in capsys.readouterr().err


def _toolkit_file(path: Path) -> torch.nn.Module:
    """A checkpoint as `python -m train` writes it, of a tiny model."""
    model = models.create_model("tsn_tiny", num_classes=6)
    torch.save({"model_name": "tsn_tiny", "model": model.state_dict(), "num_classes": 6,
                "config": {"model_args": {}}, "contract": model.input_contract.to_dict(),
                "classes": [f"c{i}" for i in range(6)]}, path)
    return model


def test_info_ckpt_reports_origin_model_arguments_contract(tmp_path, capsys):
    model = _toolkit_file(tmp_path / "best.pt")
    assert models_main(["info", "--ckpt", str(tmp_path / "best.pt"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["origin"] == "vidkit (tsn_tiny)" and found["model"] == "tsn_tiny"
    assert found["arguments"]["num_classes"] == 6 and found["params"] == count_params(model)
    assert found["contract"] == json.loads(json.dumps(model.input_contract.to_dict())) and found["zoo"] == []
    assert models_main(["info", "--ckpt", str(tmp_path / "best.pt"), "--frames", "4"]) == 0
    text = capsys.readouterr().out
    assert "origin       vidkit (tsn_tiny)" in text and "NTCHW 4x" in text and "num_classes=6" in text


def test_info_ckpt_refuses_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    assert models_main(["info", "--ckpt", str(tmp_path / "notes.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("models: error: ") and "notes.pth" in err and len(err.strip().splitlines()) == 1
    assert models_main(["info", "--ckpt", str(tmp_path / "gone.pth")]) == 2
    assert "gone.pth" in capsys.readouterr().err
    assert models_main(["info"]) == 2 and "NAME or --ckpt" in capsys.readouterr().err


@pytest.mark.skipif(not (REFS / "materialize.py").is_file() and not os.environ.get("CI"),
                    reason="golden-logit fixtures not present (required under CI)")
def test_info_ckpt_names_the_zoo_row_of_a_released_file(tmp_path, capsys):
    """IBM's TAM-ResNet-50 K400 file, laid out as released (fixture weights): recognised, and its zoo row and
    command printed."""
    sys.path.insert(0, str(REFS))
    try:
        import materialize
    finally:
        sys.path.remove(str(REFS))
    spec = materialize.load_spec(str(REFS / "cases" / "ibm_tam_r50_nots.json"))
    path = tmp_path / spec["container"]["file_name"]
    torch.save(materialize.build_checkpoint(spec), path)
    assert models_main(["info", "--ckpt", str(path), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["model"] == "tam_resnet50" and "IBM" in found["origin"]
    assert found["zoo"] == ["ibm-tam-r50-k400"]
    os.remove(path)


# ------------------------------------------------------------------------- the protocol reaches python -m eval


def test_eval_cli_protocol_options_reach_the_model(data, tmp_path, monkeypatch, capsys):
    """`python -m eval --frames --sampling --frame-stride --eval-scale --eval-crop full` on a toolkit checkpoint:
    the model sees clips of those frames and crops of the full short side, and metrics.json records them."""
    import eval.run
    from eval.__main__ import main as eval_main
    from prep import open_dataset
    from train.config import TrainConfig

    classes = open_dataset(data, "val").classes
    model = models.create_model("tsn_tiny", num_classes=len(classes), num_frames=4)
    cfg = TrainConfig(model="tsn_tiny", data=str(data), threads=1).to_dict()
    torch.save({"model_name": "tsn_tiny", "num_classes": len(classes), "classes": list(classes),
                "contract": model.input_contract.replace(crop_size=32).to_dict(), "config": cfg,
                "model": model.state_dict(), "ema": None}, tmp_path / "best.pt")
    seen, score = [], eval.run.score_videos

    def watching(model, loader, *args, **kwargs):
        seen.append((next(iter(loader))["clips"].shape, loader.contract))
        return score(model, loader, *args, **kwargs)

    monkeypatch.setattr(eval.run, "score_videos", watching)
    argv = ["--ckpt", str(tmp_path / "best.pt"), "--device", "cpu", "--no-progress", "--py-workers", "1",
            "--out", str(tmp_path / "out"), "--crops", "3", "--frames", "3", "--sampling", "dense",
            "--frame-stride", "2", "--eval-scale", "1.5", "--eval-crop", "full"]
    assert eval_main(argv) == 0
    (shape, contract), = seen
    assert tuple(shape[1:]) == (3, 3, 48, 48)  # NTCHW: 3 frames, crops of the 48 px short side
    assert (contract.sampling, contract.frame_stride) == ("dense", 2)
    protocol = json.loads(Path(tmp_path / "out" / "metrics.json").read_text())["protocol"]
    assert protocol == {"protocol": "vidkit", "zoo_key": None, "source": "the run's config", "frames": 3,
                        "sampling": "dense", "frame_stride": 2, "short_side": 48, "crop": 48, "min_frames": 0,
                        "frames_per_group": 1}
    capsys.readouterr()
    assert eval_main(argv[:-4] + ["--eval-scale", "0.5"]) == 2
    assert "eval_scale" in capsys.readouterr().err

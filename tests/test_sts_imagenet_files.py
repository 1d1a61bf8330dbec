"""The STS paper's ImageNet pre-training files (UCSC-VLAA/Image-Pretraining-for-Video, Image_Pre_Training):
timm train.py checkpoints of `V3D` models, recognised by models.sts_files.sts_image_pretraining.

The files are written here with the authors' key names, from a rename table written out independently of the
loader's (so a wrong rename fails), and a handful of literal names and shapes read in the authors' code
(paths below are under Image_Pre_Training/timm/models/, commit c52c9463).
"""
from __future__ import annotations

import argparse
import re

import pytest
import torch

import models
from models import zoo
from models.checkpoints import Checkpoint, CheckpointError, recognize
from models.factory import check_same_architecture, from_checkpoint, load_pretrained
from models.registry import IMAGENET_MEAN, IMAGENET_STD
from helpers import randomise_batchnorm

ARCHS = {  # timm --model (scripts/*/distributed_train.sh) -> toolkit model
    "v3d_csn50_ir_224": "ircsn_50", "v3d_r2plus1d34_224": "r2plus1d_34",
    "v3d_slowfast50_4x16_224": "slowfast_50_4x16", "v3d_slowfast50_8x8_224": "slowfast_50_8x8",
    "v3d_slowonly50_224": "slowonly_50", "v3d_x3d_s_224": "x3d_s",
}
ROWS = {"ircsn_50": "sts-ircsn50-imagenet", "r2plus1d_34": "sts-r2plus1d34-imagenet",
        "slowfast_50_4x16": "sts-slowfast50-4x16-imagenet", "slowfast_50_8x8": "sts-slowfast50-8x8-imagenet",
        "slowonly_50": "sts-slowonly50-imagenet", "x3d_s": "sts-x3d-s-imagenet"}

# Our keys -> V3D's: `get_feature` is the backbone (v3d.py:84), mmcv ConvModules hold `conv` / `bn`, R(2+1)D's
# Conv2plus1d `conv_s` / `bn_s` / `conv_t` (video_models/resnet2plus1d.py:69-78), ir-CSN's conv2 a Sequential
# (video_models/resnet_csn.py:73), SlowFast's `slow_path` / `fast_path` (video_models/resnet3d_slowfast.py:459-460)
# with bare-conv laterals `conv1_lateral`, `layer{i}_lateral` (resnet3d_slowfast.py:46, 67-79), X3D's
# `conv1_s` / `conv1_t` / `conv5` / `se_module` (video_models/x3d.py:442, 452, 303, 137), the head `classifier`
# (v3d.py:97), X3D's before it `fc1` (v3d.py:90).
_BLOCK = (
    (r"\.(conv\d|downsample)\.0\.0\.", r".\1.conv.conv_s."), (r"\.(conv\d|downsample)\.0\.1\.", r".\1.conv.bn_s."),
    (r"\.(conv\d|downsample)\.0\.3\.", r".\1.conv.conv_t."),
    (r"\.(conv\d|downsample)\.0\.", r".\1.conv."), (r"\.(conv\d|downsample)\.1\.", r".\1.bn."),
)
_CSN = ((r"\.conv2\.0\.", ".conv2.0.conv."), (r"\.conv2\.1\.", ".conv2.0.bn."))
_X3D = (
    (r"^stem\.0\.", "conv1_s.conv."), (r"^stem\.1\.", "conv1_t.conv."), (r"^stem\.2\.", "conv1_t.bn."),
    (r"^head\.conv_5\.0\.", "conv5.conv."), (r"^head\.conv_5\.1\.", "conv5.bn."),
    (r"\.conv_a\.0\.", ".conv1.conv."), (r"\.conv_a\.1\.", ".conv1.bn."), (r"\.conv_b\.", ".conv2.conv."),
    (r"\.bn_b\.", ".conv2.bn."), (r"\.conv_c\.0\.", ".conv3.conv."), (r"\.conv_c\.1\.", ".conv3.bn."),
    (r"\.shortcut\.0\.", ".downsample.conv."), (r"\.shortcut\.1\.", ".downsample.bn."), (r"\.se\.", ".se_module."),
)


def _stage(match) -> str:
    return f"layer{int(match[1]) + 1}."


def _v3d_key(key: str, model: str) -> str:
    """One key of our `model` as the authors' V3D names it."""
    if key.startswith("fc."):
        return "classifier." + key[3:]
    if model.startswith("x3d"):
        if key.startswith("head.lin_5."):
            return "fc1." + key[len("head.lin_5."):]
        if key.startswith("head.fc."):
            return "classifier." + key[len("head.fc."):]
        key = re.sub(r"^stages\.(\d)\.", _stage, key)
        return "get_feature." + next(re.sub(p, r, key, count=1) for p, r in _X3D if re.search(p, key))
    path = ""
    if model.startswith("slowfast"):
        fusion = re.match(r"fusions\.(\d)\.conv\.(.*)", key)
        if fusion:
            name = "conv1_lateral" if fusion[1] == "0" else f"layer{fusion[1]}_lateral"
            return f"get_feature.slow_path.{name}.conv.{fusion[2]}"
        side, key = key.split("_", 1)
        path, key = f"{side}_path.", re.sub(r"^layers\.(\d)\.", _stage, key)
    stem = {"stem.0.": "conv1.conv.", "stem.1.": "conv1.bn."}
    if model.startswith("r2plus1d"):
        stem = {"stem.0.": "conv1.conv.conv_s.", "stem.1.": "conv1.conv.bn_s.", "stem.3.": "conv1.conv.conv_t.",
                "stem.4.": "conv1.bn."}
    prefix = next((p for p in stem if key.startswith(p)), None)
    if prefix:
        return f"get_feature.{path}{stem[prefix]}{key[len(prefix):]}"
    rules = (_CSN if model.startswith("ircsn") else ()) + _BLOCK
    return f"get_feature.{path}" + next(re.sub(p, r, key, count=1) for p, r in rules if re.search(p, key))


def _v3d_state_dict(model: torch.nn.Module, name: str) -> dict:
    sd = {_v3d_key(k, name): v for k, v in model.state_dict().items()}
    if "fc1.weight" in sd:  # V3D's fc1 is a Linear (create_classifier), our lin_5 a 1x1x1 conv
        sd["fc1.weight"] = sd["fc1.weight"].flatten(1)
    return sd


def _build(name: str, **kwargs) -> torch.nn.Module:
    return models.create_model(name, **{**zoo.find(ROWS[name]).args, "num_classes": 1000, **kwargs})


def _timm_container(arch: str, sd: dict) -> dict:
    """What timm's CheckpointSaver.save_checkpoint writes (utils/checkpoint_saver.py:100-115)."""
    args = argparse.Namespace(model=arch, num_classes=1000, opt="lamb", lr=5e-3, drop_path=0.05, crop_pct=0.95)
    return {"epoch": 299, "arch": arch, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "version": 2, "args": args, "amp_scaler": {"scale": 65536.0}, "metric": 78.8}


# literal names and shapes, read in the authors' code
_LITERAL = {
    "v3d_csn50_ir_224": {  # v3d.py:318 num_features 2048; resnet_csn.py:115 conv1_kernel (3, 7, 7); :73 conv2
        "classifier.weight": (1000, 2048), "get_feature.conv1.conv.weight": (64, 3, 3, 7, 7),
        "get_feature.layer1.0.conv2.0.conv.weight": (64, 1, 3, 3, 3),
        "get_feature.layer4.2.conv3.bn.running_var": (2048,)},
    "v3d_r2plus1d34_224": {  # v3d.py:291 num_features 512; resnet2plus1d.py:69-78 conv_s / bn_s / conv_t
        "classifier.weight": (1000, 512), "get_feature.conv1.conv.conv_s.weight": (83, 3, 1, 7, 7),
        "get_feature.conv1.conv.conv_t.weight": (64, 83, 3, 1, 1), "get_feature.layer2.0.downsample.bn.bias": (128,)},
    "v3d_slowfast50_4x16_224": {  # v3d.py:207 fusion_kernel=5, :217-218 fast conv1 (5, 7, 7) at 8 channels, :223 2304
        "classifier.weight": (1000, 2304), "get_feature.slow_path.conv1_lateral.conv.weight": (16, 8, 5, 1, 1),
        "get_feature.fast_path.conv1.conv.weight": (8, 3, 5, 7, 7),
        "get_feature.slow_path.layer3_lateral.conv.weight": (256, 128, 5, 1, 1)},
    "v3d_slowfast50_8x8_224": {  # v3d.py:245 fusion_kernel=7
        "classifier.weight": (1000, 2304), "get_feature.slow_path.layer1_lateral.conv.weight": (64, 32, 7, 1, 1)},
    "v3d_slowonly50_224": {  # v3d.py:183 num_features 2048; ResNet3dSlowOnly conv1 (1, 7, 7)
        "classifier.weight": (1000, 2048), "get_feature.conv1.conv.weight": (64, 3, 1, 7, 7),
        "get_feature.layer3.0.conv1.conv.weight": (256, 512, 3, 1, 1)},
    "v3d_x3d_s_224": {  # v3d.py:89-94 fc1 feat_dim -> 2048, classifier; x3d.py:302-313 feat_dim 192 x 2.25
        "classifier.weight": (1000, 2048), "fc1.weight": (2048, 432), "fc1.bias": (2048,),
        "get_feature.conv1_s.conv.weight": (24, 3, 1, 3, 3), "get_feature.conv5.conv.weight": (432, 192, 1, 1, 1),
        "get_feature.layer1.0.se_module.fc1.weight": (8, 54, 1, 1, 1)},
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_authors_names_are_recognised_as_the_zoo_rows_model(arch):
    name = ARCHS[arch]
    with torch.device("meta"):
        model = _build(name)
    sd = _v3d_state_dict(model, name)
    for key, shape in _LITERAL[arch].items():
        assert tuple(sd[key].shape) == shape, key
    assert all(k.startswith(("get_feature.", "classifier.", "fc1.")) for k in sd)
    rec = recognize(Checkpoint("model_best.pth.tar", _timm_container(arch, sd), sd))
    row = zoo.find(ROWS[name])
    assert (rec.model, rec.model_args) == (name, dict(row.args, num_classes=1000))
    assert not row.unsupported and zoo.row(row)["command"].startswith("make eval")
    assert rec.config == {"task": "image", "image_size": 224}  # python -m eval reads an image folder at 224
    assert zoo.contract(ROWS[name]).crop_size == 224 and f"--protocol {row.key}" in zoo.row(row)["command"]
    assert (row.protocol.short_side, row.protocol.crop) == (256, 224)  # timm's crop_pct 0.875 at 224
    assert {k: v.shape for k, v in rec.state_dict.items()} == {k: v.shape for k, v in model.state_dict().items()}
    check_same_architecture(model, rec, "model_best.pth.tar")


def _randomised(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise_batchnorm(_build(name).eval())


def _round_trip(tmp_path, arch: str, cleaned: bool = False):
    name = ARCHS[arch]
    source = _randomised(name)
    sd = _v3d_state_dict(source, name)
    path = tmp_path / "model_best.pth.tar"
    torch.save(sd if cleaned else _timm_container(arch, sd), path)  # clean_checkpoint.py keeps the state dict only
    loaded = from_checkpoint(path).eval()
    assert type(loaded) is type(source)
    c = loaded.input_contract  # as V3D trained: timm's ImageNet statistics, 224 x 224 (v3d.py:31-34)
    assert (c.mean, c.std, c.crop_size) == (IMAGENET_MEAN, IMAGENET_STD, 224)
    assert c.num_frames == source.input_contract.num_frames
    x = torch.randn(1, 3, 1, 64, 64)  # an image as a one-frame clip, as V3D.forward unsqueezes it
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    return path, source


_STEM = {"x3d_s": "stem.0.weight", "ircsn_50": "stem.0.weight"}
_OTHER = {"x3d_s": {"head_bias": False}, "ircsn_50": {"bn_eps": 1e-5}}  # variants the files are not


@pytest.mark.parametrize("arch", ["v3d_x3d_s_224", "v3d_csn50_ir_224"])
def test_timm_file_loads_strictly_and_reproduces_the_network(tmp_path, arch):
    path, source = _round_trip(tmp_path, arch)
    fresh = from_checkpoint(path, num_classes=10, reset_head=True)
    assert fresh.num_classes == 10
    own = {k: v for k, v in source.state_dict().items() if k not in fresh.state_dict() or
           fresh.state_dict()[k].shape == v.shape}
    torch.testing.assert_close({k: fresh.state_dict()[k] for k in own if "head" not in k and not k.startswith("fc")},
                               {k: v for k, v in own.items() if "head" not in k and not k.startswith("fc")})
    with pytest.raises(CheckpointError, match="1000 classes"):
        from_checkpoint(path, num_classes=10)
    assert models.checkpoints.recognize_file(str(path), sts=True).model_args["sts"] is True
    name = ARCHS[arch]  # --pretrained: the paper fine-tunes these weights with STS on 8 frames, a new head
    target = _build(name, sts=True, num_frames=8, num_classes=174)
    load_pretrained(target, str(path))
    torch.testing.assert_close(target.state_dict()[_STEM[name]], source.state_dict()[_STEM[name]])
    with pytest.raises(CheckpointError, match="another variant"):  # only sts is the caller's choice
        load_pretrained(_build(name, num_classes=174, **_OTHER[name]), str(path))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["v3d_r2plus1d34_224", "v3d_slowfast50_4x16_224", "v3d_slowfast50_8x8_224",
                                  "v3d_slowonly50_224"])
def test_timm_file_of_every_arch_reproduces_the_network(tmp_path, arch):
    _round_trip(tmp_path, arch)


def test_cleaned_file_without_a_container_loads(tmp_path):
    _round_trip(tmp_path, "v3d_x3d_s_224", cleaned=True)


def test_arch_that_contradicts_the_weights_is_refused():
    with torch.device("meta"):
        sd = _v3d_state_dict(_build("ircsn_50"), "ircsn_50")
    with pytest.raises(CheckpointError, match="v3d_slowonly50_224 is slowonly_50, but its weights are ircsn_50") as err:
        recognize(Checkpoint("x.pth.tar", _timm_container("v3d_slowonly50_224", sd), sd))
    assert "\n" not in str(err.value)
    bad = dict(sd, **{"head.extra": torch.empty(1, device="meta")})
    with pytest.raises(CheckpointError, match="head.extra"):
        recognize(Checkpoint("x.pth.tar", {"state_dict": bad}, bad))

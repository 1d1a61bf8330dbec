"""S3D and X3D: sizes against their references (meta device), tiny variants for real, STS in X3D,
mmaction X3D files (the STS authors' layout) recognised and loaded."""
import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.video import s3d as torchvision_s3d

import models
from models import create_model
from models.checkpoints import Checkpoint, CheckpointError
from models.registry import IMAGENET_MEAN
from models.sts import STSConv3d
from models.x3d import X3DBlock, mmaction_sts, mmaction_x3d

from helpers import randomise_batchnorm


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _gmacs(model) -> float:
    clips = model.input_contract.example_input(1, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(clips)
    return counter.get_total_flops() / 2 / 1e9


def test_s3d_matches_torchvision_size():
    model = _meta("s3d")
    assert _params(model) == 8_320_048  # torchvision's S3D_Weights.KINETICS400_V1 num_params
    assert model.input_contract.input_shape(1) == (1, 3, 16, 224, 224)
    assert _gmacs(model) == pytest.approx(17.98, rel=0.03)  # torchvision's _ops at 16x224


def test_s3d_has_torchvision_layout():
    """Same parameter names and shapes as torchvision's S3D, so its Kinetics weights load unchanged."""
    ours = {k: v.shape for k, v in _meta("s3d").state_dict().items()}
    with torch.device("meta"):
        reference = {k: v.shape for k, v in torchvision_s3d().state_dict().items()}
    assert ours == reference


def test_s3d_features_equal_torchvision_with_its_weights():
    """Pools have no weights: comparing outputs checks that they sit where torchvision puts them."""
    torch.manual_seed(0)
    reference = torchvision_s3d().eval()
    model = create_model("s3d").eval()
    model.load_state_dict(reference.state_dict())
    clips = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.features(clips), reference.features(clips))


def test_s3d_tiny_runs():
    model = create_model("s3d_tiny", num_classes=5)
    contract = model.input_contract
    assert (contract.layout, contract.sampling) == ("NCTHW", "dense")
    out = model(contract.example_input(2))
    out.sum().backward()
    assert out.shape == (2, 5)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_x3d_s_matches_reference_size():
    model = _meta("x3d_s")
    # pytorchvideo x3d_s: 3.79M parameters; X3D paper: 1.96 GFLOPs for one 13x160x160 view
    assert _params(model) == pytest.approx(3.79e6, rel=0.005)
    assert _gmacs(model) == pytest.approx(1.96, rel=0.03)
    contract = model.input_contract
    assert (contract.num_frames, contract.crop_size, contract.frame_stride) == (13, 160, 6)


def test_x3d_s_architecture():
    """Depth factor 2.2 and width factor 2 on (1, 2, 5, 3) stages of base width 12 (X3D paper, Table 1)."""
    model = _meta("x3d_s")
    assert [len(stage) for stage in model.stages] == [3, 5, 11, 7]
    firsts = [stage[0] for stage in model.stages]
    assert [b.conv_c[0].out_channels for b in firsts] == [24, 48, 96, 192]
    assert [b.conv_b.groups for b in firsts] == [54, 108, 216, 432]  # channel-wise, bottleneck x2.25
    with_se = [not isinstance(b.se, torch.nn.Identity) for b in model.stages[0]]
    assert with_se == [True, False, True]
    assert model.head.lin_5.out_channels == 2048


def test_x3d_tiny_runs():
    model = create_model("x3d_tiny", num_classes=5)
    out = model(model.input_contract.example_input(2))
    out.sum().backward()
    assert out.shape == (2, 5)


def test_x3d_blocks_start_as_identity_on_the_residual_path():
    """PySlowFast zero-initialises each block's last BN, so a fresh block only adds its shortcut."""
    block = X3DBlock(8, 18, 8, 1, 0.0625).eval()
    x = torch.randn(1, 8, 2, 4, 4).relu()
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_x3d_s_with_sts_convolutions():
    plain, sts = _meta("x3d_s"), _meta("x3d_s", sts=True)
    blocks = [b for stage in sts.stages for b in stage]
    assert all(isinstance(b.conv_b, STSConv3d) for b in blocks)
    assert not any(isinstance(m, STSConv3d) for m in sts.stem.modules())
    assert _params(sts) == _params(plain)  # STS re-uses the 3D kernel's weights
    assert sts.input_contract.mean == IMAGENET_MEAN  # STS fine-tunes from ImageNet weights


def test_x3d_tiny_sts_changes_the_computation_not_the_weights():
    torch.manual_seed(0)
    plain = create_model("x3d_tiny", num_classes=5).eval()
    sts = create_model("x3d_tiny", num_classes=5, sts=True).eval()
    for module in plain.modules():  # let the residual branches contribute
        if isinstance(module, torch.nn.BatchNorm3d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    sts.load_state_dict(plain.state_dict())
    clips = plain.input_contract.example_input(2)
    with torch.no_grad():
        out_plain, out_sts = plain(clips), sts(clips)
    assert torch.isfinite(out_sts).all()
    assert not torch.allclose(out_plain, out_sts)


def test_x3d_sizes_share_one_builder():
    """XS, S and M are one network on other clips; L is deeper (X3D paper, Table 3 GFLOPs per view)."""
    shapes = {n: {k: v.shape for k, v in _meta(n).state_dict().items()} for n in ("x3d_xs", "x3d_s", "x3d_m")}
    assert shapes["x3d_xs"] == shapes["x3d_s"] == shapes["x3d_m"]
    large = _meta("x3d_l")
    assert [len(stage) for stage in large.stages] == [5, 10, 25, 15]
    assert _params(large) == pytest.approx(6.15e6, rel=0.005)  # pytorchvideo x3d_l
    for name, gmacs in (("x3d_xs", 0.60), ("x3d_m", 4.73), ("x3d_l", 18.37)):
        assert _gmacs(_meta(name)) == pytest.approx(gmacs, rel=0.01), name


# ----------------------------------------------------------------------------- mmaction X3D files

# Our names -> mmaction's, written out independently of the loader's table, so a wrong rename fails here.
_TO_MMACTION = (
    (r"stem\.0\.", "backbone.conv1_s.conv."), (r"stem\.1\.", "backbone.conv1_t.conv."),
    (r"stem\.2\.", "backbone.conv1_t.bn."), (r"head\.conv_5\.0\.", "backbone.conv5.conv."),
    (r"head\.conv_5\.1\.", "backbone.conv5.bn."), (r"head\.lin_5\.", "cls_head.fc1."), (r"head\.fc\.", "cls_head.fc2."),
    (r"stages\.(\d)\.(\d+)\.conv_a\.0\.", "layer{s}.{b}.conv1.conv."),
    (r"stages\.(\d)\.(\d+)\.conv_a\.1\.", "layer{s}.{b}.conv1.bn."),
    (r"stages\.(\d)\.(\d+)\.conv_b\.", "layer{s}.{b}.conv2.conv."),
    (r"stages\.(\d)\.(\d+)\.bn_b\.", "layer{s}.{b}.conv2.bn."),
    (r"stages\.(\d)\.(\d+)\.conv_c\.0\.", "layer{s}.{b}.conv3.conv."),
    (r"stages\.(\d)\.(\d+)\.conv_c\.1\.", "layer{s}.{b}.conv3.bn."),
    (r"stages\.(\d)\.(\d+)\.shortcut\.0\.", "layer{s}.{b}.downsample.conv."),
    (r"stages\.(\d)\.(\d+)\.shortcut\.1\.", "layer{s}.{b}.downsample.bn."),
    (r"stages\.(\d)\.(\d+)\.se\.", "layer{s}.{b}.se_module."),
)


def _mmaction_key(key: str) -> str:
    for pattern, theirs in _TO_MMACTION:
        m = re.match(pattern, key)
        if m:
            if m.groups():
                theirs = "backbone." + theirs.format(s=int(m.group(1)) + 1, b=m.group(2))
            return theirs + key[m.end():]
    raise AssertionError(f"no mmaction name for {key}")


def _mmaction_state_dict(model) -> dict:
    """`model`'s weights as mmaction's Recognizer3D saves them (X3DHead.fc1 is a Linear)."""
    sd = {_mmaction_key(k): v.clone() for k, v in model.state_dict().items()}
    sd["cls_head.fc1.weight"] = sd["cls_head.fc1.weight"].flatten(1)
    return sd


def _mmcv_file(path, state_dict: dict, meta: dict | None) -> str:
    container = {"meta": meta, "state_dict": state_dict, "optimizer": {}} if meta else {"state_dict": state_dict}
    torch.save(container, path)
    return str(path)


def _randomised_tiny(sts: bool):
    torch.manual_seed(0)
    return randomise_batchnorm(create_model("x3d_tiny", num_classes=5, sts=sts).eval())


@pytest.mark.parametrize("meta, sts", [
    ({"exp_name": "x3d_s_13x6_STS_k400_video", "epoch": 50}, True),
    ({"config": "model = dict(backbone=dict(type='X3D', gamma_b=2.25, reshape_st=True))"}, True),
    ({"config_name": "x3d_s_13x6x1_facebook_kinetics400_rgb.py"}, False),
])
def test_mmaction_x3d_file_reproduces_the_network(tmp_path, meta, sts):
    """An mmaction file of a (tiny) X3D loads, with STS read from its meta, and computes as the model saved."""
    source = _randomised_tiny(sts)
    path = _mmcv_file(tmp_path / "epoch_50.pth", _mmaction_state_dict(source), meta)
    loaded = models.from_checkpoint(path).eval()
    assert any(isinstance(m, STSConv3d) for m in loaded.modules()) == sts
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clips), source(clips))


def test_mmaction_x3d_file_without_meta_leaves_sts_to_the_caller(tmp_path):
    source = _randomised_tiny(sts=True)
    path = _mmcv_file(tmp_path / "x3d.pth", _mmaction_state_dict(source), None)
    assert not any(isinstance(m, STSConv3d) for m in models.from_checkpoint(path).modules())
    loaded = models.from_checkpoint(path, sts=True).eval()
    clips = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clips), source(clips))


@pytest.mark.parametrize("file_sts", [True, False])
def test_mmaction_x3d_file_refuses_the_other_sts_variant(tmp_path, file_sts):
    meta = {"exp_name": "x3d_s_13x6_STS_k400_video" if file_sts else "x3d_s_13x6x1_kinetics400_rgb"}
    path = _mmcv_file(tmp_path / "epoch_50.pth", _mmaction_state_dict(_randomised_tiny(file_sts)), meta)
    with pytest.raises(CheckpointError, match="another variant") as err:
        create_model("x3d_tiny", num_classes=5, sts=not file_sts, pretrained=path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="sts=") as err:
        models.from_checkpoint(path, sts=not file_sts)
    assert "\n" not in str(err.value)


def _mmaction_meta_file(name: str, meta: dict) -> Checkpoint:
    with torch.device("meta"):
        sd = _mmaction_state_dict(create_model(name))
    return Checkpoint("epoch_50.pth", {"meta": meta, "state_dict": sd}, sd)


@pytest.mark.parametrize("config_name, model", [
    ("x3d_xs_4x12_STS_k400_video.py", "x3d_xs"), ("x3d_s_13x6_STS_k400_video.py", "x3d_s"),
    ("x3d_m_16x5x1_facebook_kinetics400_rgb.py", "x3d_m"), ("my_run.py", "x3d_s"),
])
def test_mmaction_x3d_size_from_the_config_name(config_name, model):
    """XS, S and M files hold the same tensors; only the recorded config name tells the clip size."""
    found = mmaction_x3d(_mmaction_meta_file("x3d_s", {"config_name": config_name}), {})
    assert found.model == model
    assert found.model_args == {"num_classes": 400, "sts": "STS" in config_name}


def test_mmaction_x3d_l_from_its_depth():
    found = mmaction_x3d(_mmaction_meta_file("x3d_l", {"config_name": "x3d_l_16x5.py"}), {})
    assert (found.model, found.model_args) == ("x3d_l", {"num_classes": 400, "sts": False})


def test_mmaction_sts_reads_config_text_before_names():
    assert mmaction_sts({"config": "backbone=dict(type='X3D', reshape_st=False)", "exp_name": "x_STS"}) is False
    assert mmaction_sts({"config_name": "x3d_s_13x6_STS_k400_video.py"}) is True
    assert mmaction_sts({"config_name": "x3d_s_costs.py"}) is False
    assert mmaction_sts({"epoch": 3}) is None and mmaction_sts(None) is None


def test_mmaction_recognises_only_x3d_files():
    """mmaction ResNet families start with conv1/layer1; only X3D has the factorised conv1_s / conv1_t stem."""
    resnet = {"backbone.conv1.conv.weight": torch.zeros(64, 3, 3, 7, 7),
              "backbone.layer1.0.conv1.conv.weight": torch.zeros(64, 64, 1, 1, 1),
              "cls_head.fc_cls.weight": torch.zeros(400, 2048)}
    assert mmaction_x3d(Checkpoint("r.pth", {"state_dict": resnet}, resnet), {}) is None


def test_mmaction_x3d_refuses_files_it_cannot_place():
    ckpt = _mmaction_meta_file("x3d_s", {})
    other_head = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("cls_head.")}
    other_head["cls_head.fc_cls.weight"] = torch.zeros(400, 432, device="meta")
    with pytest.raises(CheckpointError, match="without an X3DHead.*cls_head.fc_cls") as err:
        mmaction_x3d(Checkpoint("i3dhead.pth", {}, other_head), {})
    assert "\n" not in str(err.value)
    se_all = dict(ckpt.state_dict, **{
        f"backbone.layer1.1.se_module.{k}": ckpt.state_dict[f"backbone.layer1.0.se_module.{k}"]
        for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")})
    with pytest.raises(CheckpointError, match="every other one"):
        mmaction_x3d(Checkpoint("se_all.pth", {}, se_all), {})


def test_mmaction_x3d_sts_file_refuses_the_2d_sts_mode(tmp_path):
    """The released STS files were trained with the authors' flattened 1-D filters, not true 2-D ones."""
    meta = {"exp_name": "x3d_s_13x6_STS_k400_video"}
    path = _mmcv_file(tmp_path / "epoch_50.pth", _mmaction_state_dict(_randomised_tiny(True)), meta)
    model = create_model("x3d_tiny", num_classes=5, sts="2d")
    assert {m.mode for m in model.modules() if isinstance(m, STSConv3d)} == {"2d"}
    with pytest.raises(CheckpointError, match="sts_mode=2d vs .*sts_mode=authors"):
        create_model("x3d_tiny", num_classes=5, sts="2d", pretrained=path)

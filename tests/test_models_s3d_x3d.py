"""S3D and X3D: sizes against their references (meta device), tiny variants for real, STS in X3D."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.video import s3d as torchvision_s3d

from models import create_model
from models.x3d import X3DBlock


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


def _sts_available() -> bool:
    import models.sts

    return hasattr(models.sts, "convert_to_sts") and hasattr(models.sts, "STSConv3d")


@pytest.mark.skipif(not _sts_available(), reason="models/sts.py does not provide convert_to_sts/STSConv3d yet")
def test_x3d_s_with_sts_convolutions():
    from models.sts import STSConv3d

    plain, sts = _meta("x3d_s"), _meta("x3d_s", sts=True)
    blocks = [b for stage in sts.stages for b in stage]
    assert all(isinstance(b.conv_b, STSConv3d) for b in blocks)
    assert not any(isinstance(m, STSConv3d) for m in sts.stem.modules())
    assert _params(sts) == _params(plain)  # STS re-uses the 3D kernel's weights


@pytest.mark.skipif(not _sts_available(), reason="models/sts.py does not provide convert_to_sts/STSConv3d yet")
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

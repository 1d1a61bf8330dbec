"""3D ResNets, SlowFast, STS convolution and 2D->3D inflation (models/resnet3d.py, slowfast.py,
sts.py, inflate.py). Full-size models only on the meta device; real compute on tiny variants."""
import re

import pytest
import torch
import timm
import torchvision
from timm.models.resnet import Bottleneck as Bottleneck2d
from timm.models.resnet import ResNet as ResNet2d
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.video.resnet import Bottleneck, Conv3DSimple

from models import CheckpointError, create_model, list_models
from models.registry import IMAGENET_MEAN
from models.checkpoints import Checkpoint
from models.factory import check_same_architecture
from models.inflate import inflate_kernel
from models.resnet3d import FactorizedConv3d, ResNet3d, Stem3d
from models.sts_files import mmaction_resnet3d
from models.sts import STSConv3d, convert_to_sts

TINY = ["i3d_tiny", "r3d_tiny", "r2plus1d_tiny", "ircsn_tiny", "slowonly_tiny", "slowfast_tiny"]


def params(model):
    return sum(p.numel() for p in model.parameters())


def gmacs(model, shape):
    """Multiply-accumulates per view, in G (FlopCounterMode counts 2 flops per MAC)."""
    with torch.device("meta"):
        x = torch.empty(shape)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def meta_model(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


# ---------------------------------------------------------------- sizes (meta device)

@pytest.mark.parametrize("name, kwargs, target, tol", [
    ("i3d_resnet50", dict(num_classes=200), 46.57e6, 0.005),  # IBM I3D-ResNet-50
    ("r2plus1d_34", dict(), 63.8e6, 0.005),  # VMZ / CSN R(2+1)D-34
    ("slowonly_50", dict(), 32.45e6, 0.001),  # PySlowFast model zoo
    ("slowfast_50_4x16", dict(), 34.48e6, 0.001),
    ("slowfast_50_8x8", dict(), 34.57e6, 0.001),
])
def test_param_counts_match_published(name, kwargs, target, tol):
    assert abs(params(meta_model(name, **kwargs)) - target) / target < tol


@pytest.mark.parametrize("name, tv_builder, num_params, macs", [
    ("r3d_18", torchvision.models.video.r3d_18, 33_371_472, 40.7),
    ("r2plus1d_18", torchvision.models.video.r2plus1d_18, 31_505_325, 40.5),
])
def test_torchvision_derived_match_exactly(name, tv_builder, num_params, macs):
    ours = meta_model(name)
    with torch.device("meta"):
        reference = tv_builder()
    assert params(ours) == params(reference) == num_params
    assert ours.input_contract.input_shape() == (1, 3, 16, 112, 112)
    ours_macs = gmacs(ours, (1, 3, 16, 112, 112))
    assert ours_macs == pytest.approx(gmacs(reference, (1, 3, 16, 112, 112)), rel=1e-9)
    assert round(ours_macs, 1) == macs


@pytest.mark.parametrize("name, shape, macs", [  # PySlowFast's numbers are at 256x256
    ("slowonly_50", (1, 3, 8, 256, 256), 54.52),
    ("slowfast_50_4x16", (1, 3, 32, 256, 256), 36.10),
    ("slowfast_50_8x8", (1, 3, 32, 256, 256), 65.71),
])
def test_pyslowfast_gflops(name, shape, macs):
    assert gmacs(meta_model(name), shape) == pytest.approx(macs, abs=0.01)


def test_torchvision_weights_load_and_reproduce_outputs():
    """Same keys and same computation as torchvision's R3D-18 / R(2+1)D-18."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 32, 32)
    for name, tv_builder in (("r3d_18", torchvision.models.video.r3d_18),
                             ("r2plus1d_18", torchvision.models.video.r2plus1d_18)):
        reference = tv_builder().eval()
        ours = meta_model(name).to_empty(device="cpu").eval()  # skip a second random init
        ours.load_pretrained(reference.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x))


def test_registry_names_and_alias():
    names = set(list_models())
    expected = {"i3d_resnet50", "r3d_18", "r3d_34", "r3d_50", "r2plus1d_18", "r2plus1d_34", "r2plus1d_50",
                "ircsn_50", "slowonly_50", "slowfast_50_4x16", "slowfast_50_8x8", *TINY}
    assert expected <= names
    model = meta_model("i3d_resnet", num_classes=200)
    assert model.model_name == "i3d_resnet50"
    contract = model.input_contract
    assert (contract.layout, contract.num_frames, contract.crop_size, contract.sampling) == ("NCTHW", 8, 224, "tsn")


def test_i3d_structure_follows_ibm():
    """3x7x7 stem + 1x3x3 max-pool, every bottleneck 3x3 inflated to 3x3x3, temporal stride 2 from res3."""
    model = meta_model("i3d_resnet50")
    assert model.stem[0].kernel_size == (3, 7, 7) and isinstance(model.stem[3], nn.MaxPool3d)
    convs2 = [block.conv2[0] for stage in model.res_stages() for block in stage]
    assert len(convs2) == 16 and all(c.kernel_size == (3, 3, 3) for c in convs2)
    assert [stage[0].conv2[0].stride for stage in model.res_stages()] == [(1, 1, 1)] + [(2, 2, 2)] * 3


def test_i3d_without_temporal_stride_keeps_every_frame():
    """IBM's --without_t_stride (all of their released I3D files): stride 2 in space only, blocks and shortcuts."""
    model = meta_model("i3d_resnet50", temporal_stride=False)
    stages = model.res_stages()
    assert [s[0].conv2[0].stride for s in stages] == [(1, 1, 1)] + [(1, 2, 2)] * 3
    assert [s[0].downsample[0].stride for s in stages] == [(1, 1, 1)] + [(1, 2, 2)] * 3
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in meta_model("i3d_resnet50").parameters())


def test_temporal_strides_need_full_3d_convs():
    with pytest.raises(ValueError, match="temporal_strides needs full 3D convolutions"):
        with torch.device("meta"):
            ResNet3d(Bottleneck, torchvision.models.video.resnet.Conv2Plus1D, (1, 1, 1, 1), Stem3d(8),
                     temporal_strides=(1, 1, 1, 1))


# ---------------------------------------------------------------- tiny models: real compute

@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    contract = model.input_contract
    assert contract.layout == "NCTHW" and 4 <= contract.num_frames <= 8 and 32 <= contract.crop_size <= 64
    assert params(model) < 1e6
    x = contract.example_input(2)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(k.startswith(model.head_names) for k in model.state_dict())


@pytest.mark.parametrize("name", ["i3d_tiny", "slowfast_tiny"])
def test_tiny_autocast_and_channels_last(name, compute_dtypes):
    model = create_model(name, num_classes=10).eval()
    x = model.input_contract.example_input(2)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model(x)).all()
            assert compute_dtypes(model, x) == {torch.bfloat16}
        model = model.to(memory_format=torch.channels_last_3d)
        out = model(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_compiles_fullgraph_with_sts():
    """SlowFast with STS covers slicing, lateral fusion and temporal STS; a lone depthwise STS conv
    covers the spatiotemporal path (a whole ir-CSN would only add tracing time)."""
    model = create_model("slowfast_tiny", num_classes=10, sts=True).eval()
    depthwise = STSConv3d(8, 8, 3, (2, 2, 2), 1, groups=8)
    for module, x in ((model, model.input_contract.example_input(1)), (depthwise, torch.randn(1, 8, 4, 8, 8))):
        compiled = torch.compile(module, backend="eager", fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), module(x))


# ---------------------------------------------------------------- SlowFast

def test_slowfast_takes_one_tensor_and_subsamples_slow():
    model = create_model("slowfast_tiny", num_classes=7).eval()
    x = model.input_contract.example_input(2)
    assert x.shape[2] == 8 and model.alpha == 2
    seen = {}
    model.slow_stem.register_forward_hook(lambda m, args, out: seen.update(slow=args[0]))
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    torch.testing.assert_close(seen["slow"], x[:, :, ::2])
    assert meta_model("slowfast_50_4x16").alpha == 8 and meta_model("slowfast_50_8x8").alpha == 4
    assert meta_model("slowfast_50_8x8").fusions[0].conv.kernel_size == (7, 1, 1)
    with pytest.raises(ValueError, match="divisible by alpha"):
        create_model("slowfast_tiny", num_frames=7)


def test_slowfast_rejects_2d_weights():
    model = create_model("slowfast_tiny", num_classes=10)
    with pytest.raises(ValueError, match="Fast pathway"):
        model.load_pretrained({"conv1.weight": torch.zeros(8, 3, 7, 7)})
    fresh = create_model("slowfast_tiny", num_classes=10)
    fresh.load_pretrained(model.state_dict())  # its own 3D weights load
    assert torch.equal(fresh.fc.weight, model.fc.weight)


# ---------------------------------------------------------------- STS

def _sts_convs(model):
    return [n for n, m in model.named_modules() if isinstance(m, STSConv3d)]


@pytest.mark.parametrize("name, expected", [
    ("ircsn_tiny", lambda n: n.endswith("conv2.0")),  # depthwise 3x3x3 of every block
    ("r2plus1d_tiny", lambda n: n.endswith(".0.3") or n == "stem.3"),  # every (2+1)D pair's temporal conv
    ("slowonly_tiny", lambda n: n.startswith(("layer3", "layer4")) and n.endswith("conv1.0")),
    ("slowfast_tiny", lambda n: (n.startswith(("slow_layers.2", "slow_layers.3", "fast_layers")))
     and n.endswith("conv1.0")),
])
def test_sts_replaces_the_intended_convs(name, expected):
    torch.manual_seed(0)
    plain = create_model(name, num_classes=10).eval()
    sts = create_model(name, num_classes=10, sts=True).eval()
    converted = _sts_convs(sts)
    temporal = [n for n, m in plain.named_modules() if isinstance(m, nn.Conv3d) and m.kernel_size[0] > 1
                and expected(n)]
    assert converted and sorted(converted) == sorted(temporal)
    assert not any(("stem" in n and name != "r2plus1d_tiny") or "fusions" in n for n in converted)
    assert params(sts) == params(plain) and sts.state_dict().keys() == plain.state_dict().keys()
    sts.load_state_dict(plain.state_dict())
    x = plain.input_contract.example_input(1)
    with torch.no_grad():
        assert not torch.allclose(sts(x), plain(x))


@pytest.mark.parametrize("mode", ["authors", "2d"])
@pytest.mark.parametrize("kernel, groups, stride, bias", [
    ((3, 3, 3), 8, (1, 1, 1), False), ((3, 3, 3), 8, (2, 2, 2), True), ((3, 3, 3), 1, (1, 2, 2), False),
    ((3, 1, 1), 1, (2, 1, 1), True),
])
def test_sts_appearance_half_has_no_temporal_receptive_field(kernel, groups, stride, bias, mode):
    torch.manual_seed(0)
    padding = tuple(k // 2 for k in kernel)
    conv = STSConv3d(8, 8, kernel, stride, padding, groups=groups, bias=bias, mode=mode)
    plain = nn.Conv3d(8, 8, kernel, stride, padding, groups=groups, bias=bias)
    plain.weight, plain.bias = conv.weight, conv.bias
    x = torch.randn(1, 8, 8, 12, 12)
    bumped = x.clone()
    bumped[:, :, 4] += torch.randn_like(x[:, :, 4])  # frame 4 is an output centre for strides 1 and 2
    with torch.no_grad():
        out, out_bumped = conv(x), conv(bumped)
        assert out.shape == plain(x).shape
        changed = (out_bumped - out).abs().amax(dim=(0, 3, 4)) > 1e-6  # (channel, frame)
        torch.testing.assert_close(out[:, 4:], plain(x)[:, 4:])  # motion half: the plain 3D conv
    centre = 4 // stride[0]
    others = [t for t in range(out.shape[2]) if t != centre]
    assert changed[:4, centre].all() and not changed[:4, others].any()


@pytest.mark.parametrize("mode", ["authors", "2d"])
def test_sts_spatiotemporal_impulse_uses_row_and_column_slices(mode):
    """Depthwise 3x3x3: appearance = centre 3x3 + first slice as a 1x9 row + last slice as a 9x1 column
    (an impulse away from the borders: both modes agree)."""
    torch.manual_seed(0)
    conv = STSConv3d(2, 2, 3, padding=1, groups=2, bias=False, mode=mode)
    x = torch.zeros(1, 2, 3, 11, 11)
    x[0, 0, 1, 5, 5] = 1.0
    with torch.no_grad():
        response = conv(x)[0, 0, 1]  # appearance channel 0, centre frame
    w = conv.weight[0, 0].detach()
    expected = torch.zeros(11, 11)
    expected[4:7, 4:7] += w[1].flip(0, 1)
    expected[5, 1:10] += w[0].flatten().flip(0)
    expected[1:10, 5] += w[2].flatten().flip(0)
    torch.testing.assert_close(response, expected)


@pytest.mark.parametrize("args", [
    dict(kernel_size=(1, 3, 3), padding=(0, 1, 1)),  # no temporal kernel
    dict(kernel_size=(3, 1, 1), padding=(1, 0, 0), groups=2),  # grouped temporal kernel
    dict(kernel_size=(3, 1, 1), padding=(1, 0, 0), stride=(1, 2, 2)),  # the authors' have no spatial stride
    dict(kernel_size=3, padding=1, out_channels=6, groups=2, mode="wrapped"),  # unknown mode
    dict(kernel_size=3, padding=0),  # not 'same' padding
])
def test_sts_rejects_unsupported_convs(args):
    args = dict(in_channels=8, out_channels=8) | args
    with pytest.raises(ValueError, match="STS"):
        STSConv3d(**args)


def test_convert_to_sts_shares_weights():
    block = nn.Sequential(nn.Conv3d(4, 8, (3, 1, 1), padding=(1, 0, 0)), nn.Conv3d(8, 8, 1))
    weight = block[0].weight
    assert convert_to_sts(block) == 1
    assert isinstance(block[0], STSConv3d) and block[0].weight is weight and type(block[1]) is nn.Conv3d


def test_convert_to_sts_kinds_and_mode():
    """The authors' reshape_st / reshape_t flags pick spatiotemporal or temporal kernels; the mode is kept."""
    def block():
        return nn.Sequential(nn.Conv3d(4, 8, (3, 1, 1), padding=(1, 0, 0)), nn.Conv3d(8, 8, 3, padding=1, groups=8))

    only_t, only_st = block(), block()
    assert convert_to_sts(only_t, reshape_st=False, mode="2d") == 1 and convert_to_sts(only_st, reshape_t=False) == 1
    assert isinstance(only_t[0], STSConv3d) and type(only_t[1]) is nn.Conv3d and only_t[0].mode == "2d"
    assert type(only_st[0]) is nn.Conv3d and isinstance(only_st[1], STSConv3d) and only_st[1].mode == "authors"
    assert "sts_mode=authors" in only_st[1].extra_repr()


def _flattened_filter(x, taps, stride, columns):
    """The authors' 1-D STS filter read independently: output j of a frame sums taps[:, :, i] times the
    frame's (row-major, or column-major for `columns`) flattened sample j*s*s + i - L//2, zero outside
    the frame; output j is cell j of the strided grid in the same order."""
    n, _, t, h, w = x.shape
    length, s = taps.shape[-1], stride
    frames = (x.transpose(3, 4) if columns else x).reshape(n, -1, t, h * w)
    out = torch.zeros(n, taps.shape[0], t, (h // s) * (w // s))
    for j in range(out.shape[-1]):
        for i in range(length):
            q = j * s * s + i - length // 2
            if 0 <= q < h * w:
                out[..., j] += torch.einsum("oc,nct->not", taps[:, :, i], frames[..., q])
    return out.view(n, -1, t, w // s, h // s).transpose(3, 4) if columns else out.view(n, -1, t, h // s, w // s)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("columns", [False, True])
def test_sts_authors_mode_runs_slices_on_flattened_frames(stride, columns):
    """Depthwise 3x3x3, the authors' way: the first (rows) or last (columns) slice is a 9-tap filter over
    each frame flattened row- or column-major, wrapping across row ends, spatial stride s as s*s."""
    torch.manual_seed(0)
    conv = STSConv3d(4, 4, 3, (1, stride, stride), 1, groups=4, bias=False, mode="authors")
    with torch.no_grad():  # keep one 1-D slice of the appearance half
        conv.weight[:2, :, [1, 0 if columns else 2]] = 0
    x = torch.randn(1, 4, 3, 6, 8)
    taps = torch.diag_embed(conv.weight[:2, 0, 2 if columns else 0].detach().flatten(1).T).permute(1, 2, 0)
    with torch.no_grad():
        got = conv(x)[:, :2]
        other = STSConv3d.from_conv(conv, mode="2d")(x)[:, :2]
    torch.testing.assert_close(got, _flattened_filter(x[:, :2], taps, stride, columns))
    assert not torch.allclose(got, other)  # the 2-D filters do not wrap


def test_sts_authors_temporal_kernel_splits_rows_then_columns():
    """t x 1 x 1 kernels: the appearance half's first ceil(n/2) channels run the taps along the
    flattened rows, the rest along the columns (torch.chunk's split); the motion half is the plain conv."""
    torch.manual_seed(0)
    conv = STSConv3d(5, 6, (3, 1, 1), padding=(1, 0, 0), bias=False)
    plain = nn.Conv3d(5, 6, (3, 1, 1), padding=(1, 0, 0), bias=False)
    plain.weight = conv.weight
    x = torch.randn(1, 5, 4, 4, 6)
    taps = conv.weight[:3].detach().flatten(2)
    with torch.no_grad():
        out = conv(x)
        torch.testing.assert_close(out[:, :2], _flattened_filter(x, taps[:2], 1, False))
        torch.testing.assert_close(out[:, 2:3], _flattened_filter(x, taps[2:], 1, True))
        torch.testing.assert_close(out[:, 3:], plain(x)[:, 3:])


def test_sts_authors_mode_needs_even_sides_under_spatial_stride():
    conv = STSConv3d(4, 4, 3, (1, 2, 2), 1, groups=4, mode="authors")
    x = torch.randn(1, 4, 2, 7, 8)
    with pytest.raises(ValueError, match="divisible by 2.*sts='2d'"):
        conv(x)
    assert STSConv3d.from_conv(conv, mode="2d")(x).shape[-2:] == (4, 4)


def test_sts_argument_of_the_builders():
    assert meta_model("ircsn_tiny", sts=True).layer1[0].conv2[0].mode == "authors"
    # STS networks fine-tune from ImageNet weights: torchvision's Kinetics statistics give way to ImageNet's
    assert meta_model("r2plus1d_tiny", sts=True).input_contract.mean == IMAGENET_MEAN != meta_model(
        "r2plus1d_tiny").input_contract.mean
    assert meta_model("slowfast_tiny", sts="2d").fast_layers[0][0].conv1[0].mode == "2d"
    with pytest.raises(ValueError, match="sts must be"):
        meta_model("slowonly_tiny", sts="flat")


# ---------------------------------------------------------------- mmaction structures (the STS paper's files)

MMACTION_R2PLUS1D = dict(bn_eps=1e-3, temporal_strides=1, stem_pool=True, factorize_all=True)


def test_r2plus1d_factorize_all_is_mmactions_resnet2plus1d():
    """83-channel factorised stem + max-pool, factorised 1x1x1 shortcuts, block norms at eps 1e-3 but the
    norms inside each (2+1)D pair at torch's default, no temporal stride: the authors' 63.76M parameters."""
    model = meta_model("r2plus1d_34", **MMACTION_R2PLUS1D)
    assert model.stem[0].out_channels == 83 and isinstance(model.stem[6], nn.MaxPool3d)
    assert (model.stem[1].eps, model.stem[4].eps) == (1e-5, 1e-3)
    block = model.layer2[0]
    assert isinstance(block.downsample[0], FactorizedConv3d) and block.downsample[0][0].out_channels == 54
    assert (block.conv1[0][1].eps, block.conv1[1].eps, block.downsample[0][1].eps) == (1e-5, 1e-3, 1e-5)
    assert all(m.stride[0] == 1 for m in model.modules() if isinstance(m, nn.Conv3d))
    assert params(model) == 63_759_281
    plain = meta_model("r2plus1d_34")
    assert plain.stem[0].out_channels == 45 and plain.layer2[0].conv1[0][3].stride == (2, 1, 1)
    with pytest.raises(ValueError, match="factorize_all"):
        meta_model("r3d_18", factorize_all=True)


@pytest.mark.parametrize("name, kwargs", [("r2plus1d_tiny", dict(MMACTION_R2PLUS1D, sts=True)),
                                          ("ircsn_tiny", dict(bn_eps=1e-3, temporal_strides=1, sts=True))])
def test_no_temporal_stride_keeps_every_frame(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs).eval()
    x = model.input_contract.example_input(1)
    with torch.no_grad():
        assert model.forward_features(x).shape[2] == x.shape[2]
        assert create_model(name, num_classes=10).forward_features(x).shape[2] < x.shape[2]


def test_slowfast_mmaction_laterals_and_head_order():
    """mmaction's laterals are bare convs, and its head sees [Fast, Slow] pooled features."""
    torch.manual_seed(0)
    ours = create_model("slowfast_tiny", num_classes=10, lateral_norm=False).eval()
    theirs = create_model("slowfast_tiny", num_classes=10, lateral_norm=False, feature_order="fast_slow").eval()
    assert not hasattr(ours.fusions[0], "bn") and "feature_order=fast_slow" in theirs.extra_repr()
    theirs.load_state_dict(ours.state_dict())
    x = ours.input_contract.example_input(1)
    with torch.no_grad():
        slow_fast, fast_slow = ours.forward_features(x), theirs.forward_features(x)
    slow = ours.slow_layers[-1][-1].conv3[0].out_channels
    torch.testing.assert_close(fast_slow, torch.cat([slow_fast[:, slow:], slow_fast[:, :slow]], 1))
    with pytest.raises(ValueError, match="feature_order"):
        create_model("slowfast_tiny", feature_order="slow_first")


_TO_MMACTION = (  # our ResNet3d keys -> mmaction's Recognizer3D names (first match wins)
    (r"^fc\.", "cls_head.fc_cls."),
    (r"^stem\.0\.", "conv1.conv{s}."), (r"^stem\.1\.", "conv1.{bn}."), (r"^stem\.3\.", "conv1.conv.conv_t."),
    (r"^stem\.4\.", "conv1.bn."),
    (r"\.(conv\d|downsample)\.0\.0\.", r".\1.conv.conv_s."), (r"\.(conv\d|downsample)\.0\.1\.", r".\1.conv.bn_s."),
    (r"\.(conv\d|downsample)\.0\.3\.", r".\1.conv.conv_t."),
    (r"\.conv2\.0\.(?=weight)", ".conv2.{csn}conv."), (r"\.conv2\.1\.", ".conv2.{csn_bn}."),
    (r"\.(conv\d|downsample)\.0\.", r".\1.conv."), (r"\.(conv\d|downsample)\.1\.", r".\1.bn."),
)


def _mmaction_file(model, meta=None):
    """A Checkpoint as the authors' mmaction code would save `model` (meta tensors: shapes only)."""
    factorized, csn = model.stem.factorized, getattr(model.layer1[0].conv2[0], "groups", 1) > 1
    fill = dict(s=".conv_s" if factorized else "", bn="conv.bn_s" if factorized else "bn",
                csn="0." if csn else "", csn_bn="0.bn" if csn else "bn")
    sd = {}
    for key, value in model.state_dict().items():
        pattern, replacement = next((p, r) for p, r in _TO_MMACTION if re.search(p, key))
        name = re.sub(pattern, replacement.format(**fill), key, count=1)
        sd[name if name.startswith("cls_head.") else "backbone." + name] = value
    container = {"meta": meta if meta is not None else {"exp_name": "x_STS_k400_video"}, "state_dict": sd}
    return Checkpoint("epoch_50.pth", container, sd)


@pytest.mark.parametrize("name, kwargs", [
    ("ircsn_152", dict(sts=True, bn_eps=1e-3, temporal_strides=1)),
    ("slowonly_50", dict(sts=True)),
    ("r2plus1d_18", dict(sts=True, **MMACTION_R2PLUS1D)),
])
def test_mmaction_files_are_recognised_and_refuse_other_variants(name, kwargs):
    model = meta_model(name, num_classes=174, **kwargs)
    rec = mmaction_resnet3d(_mmaction_file(model), {})
    assert (rec.model, rec.model_args) == (name, dict(num_classes=174, **kwargs))
    own = model.state_dict()
    assert {k: v.shape for k, v in rec.state_dict.items()} == {k: v.shape for k, v in own.items()}
    check_same_architecture(model, rec, "epoch_50.pth")
    for other in (meta_model(name, num_classes=174), meta_model(name, num_classes=174, **dict(kwargs, sts="2d"))):
        with pytest.raises(CheckpointError, match="another variant") as err:
            check_same_architecture(other, rec, "epoch_50.pth")
        assert "\n" not in str(err.value)


def test_mmaction_sts_comes_from_the_meta_or_the_caller():
    model = meta_model("r2plus1d_18", **MMACTION_R2PLUS1D)
    config = "model = dict(backbone=dict(conv_cfg=dict(type='Conv2plus1d_reshape'), temporal_strides=(1, 1, 1, 1)))"
    assert mmaction_resnet3d(_mmaction_file(model, {"config": config}), {}).model_args["sts"] is True
    plain = mmaction_resnet3d(_mmaction_file(model, {"exp_name": "r2plus1d_r34_8x8_k400"}), {}).model_args
    assert plain["sts"] is False and "temporal_strides" not in plain  # mmaction2's configs stride time
    csn = _mmaction_file(meta_model("ircsn_50"), {"exp_name": "ircsn_ig65m_pretrained_r152_32x2x1_58e_k400.py"})
    assert mmaction_resnet3d(csn, {}).model_args == dict(num_classes=400, sts=False, bn_eps=1e-3)
    with pytest.raises(CheckpointError, match="pass sts=True or sts=False"):
        mmaction_resnet3d(_mmaction_file(model, {}), {})
    assert mmaction_resnet3d(_mmaction_file(model, {}), {"sts": True}).model_args["sts"] is True


def test_mmaction_recogniser_leaves_other_files_alone():
    with torch.device("meta"):
        head = {"cls_head.fc_cls.weight": torch.empty(400, 768)}
        aim = {"backbone.conv1.weight": torch.empty(768, 3, 16, 16), **head}  # CLIP names
        x3d = {"backbone.conv1_s.conv.weight": torch.empty(24, 3, 1, 3, 3), **head}
        tsn = {"backbone.conv1.conv.weight": torch.empty(64, 3, 7, 7), **head}  # mmaction's 2D ResNet
    for sd in (aim, x3d, tsn):
        assert mmaction_resnet3d(Checkpoint("f.pth", {"state_dict": sd}, sd), {}) is None
    slowonly = _mmaction_file(meta_model("slowonly_50"))
    with torch.device("meta"):  # an I3D-style stem: an mmaction ResNet3d the toolkit does not build
        slowonly.state_dict["backbone.conv1.conv.weight"] = torch.empty(64, 3, 5, 7, 7)
    with pytest.raises(CheckpointError, match="other than ir-CSN"):
        mmaction_resnet3d(slowonly, {})


def test_mmaction_slowfast_alpha_from_name_or_fusion_kernel():
    with torch.device("meta"):
        sd = {"backbone.slow_path.conv1.conv.weight": torch.empty(64, 3, 1, 7, 7),
              "backbone.fast_path.conv1.conv.weight": torch.empty(8, 3, 5, 7, 7),
              "backbone.slow_path.conv1_lateral.conv.weight": torch.empty(16, 8, 7, 1, 1),
              "cls_head.fc_cls.weight": torch.empty(400, 2304)}
        for i, blocks in enumerate((3, 4, 6, 3), 1):
            sd.update({f"backbone.slow_path.layer{i}.{j}.conv1.conv.weight": torch.empty(1) for j in range(blocks)})
    rec = mmaction_resnet3d(Checkpoint("f.pth", {"meta": {"exp_name": "slowfast50_STS"}, "state_dict": sd}, sd), {})
    assert rec.model == "slowfast_50_8x8" and rec.model_args["feature_order"] == "fast_slow"
    assert rec.state_dict["fusions.0.conv.weight"].shape == (16, 8, 7, 1, 1)
    with pytest.raises(CheckpointError, match="not SlowFast-50 4x16 or 8x8"):
        mmaction_resnet3d(Checkpoint("f.pth", {"meta": {"exp_name": "slowfast50_4x16_STS"}}, sd), {})


# ---------------------------------------------------------------- 2D -> 3D inflation

def _tiny_resnet_pair(mode):
    """A tiny timm ResNet-50-like 2D net (random BN statistics) and the matching 3D I3D."""
    torch.manual_seed(0)
    net2d = ResNet2d(Bottleneck2d, [1, 1, 1, 1], channels=(8, 16, 32, 64), num_classes=10).eval()
    for m in net2d.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
    # timm's default stem is 64 wide whatever the stage widths
    net3d = ResNet3d(Bottleneck, Conv3DSimple, (1, 1, 1, 1), Stem3d(64, 3, pool=True), (8, 16, 32, 64),
                     num_classes=10, inflate_mode=mode).eval()
    net3d.load_pretrained(net2d.state_dict())
    return net2d, net3d


def test_center_inflation_reproduces_2d_logits_on_a_still_clip():
    net2d, net3d = _tiny_resnet_pair("center")
    image = torch.randn(2, 3, 64, 64)
    clip = image.unsqueeze(2).expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        expected, got = net2d(image), net3d(clip)
    # float32 (eps 1.2e-7): 3D and 2D kernels sum the same products in another order; a few hundred
    # terms per output keep the difference around 1e-6 of the activations' scale
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_mean_inflation_reproduces_2d_features_away_from_clip_ends():
    """Mean inflation is exact where the temporal kernel is not cut by zero padding: after the stem
    and res2 (two 3-tap convs) frames 2..T-3 of a still clip equal the 2D features."""
    net2d, net3d = _tiny_resnet_pair("mean")
    image = torch.randn(2, 3, 64, 64)
    clip = image.unsqueeze(2).expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        expected = net2d.layer1(net2d.maxpool(net2d.act1(net2d.bn1(net2d.conv1(image)))))
        got = net3d.layer1(net3d.stem(clip))
    scale = expected.abs().max().item()
    for t in range(2, 6):  # w/3 summed thrice differs from w by a few float32 ulps
        torch.testing.assert_close(got[:, :, t], expected, rtol=1e-5, atol=1e-5 * scale)
    assert (got[:, :, 0] - expected).abs().max() > 1e-2 * scale  # the ends really differ


@pytest.mark.parametrize("source, name", [("resnet50", "i3d_resnet50"), ("resnet50", "slowonly_50"),
                                          ("resnet18", "r3d_18")])
def test_full_size_2d_resnets_inflate(source, name):
    """Key names and shapes of real timm / torchvision ResNets map onto the 3D models (meta device)."""
    with torch.device("meta"):
        for net2d in (timm.create_model(source), getattr(torchvision.models, source)()):
            model = create_model(name, num_classes=174)
            model.load_pretrained(net2d.state_dict())  # raises on any missing or mis-shaped key
    assert model.layer1[0].conv2[0].weight.shape[2] == (3 if name != "slowonly_50" else 1)


def test_inflate_kernel_modes():
    w = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(inflate_kernel(w, 3, "mean").sum(2), w)
    centre = inflate_kernel(w, 3, "center")
    assert torch.equal(centre[:, :, 1], w) and not centre[:, :, [0, 2]].any()
    with pytest.raises(ValueError, match="inflate mode"):
        inflate_kernel(w, 3, "middle")


def test_inflation_shape_mismatch_names_the_key():
    net2d = ResNet2d(Bottleneck2d, [1, 1, 1, 1], channels=(16, 32, 64, 128), num_classes=10)
    net3d = ResNet3d(Bottleneck, Conv3DSimple, (1, 1, 1, 1), Stem3d(64, 3, pool=True), (8, 16, 32, 64),
                     num_classes=10)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.0\.weight"):
        net3d.load_pretrained(net2d.state_dict())


@pytest.mark.parametrize("name, key", [("r2plus1d_tiny", "stem.0.weight"), ("ircsn_tiny", "layer1.0.conv2.0.weight")])
def test_no_exact_inflation_for_factorised_or_channel_separated(name, key):
    model = create_model(name, num_classes=10)
    # a 2D ResNet state dict shaped like the model wherever a 2D counterpart exists
    sd2d = {"conv1.weight": torch.zeros(8, 3, 7, 7),
            "layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1), "layer1.0.conv2.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        model.load_pretrained(sd2d)


def test_3d_state_dict_loads_directly_and_mismatch_raises(tmp_path):
    source = create_model("r2plus1d_tiny", num_classes=10).eval()
    path = tmp_path / "r2plus1d_tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = create_model("r2plus1d_tiny", num_classes=10, pretrained=str(path)).eval()
    x = source.input_contract.example_input(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    bad = dict(source.state_dict())
    bad["layer2.0.conv1.0.0.weight"] = bad["layer2.0.conv1.0.0.weight"][:, :, :, :2]
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.0\.0\.weight"):
        create_model("r2plus1d_tiny", num_classes=10).load_pretrained(bad)

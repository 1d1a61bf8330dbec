"""TSN / TSM / TAM and SIFAR: published sizes, temporal behaviour, loading 2D image weights, and IBM's
action-recognition files (TSN/TAM-ResNet and I3D-ResNet) recognised from their `arch` string."""
import re

import pytest
import torch
from timm.models.resnet import Bottleneck, ResNet
from timm.models.swin_transformer import SwinTransformer

import models
from models import CheckpointError, create_model
from models.checkpoints import Checkpoint, recognize
from models.profile import describe
from models.temporal2d import TemporalAggregation, TemporalPool, TemporalShift


@pytest.mark.parametrize("name, classes, params_m, gflops", [
    ("tsn_resnet50", 200, 23.92, 32.7),  # IBM action-recognition-pytorch benchmark tables
    ("tsm_resnet50", 200, 23.92, 32.7),  # the shift has no parameters and no MACs
    ("tam_resnet50", 200, 23.96, 32.8),
    ("sifar_base_patch4_window14_224_3x3", 400, 87.0, 147.0),  # SIFAR-B-14, sifar-pytorch README
])
def test_published_sizes(name, classes, params_m, gflops):
    info = describe(name, num_classes=classes)
    params_tol = 0.02 if name.startswith("sifar") else 0.005
    assert info["params"] / 1e6 == pytest.approx(params_m, rel=params_tol)
    assert info["gflops"] == pytest.approx(gflops, rel=0.03)


@pytest.mark.parametrize("name, frames, size, gflops", [
    ("sifar_base_patch4_window7_224", 8, 224, 138.0),  # the README's FLOPs for each configuration
    ("sifar_base_patch4_window12_192_3x3", 8, 192, 106.0),
    ("sifar_base_patch4_window12_192_4x4", 16, 192, 189.0),
    ("sifar_base_patch4_window14_224_4x4", 16, 224, 263.0),
])
def test_sifar_variants_match_readme(name, frames, size, gflops):
    info = describe(name)
    assert (info["contract"]["num_frames"], info["contract"]["crop_size"]) == (frames, size)
    assert info["gflops"] == pytest.approx(gflops, rel=0.03)


def _eval_model(name, **overrides):
    torch.manual_seed(0)
    # zero_init_last=False: zero-initialised residual branches would hide the temporal modules at init
    return create_model(name, num_classes=5, zero_init_last=False, **overrides).eval()


def _logits_on_shuffled(model, order):
    clips = model.input_contract.example_input(2)
    with torch.no_grad():
        return model(clips), model(clips[:, order])


def test_tsn_consensus_is_order_blind():
    model = _eval_model("tsn_tiny")
    plain, shuffled = _logits_on_shuffled(model, torch.randperm(model.num_frames))
    torch.testing.assert_close(shuffled, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tsm_tiny", "tam_tiny"])
def test_temporal_models_see_frame_order(name):
    model = _eval_model(name)
    for module in model.modules():
        if isinstance(module, TemporalAggregation):  # move TAM off its identity init, as training would
            torch.nn.init.normal_(module.conv.weight, mean=0.3, std=0.2)
    plain, reversed_ = _logits_on_shuffled(model, torch.arange(model.num_frames).flip(0))
    assert not torch.allclose(plain, reversed_, rtol=1e-3, atol=1e-3)


def test_temporal_shift_moves_one_eighth_each_way():
    frames, channels = 4, 16
    x = torch.randn(2 * frames, channels, 3, 3)
    out = TemporalShift(channels, frames)(x).unflatten(0, (2, frames))
    clips = x.unflatten(0, (2, frames))
    torch.testing.assert_close(out[:, :-1, :2], clips[:, 1:, :2])  # channels 0-1 from the next frame
    torch.testing.assert_close(out[:, 1:, 2:4], clips[:, :-1, 2:4])  # channels 2-3 from the previous frame
    assert not out[:, -1, :2].any() and not out[:, 0, 2:4].any()  # zero-filled ends
    torch.testing.assert_close(out[:, :, 4:], clips[:, :, 4:])


def test_tam_blends_neighbouring_frames():
    frames, channels = 5, 6
    tam = TemporalAggregation(channels, frames)
    torch.nn.init.normal_(tam.conv.weight)
    x = torch.randn(frames, channels, 2, 2)  # one clip
    w_prev, w_cur, w_next = (tam.conv.weight[:, 0, k, 0, 0].view(1, -1, 1, 1) for k in range(3))
    zero = torch.zeros_like(x[:1])
    prev, nxt = torch.cat([zero, x[:-1]]), torch.cat([x[1:], zero])
    expected = torch.relu(w_prev * prev + w_cur * x + w_next * nxt)  # IBM's TAM-b3-sum
    torch.testing.assert_close(tam(x), expected)


def test_tam_starts_as_tsn_with_the_same_2d_weights():
    tsn = _eval_model("tsn_tiny")
    tam = _eval_model("tam_tiny")
    tam.load_pretrained(tsn.state_dict())  # a 2D file: the temporal modules keep their identity init
    clips = tsn.input_contract.example_input(2)
    with torch.no_grad():
        torch.testing.assert_close(tam(clips), tsn(clips))


def test_temporal_model_rejects_other_frame_counts():
    model = create_model("tsm_tiny", num_classes=5)
    with pytest.raises(ValueError, match="8 frames"):
        model(torch.randn(2, 4, 3, 64, 64))


def _timm_tiny_resnet(num_classes):
    """A plain timm ResNet with the tiny variants' layout, as a stand-in for an ImageNet checkpoint."""
    torch.manual_seed(1)
    return ResNet(block=Bottleneck, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_type="deep",
                  stem_width=8, num_classes=num_classes)


@pytest.mark.parametrize("classes", [1000, 5])
def test_tsn_loads_a_timm_resnet_state_dict(tmp_path, classes):
    source = _timm_tiny_resnet(classes).state_dict()
    path = tmp_path / "resnet.pth"
    torch.save(source, path)
    model = create_model("tsn_tiny", num_classes=5, pretrained=str(path))
    own = model.state_dict()
    for key in ("conv1.0.weight", "layer3.0.conv2.weight", "layer4.0.bn3.running_var"):
        torch.testing.assert_close(own[key], source[key])
    assert own["fc.weight"].shape == (5, 256)
    assert torch.equal(own["fc.weight"], source["fc.weight"]) == (classes == 5)  # re-initialised if 1000


def test_tsn_load_names_the_mismatched_key(tmp_path):
    source = _timm_tiny_resnet(1000).state_dict()
    source["layer2.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(source, path)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight"):
        create_model("tsn_tiny", num_classes=5, pretrained=str(path))


def test_full_size_tsn_and_tam_take_torchvision_resnet50_keys():
    from torchvision.models import resnet50

    with torch.device("meta"):
        reference = {k: v.shape for k, v in resnet50().state_dict().items()}
        tsn = {k: v.shape for k, v in create_model("tsn_resnet50", num_classes=1000).state_dict().items()}
        tam = {k: v.shape for k, v in create_model("tam_resnet50", num_classes=1000).state_dict().items()}
    assert tsn == reference
    assert {k: s for k, s in tam.items() if ".temporal." not in k} == reference
    assert len(tam) - len(reference) == 16  # one TAM per bottleneck


def test_sifar_super_image_tiles_frames_row_by_row():
    model = create_model("sifar_tiny", num_classes=5, num_frames=3)  # 2x2 grid, one empty tile
    clips = torch.arange(1, 4.0).view(1, 3, 1, 1, 1).expand(1, 3, 3, 32, 32)
    image = model.super_image(clips)
    assert image.shape == (1, 3, 64, 64)
    tiles = image[0, 0].unfold(0, 32, 32).unfold(1, 32, 32)  # (2, 2, 32, 32)
    assert tiles.amin(dim=(-2, -1)).tolist() == [[1.0, 2.0], [3.0, 0.0]]
    assert tiles.amax(dim=(-2, -1)).tolist() == [[1.0, 2.0], [3.0, 0.0]]


def test_sifar_rejects_frames_beyond_its_grid():
    with pytest.raises(ValueError, match="3x3"):
        create_model("sifar_base_patch4_window14_224_3x3", num_frames=16)


def test_sifar_frame_embedding_is_optional():
    with torch.device("meta"):
        plain = create_model("sifar_base_patch4_window14_224_3x3")
        hpe = create_model("sifar_base_patch4_window14_224_3x3", hpe_to_token=True)
    assert plain.frame_pos_embed is None
    assert hpe.frame_pos_embed.shape == (1, 9, 128)  # one embedding per tile of the 3x3 grid


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's table interpolation, not ours
def test_sifar_loads_image_swin_weights_with_other_windows():
    torch.manual_seed(2)
    image_swin = SwinTransformer(img_size=224, window_size=7, embed_dim=16, depths=(2, 2, 2, 2),
                                 num_heads=(1, 2, 4, 8), num_classes=1000)
    source = image_swin.state_dict()
    model = create_model("sifar_tiny", num_classes=5)  # window 4, frame embedding on
    embed_before = model.frame_pos_embed.detach().clone()
    model.load_pretrained(source)
    own = model.state_dict()
    torch.testing.assert_close(own["layers.2.blocks.1.mlp.fc1.weight"], source["layers.2.blocks.1.mlp.fc1.weight"])
    table = "layers.0.blocks.0.attn.relative_position_bias_table"
    assert source[table].shape == (13 * 13, 1) and own[table].shape == (7 * 7, 1)  # resized to window 4
    torch.testing.assert_close(own["frame_pos_embed"], embed_before)
    assert own["head.fc.weight"].shape == (5, 128)


# ---------------------------------------------------------------- IBM's options: TAM blending, temporal pooling


def _shifted(clip, offset):
    """clip (T, C, H, W) -> frame t holds clip[t + offset], zero beyond the clip (IBM's padded shifts)."""
    out = torch.zeros_like(clip)
    t = clip.shape[0]
    lo, hi = max(0, -offset), min(t, t - offset)
    out[lo:hi] = clip[lo + offset:hi + offset]
    return out


@pytest.mark.parametrize("kernel", [2, 3, 4])
@pytest.mark.parametrize("blending", ["sum", "max"])
def test_tam_blends_as_ibm_for_any_frame_count(kernel, blending):
    frames, channels = 5, 6
    tam = TemporalAggregation(channels, frames, kernel_size=kernel, blending=blending)
    torch.nn.init.normal_(tam.conv.weight)
    x = torch.randn(frames, channels, 2, 2)
    # IBM's blending_layers[k] weighs frame t + k - K // 2
    terms = torch.stack([tam.conv.weight[:, 0, k, 0, 0].view(1, -1, 1, 1) * _shifted(x, k - kernel // 2)
                         for k in range(kernel)])
    expected = torch.relu(terms.sum(0) if blending == "sum" else terms.amax(0))
    torch.testing.assert_close(tam(x), expected)


def test_tam_over_all_channels_starts_as_identity():
    tam = TemporalAggregation(4, 3, depthwise=False)
    assert tam.conv.weight.shape == (4, 4, 3, 1, 1)
    x = torch.randn(6, 4, 2, 2)
    torch.testing.assert_close(tam(x), torch.relu(x))


def test_tam_rejects_unknown_blending():
    with pytest.raises(ValueError, match="blending"):
        TemporalAggregation(4, 3, blending="mean")


@pytest.mark.parametrize("frames", [8, 5])
def test_temporal_pool_is_ibms_kernel3_stride2(frames):
    x = torch.randn(frames, 3, 2, 2)
    windows = [[x[j] for j in (2 * t - 1, 2 * t, 2 * t + 1) if 0 <= j < frames] for t in range((frames + 1) // 2)]
    expected_max = torch.stack([torch.stack(w).amax(0) for w in windows])
    expected_avg = torch.stack([torch.stack(w).sum(0) / 3 for w in windows])  # zero padding is counted
    torch.testing.assert_close(TemporalPool(frames, "max")(x), expected_max)
    torch.testing.assert_close(TemporalPool(frames, "avg")(x), expected_avg)


def test_temporal_pool_halves_the_frames_of_later_stages():
    model = _eval_model("tam_tiny", temporal_pool="max")
    frames = [[block.temporal.num_frames for block in stage] for stage in model.res_stages()]
    assert frames == [[8], [4], [2], [1]]
    clips = model.input_contract.example_input(2)
    with torch.no_grad():
        assert model(clips).shape == (2, 5)
    plain = _eval_model("tsn_tiny")
    pooled = _eval_model("tsn_tiny", temporal_pool="avg")
    pooled.load_state_dict(plain.state_dict())
    with torch.no_grad():  # same weights: only the pooling differs
        assert not torch.allclose(pooled(clips), plain(clips), rtol=1e-3, atol=1e-3)


def test_basic_block_depths_take_torchvision_keys():
    from torchvision.models import resnet18

    with torch.device("meta"):
        reference = {k: v.shape for k, v in resnet18().state_dict().items()}
        tam = {k: v.shape for k, v in create_model("tam_resnet18", num_classes=1000).state_dict().items()}
    assert {k: s for k, s in tam.items() if ".temporal." not in k} == reference
    assert len(tam) - len(reference) == 8  # one TAM per basic block


# ---------------------------------------------------------------- IBM action-recognition checkpoints


def _recognize(arch, num_classes=7, **overrides):
    ckpt = Checkpoint("file.pth.tar", {"epoch": 1, "arch": arch, "state_dict": {}, "best_top1": 0.0},
                      {"fc.weight": torch.zeros(num_classes, 8)})
    return recognize(ckpt, overrides, required=False)


@pytest.mark.parametrize("arch, model, variant", [
    ("kinetics400-rgb-resnet-50-f8-cosine-bs256-e50", "tsn_resnet50", dict(temporal_pool=None)),
    ("st2stv2-rgb-resnet-101-ts-avg-f16", "tsn_resnet101", dict(temporal_pool="avg")),
    ("kinetics400-rgb-TSN-b3-sum-resnet-34-ts-max-f8-step-syncbn-bs64-e50", "tsn_resnet34",
     dict(temporal_pool="max")),
    ("kinetics400-rgb-TAM-b3-sum-resnet-50-f32-cosine-bs256-e50", "tam_resnet50",
     dict(temporal_pool=None, blending_frames=3, blending_method="sum", depthwise=True)),
    ("mini_kinetics400-rgb-TAM-b4-max-allc-resnet-18-ts-max-f8-multisteps-bs72-e35", "tam_resnet18",
     dict(temporal_pool="max", blending_frames=4, blending_method="max", depthwise=False)),
    ("kinetics400-rgb-i3d-resnet-50-f32-cosine-bs64-e50", "i3d_resnet50", dict(temporal_stride=False)),
    ("moments-rgb-i3d-resnet-101-ts-f16", "i3d_resnet101", dict(temporal_stride=True)),
])
def test_ibm_arch_string_names_the_variant(arch, model, variant):
    found = _recognize(arch)
    frames = int(arch.split("-f")[-1].split("-")[0])
    assert (found.model, found.model_args) == (model, dict(num_classes=7, num_frames=frames, **variant))


@pytest.mark.parametrize("arch, message", [
    ("kinetics400-flow-resnet-50-f8", "optical-flow"),
    ("kinetics400-rgb-s3d-ts-max-f8-cosine-bs64-e50", "backbone 's3d-ts-max' is not supported"),
    ("kinetics400-rgb-resnet-200-f8", "no tsn_resnet200"),
])
def test_ibm_files_this_toolkit_cannot_build_are_refused_in_one_line(arch, message):
    with pytest.raises(CheckpointError, match=message) as err:
        _recognize(arch)
    assert "\n" not in str(err.value)


def test_other_arch_strings_are_not_ibms():
    assert _recognize("resnet50") is None


def _save_ibm(path, arch, state_dict, prefix=""):
    container = {"epoch": 50, "arch": arch, "state_dict": {prefix + k: v for k, v in state_dict.items()},
                 "best_top1": 70.0, "optimizer": {}, "scheduler": {}}
    torch.save(container, path)
    return str(path)


def test_ibm_temporally_pooled_tsn_loads_only_as_that_variant(tmp_path):
    source = _eval_model("tsn_resnet18", temporal_pool="max")
    arch = "kinetics400-rgb-resnet-18-ts-max-f8-cosine-bs256-e50"
    path = _save_ibm(tmp_path / "model_best.pth.tar", arch, source.state_dict(), prefix="module.")
    model = models.from_checkpoint(path).eval()
    assert model.temporal_pools is not None and model.input_contract.num_frames == 8
    clips = torch.randn(1, 8, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), source(clips))
    with pytest.raises(CheckpointError, match="temporal_pool='max'") as err:
        create_model("tsn_resnet18", num_classes=5, pretrained=path)  # no pooling: would compute another function
    assert "\n" not in str(err.value)
    create_model("tsn_resnet18", num_classes=5, temporal_pool="max", pretrained=path)


def test_ibm_tam_file_computes_their_three_term_blend(tmp_path):
    with torch.device("meta"):
        shapes = create_model("tam_resnet18", num_classes=5).state_dict()
    torch.manual_seed(3)
    weights = {k: torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
               for k, v in shapes.items() if ".temporal." not in k}
    for key, value in shapes.items():
        if ".temporal." in key:  # IBM's layout: one (C, 1, 1, 1) depthwise conv per blended frame
            block = key.split(".temporal.")[0]
            for name in ("prev_se", "curr_se", "next_se"):
                weights[f"{block}.tam.{name}.fc1.weight"] = torch.randn(value.shape[0], 1, 1, 1)
    path = _save_ibm(tmp_path / "K400-TAM-ResNet-18-f8.pth.tar", "kinetics400-rgb-TAM-b3-sum-resnet-18-f8",
                     weights)
    tam = models.from_checkpoint(path).layer3[1].temporal
    x = torch.randn(8, tam.conv.in_channels, 2, 2)
    prev_, curr, next_ = (weights[f"layer3.1.tam.{n}.fc1.weight"].view(1, -1, 1, 1)
                          for n in ("prev_se", "curr_se", "next_se"))
    expected = torch.relu(prev_ * _shifted(x, -1) + curr * x + next_ * _shifted(x, 1))
    torch.testing.assert_close(tam(x), expected)
    with pytest.raises(CheckpointError, match="another variant"):
        create_model("tsn_resnet18", num_classes=5, pretrained=path)


def _ibm_i3d_keys(state_dict):
    """Our I3D keys -> IBM's (their I3D-ResNet names its layers as a 2D ResNet)."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^stem\.0\.", "conv1.", key)
        key = re.sub(r"^stem\.1\.", "bn1.", key)
        key = re.sub(r"^(layer\d\.\d+)\.conv(\d)\.0\.", r"\1.conv\2.", key)
        renamed[re.sub(r"^(layer\d\.\d+)\.conv(\d)\.1\.", r"\1.bn\2.", key)] = value
    return renamed


def test_ibm_i3d_without_temporal_stride_loads_and_refuses_the_strided_model(tmp_path):
    torch.manual_seed(4)
    source = create_model("i3d_resnet18", num_classes=5, temporal_stride=False).state_dict()
    path = _save_ibm(tmp_path / "K400-I3D-ResNet-18-f8.pth.tar", "kinetics400-rgb-i3d-resnet-18-f8",
                     _ibm_i3d_keys(source))
    model = models.from_checkpoint(path)
    assert [stage[0].downsample[0].stride for stage in model.res_stages()[1:]] == [(1, 2, 2)] * 3
    for key in ("stem.0.weight", "layer2.0.conv1.1.running_var", "layer4.1.conv2.0.weight", "fc.bias"):
        torch.testing.assert_close(model.state_dict()[key], source[key])
    with pytest.raises(CheckpointError, match="temporal_stride=False"):
        create_model("i3d_resnet18", num_classes=5, pretrained=path)
    create_model("i3d_resnet18", num_classes=5, temporal_stride=False, pretrained=path)

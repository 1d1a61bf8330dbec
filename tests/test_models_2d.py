"""TSN / TSM / TAM and SIFAR: published sizes, temporal behaviour, and loading 2D image weights."""
import pytest
import torch
from timm.models.resnet import Bottleneck, ResNet
from timm.models.swin_transformer import SwinTransformer

from models import create_model
from models.profile import describe
from models.temporal2d import TemporalAggregation, TemporalShift


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

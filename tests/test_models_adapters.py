"""AIM and ILA on a frozen CLIP ViT: sizes, what trains, temporal mixing, CLIP / timm weight loading."""
import re

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from models import create_model
from models.ila import alignment_mask
from models.vit_video import CLIP_VIT_TINY

# backbone parameters of the CLIP image tower, in timm names
BACKBONE = re.compile(
    r"(patch_embed\.|cls_token|pos_embed|norm_pre\.|norm\.|proj\.|blocks\.\d+\.(norm1|attn|norm2|mlp)\.)")


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _count(model, trainable_only=False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def test_aim_base_sizes_match_the_paper():
    model = _meta("aim_vit_base_patch16")
    assert _count(model) == pytest.approx(97e6, rel=0.02)  # AIM paper, ViT-B/16: 97M total, 11M tunable
    assert _count(model, trainable_only=True) == pytest.approx(11e6, rel=0.02)
    contract = model.input_contract
    assert (contract.layout, contract.num_frames, contract.crop_size) == ("NTCHW", 8, 224)


def test_aim_trains_only_adapters_temporal_embedding_final_norm_and_head():
    model = _meta("aim_vit_base_patch16")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = re.compile(r"temporal_embed$|norm\.|head\.|blocks\.\d+\.(t|s|mlp)_adapter\.")
    assert trainable and all(expected.match(n) for n in trainable), sorted(trainable)[:5]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(BACKBONE.match(n) for n in frozen)
    assert len([n for n in trainable if "_adapter.fc1.weight" in n]) == 3 * 12
    assert model.blocks[0].t_adapter.fc1.out_features == 192  # bottleneck ratio 0.25


@pytest.mark.parametrize("name", ["ila_vit_base_patch16", "ila_vit_base_patch32"])
def test_ila_freezes_the_clip_tower(name):
    """As the official repo: the CLIP image tower (projection included) is frozen; the alignment
    modules, the frame-integration transformer and the classifier train."""
    model = _meta(name)
    for n, p in model.named_parameters():
        assert p.requires_grad != bool(BACKBONE.match(n)), n
    assert model.proj.weight.shape == (512, 768)
    grid = 224 // model.patch_embed.patch_size[0]
    assert model.blocks[0].align.grid_size == grid


def test_aim_frozen_weights_get_no_gradient_and_stay_put():
    torch.manual_seed(0)
    model = create_model("aim_tiny", num_classes=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    clips = model.input_contract.example_input(2)
    for _ in range(3):  # adapters' last layers start at zero: their first layers move from step 2 on
        optimizer.zero_grad()
        F.cross_entropy(model(clips), torch.tensor([0, 1])).backward()
        optimizer.step()
    for n, p in model.named_parameters():
        if p.requires_grad:
            if "_adapter." in n:
                assert not torch.equal(p, before[n]), f"adapter {n} did not change"
        else:
            assert p.grad is None, n
            assert torch.equal(p, before[n]), f"frozen {n} changed"


def _image_vit(model) -> VisionTransformer:
    """The plain timm CLIP ViT carrying `model`'s backbone and head weights."""
    vit = VisionTransformer(img_size=32, patch_size=8, num_classes=model.num_classes, **CLIP_VIT_TINY)
    vit.load_state_dict({k: v for k, v in model.state_dict().items() if k in vit.state_dict()})
    return vit.eval()


def test_aim_starts_as_the_image_model():
    """Zero-initialised adapters and temporal embedding: AIM = per-frame CLIP ViT, logits averaged."""
    torch.manual_seed(0)
    model = create_model("aim_tiny", num_classes=5).eval()
    clips = model.input_contract.example_input(2)
    with torch.no_grad():
        per_frame = _image_vit(model)(clips.flatten(0, 1)).view(2, clips.shape[1], -1)
        torch.testing.assert_close(model(clips), per_frame.mean(1))


def test_aim_temporal_adapter_mixes_frames():
    torch.manual_seed(0)
    model = create_model("aim_tiny", num_classes=5).eval()
    clips = model.input_contract.example_input(1)
    changed = clips.clone()
    changed[:, 1] = torch.randn_like(changed[:, 1])
    with torch.no_grad():
        first = lambda x: model.forward_features(x)[:, 0]  # noqa: E731
        torch.testing.assert_close(first(clips), first(changed))  # fresh adapters: frames independent
        for block in model.blocks:  # a random ViT's tiny attention outputs need a strong adapter
            torch.nn.init.normal_(block.t_adapter.fc1.weight, std=0.5)
            torch.nn.init.normal_(block.t_adapter.fc2.weight, std=0.5)
        assert not torch.allclose(first(clips), first(changed))


def test_adapter_models_reject_other_clip_lengths():
    model = create_model("aim_tiny", num_classes=5)
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, model.input_contract.num_frames + 1, 3, 32, 32))


def _clip_state_dict(model, seed: int = 1) -> dict:
    """An OpenAI-CLIP-format state dict (visual tower plus a text key) with `model`'s tiny shapes."""
    g = torch.Generator().manual_seed(seed)
    d, p = model.embed_dim, model.patch_embed.patch_size[0]
    tokens, hidden = model.pos_embed.shape[1], model.blocks[0].mlp.fc1.out_features
    shapes = {"conv1.weight": (d, 3, p, p), "class_embedding": (d,), "positional_embedding": (tokens, d),
              "ln_pre.weight": (d,), "ln_pre.bias": (d,), "ln_post.weight": (d,), "ln_post.bias": (d,),
              "proj": (d, 16)}
    for i in range(len(model.blocks)):
        block = {"ln_1.weight": (d,), "ln_1.bias": (d,), "attn.in_proj_weight": (3 * d, d),
                 "attn.in_proj_bias": (3 * d,), "attn.out_proj.weight": (d, d), "attn.out_proj.bias": (d,),
                 "ln_2.weight": (d,), "ln_2.bias": (d,), "mlp.c_fc.weight": (hidden, d),
                 "mlp.c_fc.bias": (hidden,), "mlp.c_proj.weight": (d, hidden), "mlp.c_proj.bias": (d,)}
        shapes.update({f"transformer.resblocks.{i}.{k}": s for k, s in block.items()})
    sd = {f"visual.{k}": torch.randn(s, generator=g) for k, s in shapes.items()}
    sd["token_embedding.weight"] = torch.randn(10, 16, generator=g)  # text tower: ignored
    return sd


@pytest.mark.parametrize("name", ["aim_tiny", "ila_tiny"])
def test_clip_state_dict_loads(name):
    model = create_model(name, num_classes=5)
    new_modules = {k: v.clone() for k, v in model.state_dict().items() if not BACKBONE.match(k)}
    sd = _clip_state_dict(model)
    model.load_pretrained(sd)
    own = model.state_dict()
    block = "visual.transformer.resblocks"
    torch.testing.assert_close(own["blocks.1.attn.qkv.weight"], sd[f"{block}.1.attn.in_proj_weight"])
    torch.testing.assert_close(own["blocks.0.mlp.fc2.bias"], sd[f"{block}.0.mlp.c_proj.bias"])
    torch.testing.assert_close(own["cls_token"].flatten(), sd["visual.class_embedding"])
    torch.testing.assert_close(own["pos_embed"][0], sd["visual.positional_embedding"])
    torch.testing.assert_close(own["norm.weight"], sd["visual.ln_post.weight"])
    if name == "ila_tiny":  # CLIP's projection feeds ILA's frame integration
        torch.testing.assert_close(own["proj.weight"], sd["visual.proj"].t())
    for k, v in new_modules.items():  # adapters, alignment, heads keep their initialisation
        assert torch.equal(own[k], v), k


@pytest.mark.parametrize("name", ["aim_tiny", "ila_tiny"])
def test_clip_state_dict_with_wrong_shape_names_the_key(name):
    model = create_model(name, num_classes=5)
    sd = _clip_state_dict(model)
    sd["visual.transformer.resblocks.1.mlp.c_fc.weight"] = torch.randn(7, model.embed_dim)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        model.load_pretrained(sd)


def test_clip_state_dict_with_missing_key_names_it():
    model = create_model("aim_tiny", num_classes=5)
    sd = _clip_state_dict(model)
    del sd["visual.ln_post.weight"]
    with pytest.raises(ValueError, match=r"missing 1: norm\.weight"):
        model.load_pretrained(sd)


def test_timm_vit_state_dict_loads_without_its_image_classifier():
    torch.manual_seed(0)
    model = create_model("aim_tiny", num_classes=5)
    head = model.head.weight.clone()
    image = VisionTransformer(img_size=32, patch_size=8, num_classes=1000, **CLIP_VIT_TINY)
    model.load_pretrained(image.state_dict())
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, image.blocks[0].attn.qkv.weight)
    assert torch.equal(model.head.weight, head)


def test_ila_needs_the_clip_projection():
    model = create_model("ila_tiny", num_classes=5)
    imagenet_vit = VisionTransformer(img_size=32, patch_size=8, num_classes=1000, **CLIP_VIT_TINY)
    with pytest.raises(ValueError, match=r"proj\.weight"):
        model.load_pretrained(imagenet_vit.state_dict())


@pytest.mark.parametrize("name", ["aim_tiny", "ila_tiny"])
def test_own_checkpoint_round_trip_through_create_model(name, tmp_path):
    torch.manual_seed(0)
    trained = create_model(name, num_classes=5)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "ckpt.pth"
    torch.save(trained.state_dict(), path)
    loaded = create_model(name, num_classes=5, pretrained=str(path))
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_alignment_mask_is_the_repos_soft_square():
    """Weight 1 within 0.25 of the point per axis, then 1 - 1.5 * (distance - 0.25), floored at 0."""
    mask = alignment_mask(torch.tensor([0.0, 0.5]), 9)  # grid -1, -0.75, ..., 1; point x=0, y=0.5
    profile_x = torch.tensor([0, 0.25, 0.625, 1, 1, 1, 0.625, 0.25, 0])
    profile_y = torch.tensor([0, 0, 0, 0.25, 0.625, 1, 1, 1, 0.625])
    torch.testing.assert_close(mask, profile_y[:, None] * profile_x[None, :])


@pytest.mark.parametrize("path", [("skip_interact",), ("skip_aligned", "align.point_head.2")])
def test_ila_block_mixes_neighbouring_frames(path):
    """Frame 0 sees frame 1 through the pair's interactive features, and through the aligned region
    once the point predictor (zero-initialised: points start at the centre) depends on the pair."""
    torch.manual_seed(0)
    model = create_model("ila_tiny", num_classes=5).eval()
    block, t = model.blocks[0], model.num_frames
    tokens = torch.randn(2 * t, model.pos_embed.shape[1], model.embed_dim)
    changed = tokens.view(2, t, *tokens.shape[1:]).clone()
    changed[:, 1] += 1.0
    changed = changed.flatten(0, 1)
    first = lambda x: block(x)[0].view(2, t, *x.shape[1:])[:, 0]  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(first(tokens), first(changed))  # zero-initialised skips
        for name in path:
            torch.nn.init.normal_(block.get_submodule(name).weight, std=0.5)
        assert not torch.allclose(first(tokens), first(changed))


def test_ila_alignment_loss_trains_the_alignment_only():
    model = create_model("ila_tiny", num_classes=5)
    logits, loss = model.forward_with_aux(model.input_contract.example_input(2))
    assert logits.shape == (2, 5) and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.blocks[0].align_fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if BACKBONE.match(n))
    jitter = model.blocks[0].align.jitter.clone()
    model.blocks[0].align.decay_jitter()
    torch.testing.assert_close(model.blocks[0].align.jitter, jitter / 2)

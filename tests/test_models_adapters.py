"""AIM and ILA on a frozen CLIP ViT: sizes, what trains, temporal mixing, CLIP / timm weight loading."""
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.layers import QuickGELU
from timm.models.vision_transformer import VisionTransformer

import models
from models import CheckpointError, create_model
from models.checkpoints import Checkpoint, recognize
from models.clip_text import CLIPTextEncoder, convert_clip_text, tokenize
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


@pytest.mark.parametrize("name, total, tunable", [("aim_vit_base_patch16", 97e6, 11e6),
                                                  ("aim_vit_large_patch14", 341e6, 38e6)])
def test_aim_sizes_match_the_paper(name, total, tunable):
    model = _meta(name)  # the AIM paper's (and repo README's) parameter counts
    assert _count(model) == pytest.approx(total, rel=0.02)
    assert _count(model, trainable_only=True) == pytest.approx(tunable, rel=0.02)
    contract = model.input_contract
    assert (contract.layout, contract.num_frames, contract.crop_size) == ("NTCHW", 8, 224)
    assert contract.frame_stride == 16  # the repo's Kinetics sampling: 8 frames one every 16


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


# ------------------------------------------------------------------ the AIM repo's released files


def _authors_aim_shapes(width=32, layers=2, patch=8, size=32, frames=4, classes=5, tadapter_in=False) -> dict:
    """Key -> shape of an mmaction Recognizer3D file of the AIM repo (ViT_CLIP + I3DHead)."""
    hidden = width // 4
    shapes = {"backbone.class_embedding": (width,), "backbone.positional_embedding": ((size // patch) ** 2 + 1, width),
              "backbone.temporal_embedding": (1, frames, width), "backbone.conv1.weight": (width, 3, patch, patch),
              "backbone.ln_pre.weight": (width,), "backbone.ln_pre.bias": (width,)}
    adapters = ["MLP_Adapter", "S_Adapter", "T_Adapter"] + (["T_Adapter_in"] if tadapter_in else [])
    for i in range(layers):
        block = {"attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
                 "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
                 "ln_1.weight": (width,), "ln_1.bias": (width,), "mlp.c_fc.weight": (4 * width, width),
                 "mlp.c_fc.bias": (4 * width,), "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,),
                 "ln_2.weight": (width,), "ln_2.bias": (width,)}
        for a in adapters:
            block.update({f"{a}.D_fc1.weight": (hidden, width), f"{a}.D_fc1.bias": (hidden,),
                          f"{a}.D_fc2.weight": (width, hidden), f"{a}.D_fc2.bias": (width,)})
        shapes.update({f"backbone.transformer.resblocks.{i}.{k}": s for k, s in block.items()})
    shapes.update({"backbone.ln_post.weight": (width,), "backbone.ln_post.bias": (width,),
                   "cls_head.fc_cls.weight": (classes, width), "cls_head.fc_cls.bias": (classes,)})
    return shapes


def _save_authors_aim(path, config: str | None = None, seed: int = 0, **shape_args) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.1 for k, s in _authors_aim_shapes(**shape_args).items()}
    meta = {"epoch": 30} if config is None else {"epoch": 30, "config": config}
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {}}, path)
    return sd


def test_authors_aim_file_loads_every_tensor_in_place(tmp_path):
    path = tmp_path / "epoch_30.pth"
    sd = _save_authors_aim(path)
    model = models.from_checkpoint(str(path), num_frames=4)
    own, block = model.state_dict(), "backbone.transformer.resblocks"
    assert model.model_name == "aim_tiny" and model.blocks[0].joint_scale == 0.5  # the repo's K400 scale
    assert len(own) == len(sd)
    torch.testing.assert_close(own["cls_token"].flatten(), sd["backbone.class_embedding"])
    torch.testing.assert_close(own["pos_embed"][0], sd["backbone.positional_embedding"])
    torch.testing.assert_close(own["temporal_embed"], sd["backbone.temporal_embedding"])
    torch.testing.assert_close(own["blocks.1.attn.qkv.weight"], sd[f"{block}.1.attn.in_proj_weight"])
    torch.testing.assert_close(own["blocks.0.norm2.bias"], sd[f"{block}.0.ln_2.bias"])
    torch.testing.assert_close(own["blocks.1.t_adapter.fc2.weight"], sd[f"{block}.1.T_Adapter.D_fc2.weight"])
    torch.testing.assert_close(own["blocks.0.s_adapter.fc1.bias"], sd[f"{block}.0.S_Adapter.D_fc1.bias"])
    torch.testing.assert_close(own["blocks.1.mlp_adapter.fc1.weight"], sd[f"{block}.1.MLP_Adapter.D_fc1.weight"])
    torch.testing.assert_close(own["norm.weight"], sd["backbone.ln_post.weight"])
    torch.testing.assert_close(own["head.bias"], sd["cls_head.fc_cls.bias"])


def test_authors_aim_file_options_come_from_its_config_text_and_keys(tmp_path):
    """The SSv2 recipe: adapter_scale=1 (only the saved config says so) and a second temporal adapter."""
    path = tmp_path / "epoch_30.pth"
    config = "model = dict(\n    backbone=dict(\n        type='ViT_CLIP',\n        heads=2,\n        adapter_scale=1,"
    sd = _save_authors_aim(path, config=config, tadapter_in=True)
    model = models.from_checkpoint(str(path))
    assert model.blocks[0].joint_scale == 1.0
    torch.testing.assert_close(model.blocks[1].t_adapter_in.fc1.weight,
                               sd["backbone.transformer.resblocks.1.T_Adapter_in.D_fc1.weight"])
    assert model.blocks[0].t_adapter_in.fc1.weight.requires_grad  # trains with the other adapters
    with pytest.raises(CheckpointError, match="joint_scale=1.0, which contradicts"):
        models.from_checkpoint(str(path), joint_scale=0.5)


def test_second_temporal_adapter_feeds_the_temporal_branch_only():
    """num_tadapter=2 (the repo's SSv2 recipe): T_Adapter(attn(x + T_Adapter_in(x))) over time. It changes
    the block only through the temporal adapter: nothing while that adapter is still zero."""
    torch.manual_seed(0)
    block = create_model("aim_tiny", num_classes=5, num_tadapter=2).eval().blocks[0]
    x = torch.randn(2 * block.num_frames, 5, block.norm1.normalized_shape[0])
    outputs = []
    with torch.no_grad():
        for t_adapter_std in (0.0, 0.5):
            torch.nn.init.normal_(block.t_adapter.fc2.weight, std=t_adapter_std)
            block.t_adapter_in.fc2.weight.zero_()
            without = block(x)
            torch.nn.init.normal_(block.t_adapter_in.fc2.weight, std=0.5)
            outputs.append((without, block(x)))
    torch.testing.assert_close(*outputs[0], rtol=0, atol=0)
    assert not torch.allclose(*outputs[1])


def test_a_file_without_the_adapter_scale_takes_the_callers(tmp_path):
    path = tmp_path / "epoch_30.pth"
    _save_authors_aim(path)
    assert models.from_checkpoint(str(path), joint_scale=1.0).blocks[0].joint_scale == 1.0
    model = create_model("aim_tiny", num_classes=5, joint_scale=1.0, pretrained=str(path))
    assert model.blocks[0].joint_scale == 1.0


@pytest.mark.parametrize("shape_args, name, heads", [
    (dict(width=768, layers=12, patch=16, size=224, frames=8), "aim_vit_base_patch16", 12),
    (dict(width=768, layers=12, patch=32, size=224, frames=16), "aim_vit_base_patch32", 12),
    (dict(width=1024, layers=24, patch=14, size=224, frames=32, classes=700), "aim_vit_large_patch14", 16),
    (dict(width=1024, layers=24, patch=14, size=336, frames=8, classes=48), "aim_vit_large_patch14", 16),
])
def test_authors_aim_variant_comes_from_the_shapes(shape_args, name, heads):
    sd = {k: torch.empty(s, device="meta") for k, s in _authors_aim_shapes(**shape_args).items()}
    rec = recognize(Checkpoint("epoch_30.pth", {"meta": {}, "state_dict": sd}, sd))
    assert rec.model == name
    assert rec.model_args["num_frames"] == shape_args["frames"]
    with torch.device("meta"):
        model = create_model(rec.model, **rec.model_args)
    assert model.input_contract.crop_size == shape_args["size"] and model.blocks[0].attn.num_heads == heads
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in rec.state_dict.items()}


def test_authors_aim_refusals_are_one_line(tmp_path):
    path = tmp_path / "epoch_30.pth"
    _save_authors_aim(path, frames=4)
    with pytest.raises(CheckpointError, match="trained with 4 frames") as err:
        models.from_checkpoint(str(path), num_frames=8)
    assert "\n" not in str(err.value)
    odd = tmp_path / "odd.pth"
    _save_authors_aim(odd, width=48)
    with pytest.raises(CheckpointError, match="width 48, 2 layers, patch 8: no such AIM variant"):
        models.from_checkpoint(str(odd))


@pytest.mark.parametrize("variant_args, file_args", [
    ({}, dict(config="backbone=dict(adapter_scale=1)")),  # a joint scale shows in no weight
    ({}, dict(tadapter_in=True)),
    ({"num_tadapter": 2}, {}),
])
def test_an_authors_aim_file_of_another_variant_is_refused(tmp_path, variant_args, file_args):
    path = tmp_path / "epoch_30.pth"
    _save_authors_aim(path, **file_args)
    with pytest.raises(CheckpointError, match="another variant") as err:
        create_model("aim_tiny", num_classes=5, pretrained=str(path), **variant_args)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ ILA: the repo's two architectures

CLASSES = ["abseiling", "air drumming", "answering questions", "applauding", "applying cream"]


def _ila_authors_state_dict(arch: str, frames: int = 4, head_rows: int = 400, seed: int = 0) -> dict:
    """ila_tiny's shapes laid out as the repo's XCLIP saves them (branch SSV2 or master)."""
    d, hidden, half, e, text = 32, 16, 8, 16, 32
    shapes = {"visual.class_embedding": (d,), "visual.positional_embedding": (17, d), "visual.proj": (d, e),
              "visual.conv1.weight": (d, 3, 8, 8), "mit.positional_embedding": (1, frames, e)}
    norms = {"visual.ln_pre": d, "visual.ln_post": d}
    convs = {"conv": (half, half, 3, 1, 1), "fc": (d, half), "prediction_block.0": (half, hidden, 3, 3),
             "prediction_block.4": (half, half, 3, 3), "prediction_block.10": (4, 4, 1),
             "prediction_block.12": (4, 2, 1)}
    bns = {"prediction_block.1": half, "prediction_block.5": half}
    if arch == "ssv2":
        convs.update({"interactive_block.0": (hidden, 2 * d, 3, 3), "interactive_block.3": (hidden, hidden, 3, 3)})
        bns.update({"interactive_block.1": hidden, "interactive_block.4": hidden})
    else:
        convs.update({"interactive_block.0.depthwise_conv.0": (2 * d, 1, 3, 3),
                      "interactive_block.0.pointwise_conv.0": (hidden, 2 * d, 1, 1),
                      "interactive_block.1": (hidden, hidden, 3, 3)})
        bns.update({"interactive_block.0.depthwise_conv.1": 2 * d, "interactive_block.0.pointwise_conv.1": hidden,
                    "interactive_block.2": hidden})
    blocks = {f"visual.transformer.resblocks.{i}": d for i in range(2)} | {"mit.resblocks.0": e}
    for i in range(2):
        b = f"visual.transformer.resblocks.{i}"
        for name in ("message_fc", "temporal_skip_fc", "temporal_skip_align_fc"):
            shapes.update({f"{b}.{name}.weight": (d, d), f"{b}.{name}.bias": (d,)})
        norms[f"{b}.message_ln"] = d
        for name, shape in convs.items():
            shapes.update({f"{b}.message_attn.{name}.weight": shape, f"{b}.message_attn.{name}.bias": shape[:1]})
        for name, c in bns.items():
            shapes.update({f"{b}.message_attn.{name}.{p}": (c,) for p in ("running_mean", "running_var")})
            norms[f"{b}.message_attn.{name}"] = c
    if arch == "ssv2":
        shapes.update({"mit.classify_head.2.weight": (head_rows, e), "mit.classify_head.2.bias": (head_rows,)})
        norms["mit.classify_head.0"] = e
    else:
        blocks["transformer.resblocks.0"] = text
        shapes.update({"positional_embedding": (77, text), "text_projection": (text, e), "logit_scale": (),
                       "token_embedding.weight": (49408, text), "prompts_visual_proj": (d, e),
                       "prompts_generator.alpha": (e,)})
        norms.update({"ln_final": text, "prompts_visual_ln": d, "prompts_generator.norm": e})
        for i in range(2):
            p = f"prompts_generator.decoder.{i}"
            shapes.update({f"{p}.cross_attn.{n}_proj.weight": (e, e) for n in "qkv"})
            shapes.update({f"{p}.cross_attn.proj.weight": (e, e), f"{p}.cross_attn.proj.bias": (e,),
                           f"{p}.mlp.0.weight": (4 * e, e), f"{p}.mlp.0.bias": (4 * e,),
                           f"{p}.mlp.3.weight": (e, 4 * e), f"{p}.mlp.3.bias": (e,)})
            norms.update({f"{p}.norm1": e, f"{p}.norm3": e})
    for b, w in blocks.items():  # CLIP residual blocks
        shapes.update({f"{b}.attn.in_proj_weight": (3 * w, w), f"{b}.attn.in_proj_bias": (3 * w,),
                       f"{b}.attn.out_proj.weight": (w, w), f"{b}.attn.out_proj.bias": (w,),
                       f"{b}.mlp.c_fc.weight": (4 * w, w), f"{b}.mlp.c_fc.bias": (4 * w,),
                       f"{b}.mlp.c_proj.weight": (w, 4 * w), f"{b}.mlp.c_proj.bias": (w,)})
        norms.update({f"{b}.ln_1": w, f"{b}.ln_2": w})
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * 0.2 for k, s in shapes.items()}
    for k, c in norms.items():
        sd[f"{k}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{k}.bias"] = 0.1 * torch.randn(c, generator=g)
    for k in [k for k in sd if k.endswith("running_var")]:
        sd[k] = sd[k].abs() + 0.5
        sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return sd


def _save_authors_ila(path, arch: str, dataset_classes: int = 174, config_type=dict, **kwargs) -> str:
    """The container of the repo's utils/helper.py epoch_saving."""
    config = {"DATA": {"NUM_FRAMES": 4, "NUM_CLASSES": dataset_classes, "INPUT_SIZE": 32},
              "MODEL": {"ARCH": "ViT-tiny/8"}}
    torch.save({"model": _ila_authors_state_dict(arch, **kwargs), "optimizer": {}, "lr_scheduler": {},
                "max_accuracy": 0.0, "epoch": 29, "config": config_type(config)}, path)
    return str(path)


def _yacs_cfgnode(monkeypatch):
    """A dict subclass pickled as yacs.config.CfgNode with its attributes, like the repo's frozen config
    (yacs itself is not installed)."""
    import types

    class CfgNode(dict):
        def __init__(self, items: dict):
            super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in items.items()})
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(), "__new_allowed__": False})

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module = types.ModuleType("yacs.config")
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def test_ila_tokenizer_gives_the_fixtures_clip_token_ids():
    from pathlib import Path

    refs = Path(__file__).resolve().parents[2] / "shared" / "refs"
    case = refs / "cases" / "ila_vitb16_f8_k400.json"
    if not case.is_file():
        pytest.skip(f"golden-logit fixture not found at {case}")
    sys.path.insert(0, str(refs))
    import materialize

    spec = materialize.load_spec(str(case))
    expected = materialize.build_text(spec)
    assert torch.equal(tokenize(spec["input"]["text"]["class_names"]), expected)


def test_clip_tokenizer_refuses_names_over_the_context_length():
    ids = tokenize(["air drumming"], context_length=5)
    assert ids[0, 0] == 49406 and ids[0, 3] == 49407 and ids[0, 4] == 0  # start, 2 tokens, end, padding
    with pytest.raises(ValueError, match="4 tokens, over the context length 3"):
        tokenize(["air drumming"], context_length=3)


def test_clip_text_encoder_matches_open_clip_on_converted_weights():
    """An OpenAI-layout text tower (open_clip's own implementation) loads into ours and gives the same embeddings,
    and the padding after the last end-of-text token (skipped by ours) changes nothing."""
    import open_clip.transformer

    torch.manual_seed(0)
    ref = open_clip.transformer.TextTransformer(width=32, heads=2, layers=2, output_dim=16, proj_bias=False,
                                                act_layer=QuickGELU).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = CLIPTextEncoder(16, width=32, depth=2, num_heads=2).eval()
    ours.load_state_dict(convert_clip_text(ref.state_dict()))
    tokens = tokenize(CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), ref(tokens))


@pytest.mark.parametrize("arch", ["ssv2", "k400"])
def test_ila_authors_file_is_recognised_and_placed(arch, tmp_path):
    path = _save_authors_ila(tmp_path / "best.pth", arch)
    sd = _ila_authors_state_dict(arch)
    model = models.from_checkpoint(path, **({"class_names": CLASSES} if arch == "k400" else {}))
    assert (model.model_name, model.arch, model.num_frames) == ("ila_tiny", arch, 4)
    align, b = model.blocks[1].align, "visual.transformer.resblocks.1.message_attn"
    assert torch.equal(align.point_head[2].weight, sd[f"{b}.prediction_block.12.weight"])
    assert torch.equal(align.predict[2][1].running_var, sd[f"{b}.prediction_block.5.running_var"])
    if arch == "ssv2":
        assert torch.equal(align.interact[1][0].weight, sd[f"{b}.interactive_block.3.weight"])
        assert model(model.input_contract.example_input(1)).shape == (1, 400)
    else:
        assert align.interact[0][0].groups == 64 and align.interact[0][0].bias is not None
        assert torch.equal(align.interact[2][0].weight, sd[f"{b}.interactive_block.1.weight"])
        pointwise_bn = sd[f"{b}.interactive_block.0.pointwise_conv.1.running_mean"]
        assert torch.equal(align.interact[1][1].running_mean, pointwise_bn)
        assert torch.equal(model.head.prompt_proj.weight, sd["prompts_visual_proj"].t())
        assert torch.equal(model.head.text.proj.weight, sd["text_projection"].t())
        assert torch.equal(model.head.prompt.blocks[1].mlp.fc2.bias, sd["prompts_generator.decoder.1.mlp.3.bias"])
        assert model(model.input_contract.example_input(1)).shape == (1, len(CLASSES))


def test_ila_ssv2_file_keeps_the_datasets_rows_of_its_400_way_head(tmp_path, monkeypatch):
    """The repo's SSv2 code builds a 400-way head for SSv2's 174 classes: asked for the config's 174 classes
    (read from the file's yacs config), the model keeps the first 174 rows and gives the first 174 logits of
    the 400-way model."""
    path = _save_authors_ila(tmp_path / "best.pth", "ssv2", config_type=_yacs_cfgnode(monkeypatch))
    monkeypatch.delitem(sys.modules, "yacs.config")  # reading the file needs no yacs
    full = models.from_checkpoint(path).eval()
    ssv2 = models.from_checkpoint(path, num_classes=174).eval()
    assert ssv2.head[2].out_features == 174
    x = full.input_contract.example_input(2)
    with torch.no_grad():
        torch.testing.assert_close(ssv2(x), full(x)[:, :174])
    with pytest.raises(CheckpointError, match="400 classes, not the 10 asked for"):
        models.from_checkpoint(path, num_classes=10)  # not the file's dataset: a new head, on request only
    assert models.from_checkpoint(path, num_classes=10, reset_head=True).head[2].out_features == 10


def test_ila_file_refusals_are_one_line(tmp_path):
    k400 = _save_authors_ila(tmp_path / "k400.pth", "k400")
    unnamed = models.from_checkpoint(k400)  # loads, but cannot classify without the class names
    with pytest.raises(ValueError, match="build it with class_names"):
        unnamed(unnamed.input_contract.example_input(1))
    with pytest.raises(CheckpointError, match="for 4 frames.*num_frames=8") as err:
        models.from_checkpoint(k400, num_frames=8, class_names=CLASSES)
    assert "\n" not in str(err.value)
    mixed = _ila_authors_state_dict("k400")  # the K400 alignment with the SSv2 linear head: no release has it
    mixed.update({k: v for k, v in _ila_authors_state_dict("ssv2").items() if k.startswith("mit.classify_head.")})
    mixed = {k: v for k, v in mixed.items() if not k.startswith(("prompts_", "token_embedding", "transformer."))}
    with pytest.raises(CheckpointError, match="separable interactive block and a linear classifier") as err:
        recognize(Checkpoint("mixed.pth", {"model": mixed}, mixed))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("file_arch, model_arch", [("ssv2", "k400"), ("k400", "ssv2")])
def test_ila_file_of_one_architecture_refuses_a_model_of_the_other(file_arch, model_arch, tmp_path):
    path = _save_authors_ila(tmp_path / "best.pth", file_arch)
    classes = {"class_names": CLASSES} if model_arch == "k400" else {}
    with pytest.raises(CheckpointError, match="another variant") as err:
        create_model("ila_tiny", num_classes=5, pretrained=path, arch=model_arch, **classes)
    assert "\n" not in str(err.value)
    named = {"class_names": CLASSES} if file_arch == "k400" else {}  # the right variant loads
    create_model("ila_tiny", num_classes=400 if file_arch == "ssv2" else 5, pretrained=path, arch=file_arch, **named)


def test_ila_k400_classifies_by_class_name_text():
    """Logits are exp(logit_scale) times cosines; each class's score follows its name, wherever it is listed."""
    torch.manual_seed(0)
    model = create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES).eval()
    torch.manual_seed(0)
    reordered = create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES[::-1]).eval()
    x = model.input_contract.example_input(2)
    with torch.no_grad():
        logits = model(x)
        torch.testing.assert_close(reordered(x), logits.flip(1))
    assert logits.abs().max() <= model.head.logit_scale.exp() + 1e-5
    assert logits.std() > 1e-3
    with pytest.raises(ValueError, match="3 class names for num_classes=5"):
        create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES[:3])


def test_ila_k400_caches_the_class_embeddings_until_the_weights_change():
    torch.manual_seed(0)
    model = create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES).eval()
    calls = []
    model.head.text.register_forward_hook(lambda *_: calls.append(1))
    x = model.input_contract.example_input(1)
    with torch.no_grad():
        first = model(x)
        torch.testing.assert_close(model(x), first)
        assert len(calls) == 1  # the frozen text tower ran once
        sd = model.state_dict()
        sd["head.text.proj.weight"] = torch.randn_like(sd["head.text.proj.weight"])
        model.load_state_dict(sd)
        assert not torch.allclose(model(x), first) and len(calls) == 2


def test_ila_k400_trains_the_alignment_and_mit_only():
    """As the repo's optimiser: alignment modules and MIT; the CLIP towers, prompt generator and logit scale stay."""
    model = create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.match(r"mit\.|blocks\.\d+\.(align|skip_)", n) for n in trainable)
    assert not model.head.text.token_embedding.weight.requires_grad and not model.head.prompt.alpha.requires_grad
    logits, loss = model.forward_with_aux(model.input_contract.example_input(2))
    (F.cross_entropy(logits, torch.tensor([0, 3])) + loss).backward()
    assert model.blocks[0].align_fc.weight.grad.abs().sum() > 0
    assert model.mit.pos_embed.grad.abs().sum() > 0


def test_ila_k400_takes_text_tower_and_logit_scale_from_a_clip_file():
    import open_clip.transformer

    model = create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES)
    text = open_clip.transformer.TextTransformer(width=32, heads=2, layers=1, output_dim=16, proj_bias=False,
                                                 act_layer=QuickGELU).eval()
    sd = _clip_state_dict(model)
    del sd["token_embedding.weight"]
    sd.update(text.state_dict(), logit_scale=torch.tensor(3.0))
    model.load_pretrained(sd)
    assert model.head.logit_scale.item() == 3.0
    with torch.no_grad():
        torch.testing.assert_close(model.eval().head.class_embeddings(), text(tokenize(CLASSES)))
    image_only = _clip_state_dict(model)
    with pytest.raises(ValueError, match="needs CLIP's text tower"):
        model.load_pretrained({k: v for k, v in image_only.items() if k.startswith("visual.")})

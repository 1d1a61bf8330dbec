"""Every family's timm-style split: forward_features, then forward_head(pre_logits=True) gives one clip
embedding of `num_features`, and forward is exactly forward_head(forward_features)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models

CLASSES = ["archery", "bowling", "cooking", "dancing", "eating"]
VARIANTS = [(name, {}) for name in models.list_models("*_tiny")] + [
    ("x3d_tiny", {"sts": True}),
    ("tsn_tiny", {"temporal_pool": "max"}),  # the path with temporal pooling between stages
    ("ila_tiny", {"arch": "k400", "class_names": CLASSES}),
]


def _classifier_on(model: nn.Module, embedding: torch.Tensor) -> torch.Tensor:
    """The model's last linear layer (a Linear or a 1x1x1 conv, named by its head_names) on the embedding."""
    layer = model.get_submodule(model.head_names[0].rstrip("."))
    if isinstance(layer, nn.Sequential):
        layer = layer[-1]
    return F.linear(embedding, layer.weight.flatten(1), layer.bias)


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v[0] + "".join(f"-{k}" for k in v[1]))
def built(request):
    name, kwargs = request.param
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=len(CLASSES), **kwargs).eval()
    return model, model.input_contract.example_input(2)


def test_forward_is_head_of_features(built):
    model, x = built
    with torch.no_grad():
        logits = model(x)
        from_features = model.forward_head(model.forward_features(x))
    assert logits.shape == (2, len(CLASSES))
    torch.testing.assert_close(from_features, logits, rtol=0, atol=1e-6)


def test_pre_logits_is_one_embedding_per_clip(built):
    model, x = built
    with torch.no_grad():
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert embedding.shape == (2, model.num_features) and embedding.dtype == torch.float32
    if getattr(model, "arch", None) == "k400":  # ILA's text classifier compares normalised embeddings
        torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    else:  # the embedding is what the classifier takes: frame averaging included (TSN's fc is linear)
        torch.testing.assert_close(_classifier_on(model, embedding), logits)


def test_embedding_follows_its_own_clip_only(built):
    model, x = built
    changed = x.clone()
    changed[1] = torch.randn_like(changed[1])
    with torch.no_grad():
        before = model.forward_head(model.forward_features(x), pre_logits=True)
        after = model.forward_head(model.forward_features(changed), pre_logits=True)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-6)
    # relative, far above rounding: untrained tiny models give embeddings of ~1e-6 (S3D) or dominated by
    # the class token (ViTs)
    assert (after[1] - before[1]).abs().max() > 1e-3 * before[1].abs().max() > 0


def test_tsn_embedding_averages_the_pooled_frames():
    torch.manual_seed(0)
    model = models.create_model("tsn_tiny", num_classes=len(CLASSES)).eval()
    x = model.input_contract.example_input(2)
    image_resnet = super(type(model), model)  # timm's ResNet, each frame an image
    with torch.no_grad():
        per_frame = image_resnet.forward_head(image_resnet.forward_features(x.flatten(0, 1)), pre_logits=True)
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(embedding, per_frame.view(2, x.shape[1], -1).mean(1), rtol=0, atol=1e-6)

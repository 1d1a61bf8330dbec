"""ILA is handed its classifier as a module (models/ila.py): the model computes the video embedding and the patch
tokens, the classifier the logits; no string switch in the model decides which classifier it has."""
from __future__ import annotations

import torch
from torch import nn

from models import create_model, from_checkpoint
from models.ila import ILA, LinearClassifier, TextClassifier
from models.vit_video import CLIP_VIT_TINY

CLASSES = ["abseiling", "air drumming", "archery", "arm wrestling", "baking cookies"]


class Prototypes(nn.Module):
    """A stand-in classifier: scaled cosine similarity to one learnt prototype per class."""

    per_class_params, trainable = True, True

    def __init__(self, dim: int, num_classes: int = 3):
        super().__init__()
        self.num_classes, self.class_names = num_classes, None
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim))
        self.seen_patches = None

    def forward(self, video, patches, pre_logits=False):
        self.seen_patches = patches.shape
        return video if pre_logits else 10 * video @ nn.functional.normalize(self.prototypes, dim=-1).t()

    def take_clip_weights(self, state_dict):
        return state_dict


def test_ila_classifies_with_the_module_it_is_handed():
    torch.manual_seed(0)
    model = ILA(Prototypes, num_frames=4, img_size=32, patch_size=8, proj_dim=16, align_hidden=16,
                **CLIP_VIT_TINY).eval()
    assert isinstance(model.head, Prototypes) and model.num_classes == 3 and model.head_names == ("head.",)
    x = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        video = model.forward_head(tokens, pre_logits=True)
        expected = 10 * video @ nn.functional.normalize(model.head.prototypes, dim=-1).t()
        torch.testing.assert_close(model(x), expected)
    assert model.head.seen_patches == (2, 4, 16, 32)  # the last block's patch tokens, class token left out
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "head.prototypes" in trainable and "blocks.0.attn.qkv.weight" not in trainable


def test_the_builders_arch_picks_the_classifier_and_the_interactive_opening():
    ssv2 = create_model("ila_tiny", num_classes=5)
    k400 = create_model("ila_tiny", num_classes=5, arch="k400", class_names=CLASSES)
    assert type(ssv2.head) is LinearClassifier and type(k400.head) is TextClassifier
    assert ssv2.blocks[0].align.interact[0][0].groups == 1 and k400.blocks[0].align.interact[0][0].groups > 1
    assert (ssv2.head_names, k400.head_names) == (("head.",), ())  # the text classifier has no per-class weights
    trained = [n for n, p in k400.named_parameters() if p.requires_grad]
    assert trained and not any(n.startswith("head.") for n in trained)  # the repo leaves the text side frozen
    assert k400.class_names == CLASSES and ssv2.class_names is None


def test_a_toolkit_checkpoint_with_the_text_classifier_at_the_top_level_still_loads(tmp_path):
    """Toolkit k400 ILA checkpoints written before the classifier was a module name its weights `text.*`,
    `prompt*` and `logit_scale`: they load under `head.` and give the same logits."""
    classes = ["a", "b", "c"]
    torch.manual_seed(0)
    model = create_model("ila_tiny", num_classes=3, arch="k400", class_names=classes).eval()
    old_names = {(k[len("head."):] if k.startswith("head.") else k): v for k, v in model.state_dict().items()}
    assert "text.token_embedding.weight" in old_names and "logit_scale" in old_names
    path = tmp_path / "last.pt"
    torch.save({"model_name": "ila_tiny", "num_classes": 3, "classes": classes, "config": {},
                "model_args": {}, "contract": model.input_contract.to_dict(), "model": old_names, "ema": None}, path)
    loaded = from_checkpoint(str(path), arch="k400", class_names=classes).eval()
    x = torch.randn(model.input_contract.input_shape())
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

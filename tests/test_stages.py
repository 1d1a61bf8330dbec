"""frozen_stages reads the model's group_matcher, the one description of its stages that layer_decay reads too.

For each CNN family and every n, frozen_stages=n freezes exactly the parameters, BatchNorms and dropouts that
the families' own stage lists froze before the matcher replaced them (written out below as those lists were),
and on a Swin (SIFAR) the stem and stages mmaction's Swin freezes.
"""
from __future__ import annotations

import pytest
from timm.layers import DropPath
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models import create_model
from models.tuning import freeze_stages

# the former `stage_modules()` of each family: the stem, then each stage, as module names
_RES_STAGES = [["layer1"], ["layer2"], ["layer3"], ["layer4"]]
OLD_STAGES = {
    "i3d_tiny": [["stem"], *_RES_STAGES],
    "r2plus1d_tiny": [["stem"], *_RES_STAGES],
    "tsm_tiny": [["conv1", "bn1"], *_RES_STAGES],
    # mmaction: each stage with the lateral that reads its output; the one after the stems stays trainable
    "slowfast_tiny": [["slow_stem", "fast_stem"], ["slow_layers.0", "fast_layers.0", "fusions.1"],
                      ["slow_layers.1", "fast_layers.1", "fusions.2"], ["slow_layers.2", "fast_layers.2", "fusions.3"],
                      ["slow_layers.3", "fast_layers.3"]],
    "x3d_tiny": [["stem"], ["stages.0"], ["stages.1"], ["stages.2"], ["stages.3"]],
    "s3d_tiny": [[f"features.{i}" for i in range(5)], ["features.5", "features.6"],
                 [f"features.{i}" for i in range(7, 13)], ["features.13", "features.14", "features.15"]],
}
_MODE_DEPENDENT = (_BatchNorm, nn.Dropout, DropPath)  # the modules whose training flag changes what they compute


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _frozen(model: nn.Module) -> tuple[set[str], set[str]]:
    """Parameters without gradient, and mode-dependent modules put in eval mode (that they stay so under
    model.train() is test_models_tuning's)."""
    params = {n for n, p in model.named_parameters() if not p.requires_grad}
    return params, {n for n, m in model.named_modules() if isinstance(m, _MODE_DEPENDENT) and not m.training}


@pytest.mark.parametrize("name", sorted(OLD_STAGES))
def test_frozen_stages_freeze_what_the_old_stage_lists_froze(name):
    old = OLD_STAGES[name]
    for n in range(len(old)):
        model = create_model(name, num_classes=5, **({} if name == "s3d_tiny" else {"drop_path_rate": 0.1})).train()
        prefixes = [p for stage in old[:n + 1] for p in stage]
        freeze_stages(model, n)
        params, modules = _frozen(model)
        assert params == {p for p, _ in model.named_parameters() if _under(p, prefixes)}, (name, n)
        expected = {m for m, module in model.named_modules()
                    if isinstance(module, _MODE_DEPENDENT) and _under(m, prefixes)}
        assert expected and modules == expected, (name, n)
    with pytest.raises(ValueError, match=f"a stem and {len(old) - 1} stages"):
        freeze_stages(create_model(name, num_classes=5), len(old))


def test_frozen_stages_of_a_swin_are_mmaction_swins():
    """SIFAR's Swin: 0 the patch embedding (and the frame embedding added to it), n also the first n stages."""
    model = create_model("sifar_tiny", num_classes=5)
    freeze_stages(model, 1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    stem_and_first = ("patch_embed", "frame_pos_embed", "layers.0")
    assert frozen == {n for n, _ in model.named_parameters() if _under(n, stem_and_first)}
    assert "frame_pos_embed" in frozen

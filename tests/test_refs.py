"""The authors' released checkpoints reproduce the authors' logits (fixtures in ../shared/refs, see its README).

For each case: the checkpoint file laid out exactly as the authors' code saves it is written to disk,
`models.from_checkpoint` recognises and builds it, and its logits on the case's clip match the logits the
authors' own code computes, within the case's tolerance. The same file given as `pretrained=` to the
model named in `TOOLKIT_VARIANT` (the case's authors' settings as this toolkit's arguments) must give the
same logits, and a model of another variant must refuse it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import models
from models.checkpoints import CheckpointError

REFS = Path(__file__).resolve().parents[2] / "shared" / "refs"
if not (REFS / "materialize.py").is_file():
    if os.environ.get("CI"):  # CI must run them: a missing ../shared is a broken setup, not a reason to pass
        raise RuntimeError(f"golden-logit fixtures not found at {REFS}")
    pytest.skip(f"golden-logit fixtures not found at {REFS}", allow_module_level=True)
sys.path.insert(0, str(REFS))
import materialize  # noqa: E402

CASES = sorted(p.stem for p in (REFS / "cases").glob("*.json"))

# case -> (registered model, arguments) a user would write to build the authors' variant by hand
TOOLKIT_VARIANT = {
    "ila_vitb16_f8_ssv2": ("ila_vit_base_patch16", {"arch": "ssv2"}),
    "ila_vitb16_f8_k400": ("ila_vit_base_patch16", {"arch": "k400"}),
    "sts_ircsn50_f32": ("ircsn_50", {"sts": True, "bn_eps": 1e-3, "temporal_strides": 1}),
    "sts_slowonly50_f8": ("slowonly_50", {"sts": True}),
    "sts_slowfast50_4x16_f32": ("slowfast_50_4x16", {"sts": True, "lateral_norm": False, "feature_order": "fast_slow"}),
    "sts_r2plus1d34_f8": ("r2plus1d_34", {"sts": True, "bn_eps": 1e-3, "temporal_strides": 1, "stem_pool": True,
                                          "factorize_all": True}),
    "ibm_tam_r50_nots": ("tam_resnet50", {}),
    "ibm_i3d_r50_nots": ("i3d_resnet50", {"temporal_stride": False}),
    "aim_vitb16_f8_k400": ("aim_vit_base_patch16", {}),
    "sifar_b14_224_3x3_pe_f8": ("sifar_base_patch4_window14_224_3x3", {"hpe_to_token": True}),
    "sts_x3d_s_f13": ("x3d_s", {"sts": True}),
    "ibm_tsn_r50_nots": ("tsn_resnet50", {}),
}


def canonical_to_contract(clip: torch.Tensor, contract: models.InputContract) -> torch.Tensor:
    """(N, T, C, H, W) -> the model's layout: a pure permute, no resizing or normalisation."""
    return clip.permute(0, 2, 1, 3, 4).contiguous() if contract.layout == "NCTHW" else clip


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def materialized(case, tmp_path_factory):
    """(spec, path of the authors' file); module-scoped per case, so each file is written once."""
    spec = materialize.load_spec(str(REFS / "cases" / f"{case}.json"))
    path = tmp_path_factory.mktemp(case) / spec["container"]["file_name"]
    torch.save(materialize.build_checkpoint(spec), path)
    yield spec, str(path)
    path.unlink()


def caller_args(spec: dict) -> dict:
    """What a user states because the file cannot: the clip length, and class names for text classifiers."""
    args = {"num_frames": spec["input"]["shape"][1]}
    text = spec["input"].get("text")
    if text:
        args["class_names"] = text["class_names"]
    return args


def max_logit_error(model: torch.nn.Module, spec: dict) -> float:
    model.eval()
    x = canonical_to_contract(materialize.build_input(spec), model.input_contract)
    with torch.no_grad():
        out = model(x)
    expected = torch.tensor(spec["logits"]).view(spec["logits_shape"])
    assert out.shape == expected.shape, f"logits {tuple(out.shape)}, expected {tuple(expected.shape)}"
    return (out.float() - expected).abs().max().item()


def test_from_checkpoint_reproduces_authors_logits(case, materialized):
    spec, path = materialized
    model = models.from_checkpoint(path, **caller_args(spec))
    err = max_logit_error(model, spec)
    assert err <= spec["tolerance"]["max_abs_diff"], f"{case}: max |logits - authors'| = {err:.3g}"


def test_pretrained_file_into_the_named_variant(case, materialized):
    if case not in TOOLKIT_VARIANT:
        pytest.fail(f"{case}: no toolkit variant listed in TOOLKIT_VARIANT")
    spec, path = materialized
    name, args = TOOLKIT_VARIANT[case]
    model = models.create_model(name, num_classes=spec["logits_shape"][-1], pretrained=path,
                                **dict(caller_args(spec), **args))
    err = max_logit_error(model, spec)
    assert err <= spec["tolerance"]["max_abs_diff"], f"{case}: max |logits - authors'| = {err:.3g}"


# case -> a variant of another kind the file must not load into: another size, STS or not, another head order,
# temporal pooling or stride where the released file has none (differences no tensor shape shows)
OTHER_VARIANT = {
    "ila_vitb16_f8_ssv2": ("ila_vit_base_patch32", {"arch": "ssv2"}),
    "ila_vitb16_f8_k400": ("ila_vit_base_patch32", {"arch": "k400"}),
    "sts_ircsn50_f32": ("ircsn_50", {"sts": False, "bn_eps": 1e-3, "temporal_strides": 1}),
    "sts_slowonly50_f8": ("slowonly_50", {"sts": False}),
    "sts_slowfast50_4x16_f32": ("slowfast_50_4x16", {"sts": True, "lateral_norm": False, "feature_order": "slow_fast"}),
    "sts_r2plus1d34_f8": ("r2plus1d_34", {"sts": False, "bn_eps": 1e-3, "temporal_strides": 1, "stem_pool": True,
                                          "factorize_all": True}),
    "ibm_tam_r50_nots": ("tam_resnet50", {"temporal_pool": "max"}),
    "ibm_i3d_r50_nots": ("i3d_resnet50", {"temporal_stride": True}),
    "aim_vitb16_f8_k400": ("aim_vit_base_patch32", {}),
    "sifar_b14_224_3x3_pe_f8": ("sifar_base_patch4_window14_224_3x3", {"hpe_to_token": False}),
    "sts_x3d_s_f13": ("x3d_s", {"sts": False}),
    "ibm_tsn_r50_nots": ("tsn_resnet50", {"temporal_pool": "max"}),
}


def test_a_model_of_another_variant_refuses_the_file(case, materialized):
    assert case in OTHER_VARIANT, f"{case}: no other variant listed in OTHER_VARIANT"
    spec, path = materialized
    name, args = OTHER_VARIANT[case]
    with pytest.raises(CheckpointError):
        models.create_model(name, num_classes=spec["logits_shape"][-1], pretrained=path,
                            **dict(caller_args(spec), **args))

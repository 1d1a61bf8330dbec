"""Training-time switches (models/tuning.py): activation checkpointing, drop-path, frozen stages and
BatchNorm modes, on the tiny variants of every family."""
import copy

import pytest
import torch
from timm.layers import DropPath
from torch.nn.modules.batchnorm import _BatchNorm

from bench.memory import TensorMemory
from models import create_model
from models.tuning import drop_path_rates, freeze_bn, freeze_stages, set_grad_checkpointing, set_norm_eval
from models.tuning import set_partial_bn, stage_names

# one variant per implementation (the TSN/TSM/TAM class, ResNet3d, SlowFast, X3D, S3D): the CPU is slow and shared
CNNS = ["tsm_tiny", "i3d_tiny", "slowfast_tiny", "x3d_tiny", "s3d_tiny"]
TRANSFORMERS = ["sifar_tiny", "aim_tiny", "ila_tiny"]


def tiny(name, **kwargs):
    """`name` at 5 classes; a (name, arguments) pair builds that variant."""
    if isinstance(name, tuple):
        name, kwargs = name[0], dict(name[1], **kwargs)
    torch.manual_seed(0)
    return create_model(name, num_classes=5, **kwargs)


def clips(model, batch=2, seed=1):
    """Small clips of the model's layout (32 px: every tiny network still has > 1 value per BN channel)."""
    contract = model.input_contract.replace(crop_size=32)
    return torch.randn(contract.input_shape(batch), generator=torch.Generator().manual_seed(seed))


def randomize_norms_(model):
    """Non-trivial affines and statistics (X3D zero-inits its last BN, which would hide a residual branch)."""
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
            m.running_var.data = torch.rand(m.running_var.shape, generator=gen) + 0.5


def norm_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running" in n or "num_batches" in n}


def sgd_step(model, x):
    """One training step over ALL parameters, weight decay included: a parameter only stays put without a gradient."""
    model.train()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1, weight_decay=0.1)
    model(x).logsumexp(1).sum().backward()
    optimizer.step()
    return {n: not torch.equal(p, b) for (n, p), b in zip(model.named_parameters(), before)}


# ------------------------------------------------------------------------------ activation checkpointing


# + IBM's temporal pools between the stages, and (2+1)D blocks (a BatchNorm inside each factorised conv)
@pytest.mark.parametrize("name", CNNS + TRANSFORMERS + [("tsn_tiny", {"temporal_pool": "max"}), "r2plus1d_tiny"],
                         ids=lambda n: n if isinstance(n, str) else f"{n[0]}-pools")
def test_grad_checkpointing_same_step_less_kept(name):
    """Same logits, gradients and BatchNorm statistics with and without; less memory alive after the forward."""
    plain = tiny(name).train()
    checkpointed = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed)
    x = clips(plain)
    kept = []
    for model in (plain, checkpointed):
        torch.manual_seed(3)  # dropout / drop-path / ILA's jitter draw the same in both
        with TensorMemory() as memory:
            logits = model(x)
            kept.append(memory.current)
            logits.logsumexp(1).sum().backward()
    assert kept[1] < kept[0]
    grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
    assert grads
    for n, p in checkpointed.named_parameters():
        torch.testing.assert_close(p.grad, grads.get(n), rtol=1e-6, atol=1e-9, msg=n)
    stats = norm_stats(plain)
    for n, b in norm_stats(checkpointed).items():  # updated once, not once more in the recomputation
        torch.testing.assert_close(b, stats[n], rtol=1e-6, atol=1e-9, msg=n)


def test_grad_checkpointing_lowers_peak_memory():
    """A narrow R(2+1)D-18: the step's peak falls by a fifth or more (30% measured)."""
    peaks = []
    for enable in (False, True):
        model = tiny("r2plus1d_18", width=8, widths=(8, 16, 32, 64)).train()
        set_grad_checkpointing(model, enable)
        with TensorMemory() as memory:
            model(torch.randn(2, 3, 8, 64, 64)).sum().backward()
        peaks.append(memory.peak)
    assert peaks[1] < 0.8 * peaks[0]


def test_grad_checkpointing_under_torch_compile():
    """The trainer's `compile`: the checkpointed step still equals the plain eager one, statistics included."""
    plain = tiny("r3d_tiny", drop_rate=0.0).train()
    checkpointed = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed)
    x = clips(plain)
    torch.compile(checkpointed, backend="aot_eager")(x).sum().backward()
    plain(x).sum().backward()
    for (n, a), b in zip(checkpointed.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9, msg=n)
    for (n, a), b in zip(checkpointed.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=n)


def test_grad_checkpointing_can_be_turned_off():
    kept = []
    for switches in ((), (True, False), (True,)):
        model = tiny("r3d_tiny").train()
        for enable in switches:
            set_grad_checkpointing(model, enable)
        with TensorMemory() as memory:
            logits = model(clips(model))
        kept.append(memory.current)
        del logits
    assert kept[0] == kept[1] > kept[2]


# ------------------------------------------------------------------------------------------ drop-path


@pytest.mark.parametrize("name", ["i3d_tiny", "r3d_tiny", "slowfast_tiny", "x3d_tiny"])  # Bottleneck, BasicBlock
def test_drop_path_drops_residual_branches_in_training_only(name):
    plain, dropping = tiny(name), tiny(name, drop_path_rate=0.5)
    assert not any(isinstance(m, DropPath) for m in plain.modules())  # nothing changes by default
    rates = [m.drop_prob for m in dropping.modules() if isinstance(m, DropPath)]
    pathways = 2 if name == "slowfast_tiny" else 1
    # one block per stage in the tiny variants, the first block of a pathway at rate 0 (no module)
    assert rates == pytest.approx(drop_path_rates(0.5, 4)[1:] * pathways)
    randomize_norms_(plain)
    dropping.load_state_dict(plain.state_dict())  # same keys: DropPath has no parameters
    x = clips(plain, batch=4)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), dropping.eval()(x))
        # features, not logits: the head's dropout would make any two training forwards differ
        features = [m.train().forward_features(x).flatten(1) for m in (plain, dropping)]
    assert ((features[0] - features[1]).abs().amax(1) > 1e-6).any()


def test_drop_path_rates_rise_linearly():
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.3, 1) == [0.0]


def test_drop_path_builds_on_the_meta_device():
    with torch.device("meta"):
        model = create_model("x3d_xs", drop_path_rate=0.2)
    assert max(m.drop_prob for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.2)


# ------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("name", CNNS)
def test_freeze_stages_stem_and_first_stage(name):
    model = tiny(name)
    randomize_norms_(model)
    named = {n for group in stage_names(model)[:2] for n in group}
    inside = lambda n: any(n == s or n.startswith(s + ".") for s in named)  # noqa: E731
    frozen = {id(p) for n, p in model.named_parameters() if inside(n)}
    frozen_norms = {id(m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and inside(n)}
    assert frozen and frozen_norms
    freeze_stages(model, 1)
    stats = norm_stats(model)
    model.train()  # the trainer's call after freezing must not wake the frozen norms
    changed = sgd_step(model, clips(model))
    for (n, p), moved in zip(model.named_parameters(), changed.values()):
        assert moved != (id(p) in frozen), n
    for n, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            same = torch.equal(m.running_mean, stats[f"{n}.running_mean"])
            assert same == (id(m) in frozen_norms), n


def test_freeze_stages_counts_like_mmaction():
    model = tiny("i3d_tiny")
    freeze_stages(model, -1)
    assert all(p.requires_grad for p in model.parameters())
    freeze_stages(model, 0)
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert all(p.requires_grad for p in model.layer1.parameters())
    freeze_stages(model, 4)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="a stem and 4 stages"):
        freeze_stages(tiny("i3d_tiny"), 5)


def test_freeze_stages_slowfast_takes_the_stage_laterals():
    model = tiny("slowfast_tiny")
    freeze_stages(model, 1)
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert "fusions.0" in trainable and "fusions.1" not in trainable  # mmaction: conv1_lateral stays trainable
    assert "slow_layers.1" in trainable and "fast_layers.0" not in trainable


def test_freeze_stages_refuses_models_without_stages():
    with pytest.raises(ValueError, match="no stages to freeze"):
        freeze_stages(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


def test_frozen_stages_survive_copy_and_checkpointing():
    """An EMA copy (deepcopy) keeps frozen norms frozen, and a checkpointed step leaves them alone too."""
    model = tiny("r2plus1d_tiny")
    freeze_stages(model, 2)
    model = copy.deepcopy(model)
    set_grad_checkpointing(model)
    stats = norm_stats(model)
    sgd_step(model, clips(model))
    for n, b in norm_stats(model).items():
        assert torch.equal(b, stats[n]) == n.startswith(("stem.", "layer1.", "layer2.")), n


@pytest.mark.parametrize("name", CNNS)
def test_norm_eval_freezes_statistics_not_affines(name):
    model = tiny(name)
    randomize_norms_(model)
    set_norm_eval(model)
    stats = norm_stats(model)
    changed = sgd_step(model, clips(model))
    assert all(torch.equal(b, stats[n]) for n, b in norm_stats(model).items())
    norms = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    assert all(changed[f"{n}.weight"] for n in norms)
    with torch.no_grad():  # the train-mode features are the eval-mode ones: the norms use running statistics
        x = clips(model)
        torch.testing.assert_close(model.train().forward_features(x), model.eval().forward_features(x))


@pytest.mark.parametrize("name", ["tsn_tiny", "i3d_tiny"])
def test_partial_bn_keeps_only_the_first_norm_training(name):
    model = tiny(name)
    randomize_norms_(model)
    set_partial_bn(model)
    stats = norm_stats(model)
    changed = sgd_step(model, clips(model))
    norms = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    first, rest = norms[0], norms[1:]
    assert not torch.equal(model.get_submodule(first).running_mean, stats[f"{first}.running_mean"])
    assert changed[f"{first}.weight"] and changed[f"{first}.bias"]
    for n in rest:
        assert torch.equal(model.get_submodule(n).running_var, stats[f"{n}.running_var"]), n
        assert not changed[f"{n}.weight"] and not changed[f"{n}.bias"], n
    assert any(v for k, v in changed.items() if k.rsplit(".", 1)[0] not in norms)  # convs still train


@pytest.mark.parametrize("name", ["tam_tiny", "x3d_tiny"])
def test_frozen_bn_is_a_fixed_affine(name):
    model = tiny(name)
    randomize_norms_(model)
    freeze_bn(model)
    stats = norm_stats(model)
    changed = sgd_step(model, clips(model))
    assert all(torch.equal(b, stats[n]) for n, b in norm_stats(model).items())
    norms = {n for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    assert all(moved == (k.rsplit(".", 1)[0] not in norms) for k, moved in changed.items())


def test_norm_modes_refuse_models_without_batch_norm():
    with pytest.raises(ValueError, match="no BatchNorm"):
        set_norm_eval(tiny("sifar_tiny"))

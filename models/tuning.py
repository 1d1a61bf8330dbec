"""Training-time switches of the models, as the papers' and their peers' recipes use them (mmaction2,
PySlowFast, TSN). The trainer calls them on a built model, one per config key, after SyncBatchNorm
conversion and before wrapping the model (DDP, torch.compile) and building the optimizer:

    config key           call                              what it does
    grad_checkpointing   set_grad_checkpointing(model)     recompute each residual block's (transformer
                                                           block's) activations in backward instead of
                                                           keeping them: less memory, ~1/3 more compute
    drop_path            (a builder argument: model_args   stochastic depth on the residual branches,
                         drop_path_rate=0.1)               rising linearly from 0 (first block) to the rate
    frozen_stages        freeze_stages(model, n)           mmaction's frozen_stages: -1 nothing, 0 the stem,
                                                           n the stem and the first n stages
    norm_eval            set_norm_eval(model)              mmaction's norm_eval (STS fine-tuning): every
                                                           BatchNorm normalises with, and keeps, its running
                                                           statistics; its affine still trains
    partial_bn           set_partial_bn(model)             TSN's partial BN: every BatchNorm but the first
                                                           as norm_eval, its affine frozen too
    frozen_bn            freeze_bn(model)                  every BatchNorm a fixed affine map (statistics
                                                           and affine frozen), as detectron's FrozenBN

Frozen modules stay in eval mode whatever `model.train()` later says: a forward pre-hook turns their
training flag off before each call (`keep_eval`), so the trainer need not re-apply anything after
`model.train()`, and EMA copies and pickles keep the behaviour. BatchNorms are frozen in place rather
than swapped for timm's FrozenBatchNorm2d: that one is 2-D only, and keeping the modules keeps the
state-dict keys and module types that checkpoints and `check_same_architecture` rely on.

Every family describes its stages once, with timm's `group_matcher(coarse)`: regexes over parameter (and
module) names for the stem and the stages (`coarse`) or blocks. timm's layer-wise lr decay reads the fine
groups; `frozen_stages` freezes the first coarse groups of the 'stem' and 'blocks' entries (`stage_names`).
The families' `set_grad_checkpointing` (timm's for the Swin and ViT ones) run their blocks through
`checkpoint_seq` here, whose recomputation leaves BatchNorm running statistics alone.
"""
from __future__ import annotations

import contextlib
import re
from functools import partial
from itertools import chain
from typing import Iterable

import torch
from timm.models._manipulate import group_with_matcher  # the grouping timm's param_groups_layer_decay uses
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


# ------------------------------------------------------------------------------ activation checkpointing


@contextlib.contextmanager
def _running_stats_kept(module: nn.Module):
    """Undo what a forward does to the BatchNorm running statistics inside `module`."""
    buffers = [b for m in module.modules() if isinstance(m, _BatchNorm)
               for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                buffer.copy_(value)


def _recompute_contexts(module: nn.Module):
    return contextlib.nullcontext(), _running_stats_kept(module)


def checkpoint_module(module: nn.Module, *args):
    """`module(*args)` keeping only its inputs for backward, where its activations are recomputed.

    A plain torch.utils.checkpoint updates the BatchNorm running statistics twice per step (forward and
    recomputation, momentum 0.1 acting as 0.19); here the recomputation restores them, so a checkpointed
    step leaves them as an ordinary step does. Random ops (dropout, drop-path) replay the same draws.
    """
    if torch.compiler.is_compiling():  # torch.compile's recomputation replays no buffer update: nothing to undo
        return checkpoint(module, *args, use_reentrant=False)
    return checkpoint(module, *args, use_reentrant=False, context_fn=partial(_recompute_contexts, module))


def checkpoint_seq(blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run `blocks` one after the other, each checkpointed on its own (`checkpoint_module`)."""
    for block in blocks:
        x = checkpoint_module(block, x)
    return x


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Config key `grad_checkpointing`: the model's own (timm-style) switch."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(f"{type(model).__name__} has no activation checkpointing (grad_checkpointing)")
    model.set_grad_checkpointing(enable)


# ------------------------------------------------------------------------------------------ drop-path


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 at the first to `rate` at the last (timm's rule).
    Plain floats, so models build on the meta device too."""
    return [rate * i / max(1, num_blocks - 1) for i in range(num_blocks)]


# ------------------------------------------------------------------------------------------- freezing


def _to_eval(module: nn.Module, args) -> None:
    module.training = False


def keep_eval(module: nn.Module) -> None:
    """Run `module` itself (not its children) in eval mode from now on, whatever `train()` sets."""
    if _to_eval not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_to_eval)
    module.training = False


def freeze_(module: nn.Module) -> None:
    """No gradient to `module`'s parameters, and all of it in eval mode for good (frozen statistics, no
    dropout or drop-path: a frozen stage computes as at inference, as mmaction's frozen stages do)."""
    module.requires_grad_(False)
    for m in module.modules():
        keep_eval(m)


STAGE_ENTRIES = ("stem", "blocks")  # the group_matcher entries that name stages (others: in no stage)
# A group_matcher suffix that merges a match into the group before it: the value of timm's MATCH_PREV_GROUP,
# which timm keeps in its private _manipulate module (tests/test_private_imports.py checks that they agree).
MATCH_PREV_GROUP = (99999,)


def _patterns(matcher: dict) -> list[re.Pattern]:
    """Every regex of a timm group_matcher dict (an entry is a regex, or a list of (regex, suffix) pairs)."""
    specs = chain.from_iterable([s[0] for s in spec] if isinstance(spec, (list, tuple)) else [spec]
                                for spec in matcher.values() if spec)
    return [re.compile(spec) for spec in specs]


def stage_names(model: nn.Module) -> list[list[str]]:
    """The model's stages as its `group_matcher(coarse=True)` describes them: the stem, then each group of
    its 'blocks' entry in timm's order, each as the names of the modules and parameters it holds. What only
    another entry (SlowFast's lateral after the stems) or no pattern (the head) matches is in no stage."""
    if not hasattr(model, "group_matcher"):
        raise ValueError(f"{type(model).__name__} has no stages to freeze (frozen_stages needs the model's "
                         "group_matcher)")
    matcher = {k: v for k, v in model.group_matcher(coarse=True).items() if k in STAGE_ENTRIES}
    patterns = _patterns(matcher)
    names = [n for n, _ in model.named_modules() if n] + [n for n, _ in model.named_parameters()]
    staged = [(n, n) for n in names if any(p.match(n) for p in patterns)]
    groups = group_with_matcher(staged, matcher)  # {stage index: names}
    return [groups[i] for i in sorted(groups)]


def freeze_stages(model: nn.Module, num_stages: int) -> None:
    """Config key `frozen_stages`, mmaction's meaning: -1 freezes nothing, 0 the stem, n the stem and
    the first n stages (parameters and statistics, see `freeze_`), as `stage_names` reads them."""
    if num_stages < 0:
        return
    stages = stage_names(model)
    if num_stages >= len(stages):
        raise ValueError(f"frozen_stages={num_stages}: {type(model).__name__} has a stem and "
                         f"{len(stages) - 1} stages")
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    for name in chain.from_iterable(stages[:num_stages + 1]):
        if name in modules:
            freeze_(modules[name])
        else:  # a parameter of a module outside the stage (a ViT's position table)
            params[name].requires_grad_(False)


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorms (any dimension, SyncBatchNorm included), in module order."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers (norm_eval, partial_bn and frozen_bn "
                         "are options of the CNN families)")
    return norms


def set_norm_eval(model: nn.Module) -> None:
    """Config key `norm_eval`: every BatchNorm uses and keeps its running statistics; affines train."""
    for norm in batch_norms(model):
        keep_eval(norm)


def set_partial_bn(model: nn.Module) -> None:
    """Config key `partial_bn` (TSN; mmaction's partial_bn): every BatchNorm but the first frozen, statistics
    and affine; the first one adapts to the new input distribution."""
    for norm in batch_norms(model)[1:]:
        freeze_(norm)


def freeze_bn(model: nn.Module) -> None:
    """Config key `frozen_bn`: every BatchNorm a fixed affine map (statistics and affine frozen)."""
    for norm in batch_norms(model):
        freeze_(norm)

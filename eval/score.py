"""Multi-view inference: softmax scores (or embeddings) of every (video, view) averaged per video, once across all
ranks."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Scores:
    """Mean per video over its scored views (softmax scores, or embeddings for `python -m eval features`), and
    the bookkeeping that proves coverage."""

    scores: torch.Tensor  # (N, C) float32
    counts: torch.Tensor  # (N,) views scored per video
    damaged_views: torch.Tensor  # (N,) views that could not be read (served as placeholders, not scored)
    views: torch.Tensor | None = None  # (N, V, C) each view's values, when asked for

    @property
    def damaged(self) -> list[int]:
        return self.damaged_views.nonzero().flatten().tolist()


@torch.no_grad()
def score_videos(model, loader, num_videos: int, num_classes: int, device: torch.device, amp: str = "bf16",
                 progress: bool = False, keep_views: int = 0) -> Scores:
    """Softmax scores of every readable (video, view) averaged per video (see `average_views`)."""
    model.eval()

    def probabilities(clips: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            logits = model(clips)
        return logits.float().softmax(-1)

    return average_views(probabilities, loader, num_videos, num_classes, device, progress, keep_views)


@torch.no_grad()
def average_views(infer, loader, num_videos: int, dim: int, device: torch.device, progress: bool = False,
                  keep_views: int = 0) -> Scores:
    """`infer(clips)` -> (B, dim) float32 of every readable (video, view), averaged per video, identical on every
    rank. A view the loader could not read arrives with view -1 and is counted as damaged instead of inferred.
    `keep_views`: the number of views per video, to keep each view's values too."""
    per_view = torch.zeros(num_videos, keep_views, dim, device=device) if keep_views else None
    sums = torch.zeros(num_videos, dim, dtype=torch.float64, device=device)
    counts = torch.zeros(num_videos, dtype=torch.float64, device=device)
    damaged = torch.zeros(num_videos, dtype=torch.float64, device=device)
    for batch in tqdm(loader, total=len(loader), desc="eval", unit="batch", disable=not progress, leave=False):
        clips = batch["clips"].to(device, non_blocking=True)
        index = batch["index"].to(device)
        readable = batch["view"].to(device) >= 0
        values = infer(clips).double()
        sums.index_add_(0, index[readable], values[readable])
        counts.index_add_(0, index[readable], torch.ones_like(index[readable], dtype=torch.float64))
        damaged.index_add_(0, index[~readable], torch.ones_like(index[~readable], dtype=torch.float64))
        if per_view is not None:
            view = batch["view"].to(device)
            per_view[index[readable], view[readable]] = values[readable].float()
    reduced = [sums, counts, damaged] + ([per_view] if per_view is not None else [])
    if dist.is_available() and dist.is_initialized():
        for t in reduced:
            dist.all_reduce(t)  # every (video, view) is inferred on one rank only: the sum is a gather
    return Scores((sums / counts.clamp(min=1).unsqueeze(1)).float().cpu(), counts.cpu(), damaged.cpu(),
                  per_view.cpu() if per_view is not None else None)


def check_coverage(result: Scores, views: int) -> list[int]:
    """Every video accounted for exactly `views` times across all ranks, scored or damaged, or a clear error.
    Returns the damaged videos (any view unreadable), which are left out of the accuracy."""
    total = result.counts + result.damaged_views
    wrong = (total != views).nonzero().flatten().tolist()
    if wrong:
        raise RuntimeError(f"{len(wrong)} videos were not scored exactly {views} times "
                           f"(e.g. video {wrong[0]}: {int(total[wrong[0]])}): the loader's sharding is broken")
    nonfinite = (~torch.isfinite(result.scores).all(1)).nonzero().flatten().tolist()
    if nonfinite:
        raise RuntimeError(f"the model gave non-finite scores for {len(nonfinite)} videos (e.g. video "
                           f"{nonfinite[0]}): its weights are damaged or it diverged; no accuracy is reported")
    return result.damaged


def readable_accuracy(result: Scores, labels: torch.Tensor, classes: list[str], views: int) -> tuple[dict, list]:
    """(accuracy report over the readable videos, damaged video indices)."""
    from .metrics import accuracy_report

    damaged = check_coverage(result, views)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[damaged] = False
    return accuracy_report(result.scores[keep], labels[keep], classes), damaged

"""Multi-view inference: softmax scores of every (video, view) summed per video, once across all ranks."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from tqdm import tqdm


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def score_videos(model, loader, num_videos: int, num_classes: int, device: torch.device, amp: str = "bf16",
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (mean softmax per video (N, C), views seen per video (N,)), identical on every rank."""
    model.eval()
    sums = torch.zeros(num_videos, num_classes, dtype=torch.float64, device=device)
    counts = torch.zeros(num_videos, dtype=torch.float64, device=device)
    for batch in tqdm(loader, total=len(loader), desc="eval", unit="batch", disable=not progress, leave=False):
        clips = batch["clips"].to(device, non_blocking=True)
        index = batch["index"].to(device)
        with autocast(device, amp):
            logits = model(clips)
        sums.index_add_(0, index, logits.float().softmax(-1).double())
        counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return (sums / counts.clamp(min=1).unsqueeze(1)).float().cpu(), counts.cpu()


def check_coverage(counts: torch.Tensor, views: int) -> None:
    """Every video scored exactly `views` times across all ranks, or a clear error."""
    wrong = (counts != views).nonzero().flatten().tolist()
    if wrong:
        raise RuntimeError(f"{len(wrong)} videos were not scored exactly {views} times "
                           f"(e.g. video {wrong[0]}: {int(counts[wrong[0]])}): the loader's sharding is broken")

"""The process layout a run's training epochs are dealt for (pipelines.shard_plan.plan_layout: the world size, and
for a split streamed from object storage the ranks per node and the shuffle window), recorded in its checkpoints.
A run resumed on another layout recomputes the epoch's plan for it: one line says so, with the old and new layout
and what that does to the resumed epoch; nothing is said when the layout is the same."""
from __future__ import annotations

import logging

from pipelines.shard_plan import layout_text, plan_layout, resumed_epoch_reads, same_plan_layout

log = logging.getLogger("train")


def run_layout(loader, world: int) -> dict:
    """This run's layout, as its checkpoints record it."""
    return plan_layout(getattr(loader, "plan", None), world)


def check_layout(saved: dict | None, loader, world: int, epoch: int, batches: int, grad_accum: int) -> str | None:
    """Log (and return) the one line a resume on another layout than the checkpoint's (`saved`; None: written before
    checkpoints recorded it) needs; `epoch`: the 0-based epoch resumed, `batches`: the batches each rank had read
    of it."""
    found = layout_change(saved, loader, world, epoch, batches, grad_accum)
    if found is None:
        return None
    level, line = found
    log.log(level, "%s", line)
    return line


def layout_change(saved: dict | None, loader, world: int, epoch: int, batches: int,
                  grad_accum: int) -> tuple[int, str] | None:
    """(log level, line), or None when the layout is the same."""
    plan = getattr(loader, "plan", None)
    current = plan_layout(plan, world)
    now = layout_text(current)
    rest = f"the rest of epoch {epoch + 1} (after batch {batches} of each rank)"
    if saved is None:
        unknown = "the checkpoint does not record the process layout it was written on (an older version)"
        if not batches:  # a whole epoch ahead: dealt for this layout, whatever the old one was
            return logging.INFO, f"{unknown}: the run resumes at the start of epoch {epoch + 1}, dealt for {now}"
        return logging.WARNING, (f"{unknown}: if it was not this run's {now}, {rest} is dealt for this layout, and "
                                 f"some of its videos are trained on twice and others not at all; later epochs are "
                                 f"dealt whole")
    if same_plan_layout(saved, current):
        return None
    change = f"resumed on another process layout: the checkpoint was written on {layout_text(saved)}, this run is {now}"
    if not batches:
        nodes_changed = current["shuffle_window"] is not None and any(
            saved.get(k) != current[k] for k in ("world_size", "ranks_per_node"))  # the window keeps the shares
        cache = "; each node reads another share of the shards, which its cache downloads" if nodes_changed else ""
        return logging.WARNING, (f"{change}; it resumes at the start of epoch {epoch + 1}, so every epoch is dealt "
                                 f"whole for the new layout (no video trained on twice or left out){cache}")
    reads = _reads(saved, plan, epoch, batches, grad_accum)
    return logging.WARNING, f"{change}: {rest} is dealt for the new layout, so {reads}; later epochs are dealt whole"


def _reads(saved: dict, plan, epoch: int, batches: int, grad_accum: int) -> str:
    unknown = "some of its samples may be trained on twice and others not at all"
    if plan is None:  # a loader without a video plan (image folders): not counted
        return unknown
    try:
        twice, skipped = resumed_epoch_reads(saved, plan, epoch, batches, grad_accum)
    except ValueError:
        return unknown
    return f"{twice} of its {plan.num_videos} videos are trained on twice and {skipped} not at all"

"""Node-disjoint training epochs for a store read from object storage: each node reads only its own shards.

`EpochPlan` (sampling.py) shuffles the videos freely and deals every world_size-th to each rank, so every node needs
every shard. `ShardPlan` keeps its arithmetic (the same per-rank count, wrap-around and dropped partial batch) but
shuffles in two levels, as WebDataset, LitData and MosaicML Streaming do:

1. the shards are permuted by the seed; their videos, shard after shard, are padded by wrap-around to
   per_rank x world_size (EpochPlan's padding: the first videos repeat) and cut into one contiguous span per node
   (node = rank // local_world_size). A node therefore reads its own shards, plus at most the one shard its span
   shares with the next node's (and the wrapped shards), and the same ones every epoch: a node cache that holds its
   share serves the later epochs without a download (which node computes a sample does not matter to the gradient,
   which all ranks average);
2. every epoch, a node's shards are permuted by (seed, epoch, node), the videos of every `window` consecutive shards
   are shuffled together by (seed, epoch, node, window), and dealt to the node's ranks, every local_world_size-th
   from its local rank.

Every rank reads per_rank videos and runs per_rank // batch_size full batches, exactly as with EpochPlan, so
per_rank x world_size - num_videos videos are read twice in an epoch and per_rank % batch_size per rank are dropped.
Like EpochPlan this is a pure function of (videos' shards, seed, epoch, rank, layout): any DALI worker computes the
same items, and a mid-epoch checkpoint's batch count reproduces the remaining items exactly. The layout (nodes x
ranks per node, the window; `plan_layout`) is part of the function: training checkpoints record it, and a run resumed
on another layout, which recomputes the epoch for it, says in one line how many videos of the resumed epoch are then
read twice or not at all (`resumed_epoch_reads`). docs/object-storage.md compares the shuffle with EpochPlan's.
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from prep.remote_stream import Prefetcher

from .sampling import EpochPlan

log = logging.getLogger("pipelines")
DEFAULT_WINDOW = 4  # shards shuffled together inside a node; the cache holds about two windows per node
WINDOW_ENV = "VIDKIT_SHUFFLE_WINDOW"
MIN_CLASS_MIX = 0.5  # below: a window's batches see at most half the classes a shuffle would give them


def local_world_size(world_size: int) -> int:
    """Ranks per node: torchrun's LOCAL_WORLD_SIZE, else every rank on one node."""
    value = int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or world_size)
    if value < 1 or world_size % value:
        raise ValueError(f"LOCAL_WORLD_SIZE {value} does not divide the world size {world_size}: every node must "
                         "run the same number of ranks")
    return value


def shuffle_window() -> int:
    value = int(os.environ.get(WINDOW_ENV, DEFAULT_WINDOW))
    if value < 1:
        raise ValueError(f"{WINDOW_ENV} must be >= 1 (shards shuffled together), got {value}")
    return value


@dataclass(frozen=True)
class ShardPlan(EpochPlan):
    """Training only. `shard_of[v]` is the shard (an int) holding video v."""

    shard_of: tuple = ()
    local_world_size: int = 1
    window: int = DEFAULT_WINDOW
    _runs: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if not self.training:
            raise ValueError("a shard plan is for training; evaluation reads every view of every video")
        if len(self.shard_of) != self.num_videos:
            raise ValueError(f"shard_of names {len(self.shard_of)} videos, the plan has {self.num_videos}")
        if self.local_world_size < 1 or self.world_size % self.local_world_size:
            raise ValueError(f"{self.local_world_size} ranks per node do not divide the world size {self.world_size}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        shard = np.asarray(self.shard_of, dtype=np.int64)
        order = np.argsort(shard, kind="stable")  # videos grouped by shard, in index order inside a shard
        starts = np.flatnonzero(np.r_[True, shard[order][1:] != shard[order][:-1]]) if len(order) else []
        object.__setattr__(self, "_runs", tuple(order[a:b] for a, b in zip(starts, [*starts[1:], len(order)])))

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def node(self) -> int:
        return self.rank // self.local_world_size

    @property
    def local_rank(self) -> int:
        return self.rank % self.local_world_size

    @property
    def repeated(self) -> int:
        """Videos read twice per epoch (the wrap-around that gives every rank per_rank videos)."""
        return self.per_rank * self.world_size - self.num_videos

    @property
    def dropped(self) -> int:
        """Videos per rank left out of the epoch's last, partial batch."""
        return self.per_rank % self.batch_size

    def node_stream(self, epoch: int, node: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(videos, window number of each) of a node's epoch, in the node's read order (all its ranks together)."""
        node = self.node if node is None else node
        seed = int(self.seed) & 0xFFFFFFFF
        deal = np.random.default_rng([seed, 1]).permutation(len(self._runs))  # shards to nodes: fixed for the run
        flat = np.concatenate([self._runs[s] for s in deal]) if len(deal) else np.zeros(0, np.int64)
        span = self.per_rank * self.local_world_size
        mine = np.resize(flat, self.per_rank * self.world_size)[node * span:(node + 1) * span]
        shard = np.asarray(self.shard_of, dtype=np.int64)[mine]
        starts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]]) if len(mine) else np.zeros(0, np.int64)
        runs = np.split(mine, starts[1:])  # the node's shards (a boundary shard may be partial)
        runs = [runs[i] for i in np.random.default_rng([seed, int(epoch), 2, node]).permutation(len(runs))]
        out, windows = [], []
        for w in range(0, len(runs), self.window):
            block = np.concatenate(runs[w:w + self.window])
            out.append(block[np.random.default_rng([seed, int(epoch), 3, node, w]).permutation(len(block))])
            windows.append(np.full(len(block), w // self.window))
        if not out:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out), np.concatenate(windows)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's video indices for the epoch (length per_rank)."""
        return self.node_stream(epoch)[0][self.local_rank::self.local_world_size]

    def windows(self, epoch: int) -> list[tuple[int, list[int]]]:
        """This rank's read windows: (first position, shards of the node's window) in read order; the node's ranks
        go through the same windows at the same pace."""
        videos, windows = self.node_stream(epoch)
        shard = np.asarray(self.shard_of, dtype=np.int64)
        mine = windows[self.local_rank::self.local_world_size]
        out = []
        for w in np.unique(windows):
            at = np.flatnonzero(mine == w)
            if len(at):
                out.append((int(at[0]) * self.repeats, sorted({int(s) for s in shard[videos[windows == w]]})))
        return out

    def node_shards(self, epoch: int, node: int | None = None) -> set[int]:
        """Every shard a node reads in the epoch."""
        videos, _ = self.node_stream(epoch, node)
        return {int(s) for s in np.asarray(self.shard_of, dtype=np.int64)[videos]}


def layout_line(plan: ShardPlan) -> str:
    return (f"{plan.nodes} node(s) x {plan.local_world_size} rank(s), shuffle window {plan.window} shards, "
            f"{plan.repeated} video(s) read twice and {plan.dropped} per rank dropped per epoch")


def plan_layout(plan: EpochPlan | None, world_size: int) -> dict:
    """The process layout a training epoch's plan is a function of, besides the data and the config (seed, batch
    size, repeats): saved in training checkpoints. A streamed split's ShardPlan depends on all three entries, a local
    store's EpochPlan (or an image loader, `plan` None) on the world size only."""
    if isinstance(plan, ShardPlan):
        return {"world_size": plan.world_size, "ranks_per_node": plan.local_world_size, "shuffle_window": plan.window}
    try:
        per_node = local_world_size(world_size)
    except ValueError:  # a local store does not depend on it: recorded as unknown, never refused here
        per_node = None
    return {"world_size": world_size, "ranks_per_node": per_node, "shuffle_window": None}


def same_plan_layout(saved: dict, current: dict) -> bool:
    """Whether a plan made for `saved` deals the epochs as one made for `current` (plan_layout's dicts)."""
    keys = ("world_size",) if current.get("shuffle_window") is None else ("world_size", "ranks_per_node",
                                                                          "shuffle_window")
    return all(saved.get(k) == current.get(k) for k in keys)


def layout_text(layout: dict) -> str:
    world, per_node = layout.get("world_size"), layout.get("ranks_per_node")
    if layout.get("shuffle_window") is None:
        return f"{world} process(es)"
    return (f"{world // per_node} node(s) x {per_node} rank(s), shuffle window {layout['shuffle_window']} shards"
            if per_node else f"{world} process(es)")


def resumed_epoch_reads(saved: dict, plan: EpochPlan, epoch: int, batches: int, grad_accum: int = 1) -> tuple[int, int]:
    """(videos read twice, videos not read at all) in `epoch` when it ran `batches` batches per rank on the `saved`
    layout and resumes with `plan`'s: every rank skips its first `batches` batches of the new plan, then trains on
    the batches that make whole optimizer steps. Compared with the same epoch uninterrupted on the saved layout
    (which may itself read a video twice: the wrap-around). ValueError when the saved layout cannot deal it."""
    old = _rank_orders(plan, saved, epoch)
    new = _rank_orders(plan, plan_layout(plan, plan.world_size), epoch)
    size = plan.batch_size
    usable, old_usable = (p.num_batches // grad_accum * grad_accum for p in (plan, _plan_for(plan, saved, 0)))
    read = np.concatenate([o[:batches * size] for o in old] + [o[batches * size:usable * size] for o in new])
    whole = np.concatenate([o[:old_usable * size] for o in old])
    counts, base = (np.bincount(v.astype(np.int64), minlength=plan.num_videos) for v in (read, whole))
    return int(((counts >= 2) & (counts > base)).sum()), int(((counts == 0) & (base > 0)).sum())


def _plan_for(plan: EpochPlan, layout: dict, rank: int) -> EpochPlan:
    if not isinstance(layout.get("world_size"), int) or (isinstance(plan, ShardPlan) and not all(
            isinstance(layout.get(k), int) for k in ("ranks_per_node", "shuffle_window"))):
        raise ValueError(f"the saved layout {layout} is not one a plan of this split is dealt for")
    if isinstance(plan, ShardPlan):
        return dataclasses.replace(plan, rank=rank, world_size=int(layout["world_size"]),
                                   local_world_size=int(layout["ranks_per_node"]), window=int(layout["shuffle_window"]))
    return dataclasses.replace(plan, rank=rank, world_size=int(layout["world_size"]))


def _rank_orders(plan: EpochPlan, layout: dict, epoch: int) -> list[np.ndarray]:
    """Every rank's video order for the epoch on `layout` (a node's stream is computed once for its ranks)."""
    first = _plan_for(plan, layout, 0)
    if not isinstance(first, ShardPlan):
        return [_plan_for(plan, layout, r).order(epoch) for r in range(first.world_size)]
    per_node = first.local_world_size
    streams = [first.node_stream(epoch, node)[0] for node in range(first.nodes)]
    return [streams[r // per_node][r % per_node::per_node] for r in range(first.world_size)]


def class_mix(plan: ShardPlan, labels, epoch: int = 0) -> float:
    """How well the node's shuffle windows mix the classes: the mean, over node 0's windows, of the distinct labels
    a window holds divided by those a uniform draw of as many videos from the split would be expected to hold
    (K (1 - (1 - 1/K)^n) for K classes). About 1: shards of mixed classes; far below: shards of one class each."""
    labels = np.asarray(labels)
    classes = len(np.unique(labels))
    videos, windows = plan.node_stream(epoch, node=0)
    ratios = []
    for w in np.unique(windows):
        held = labels[videos[windows == w]]
        expected = classes * (1 - (1 - 1 / classes) ** len(held))
        ratios.append(len(np.unique(held)) / expected)
    return float(np.mean(ratios)) if ratios else 1.0


def _warn_unmixed(plan: ShardPlan, dataset) -> None:
    labels = [r.get("label") for r in dataset.rows]
    if any(label is None for label in labels) or len(set(labels)) < 2:
        return
    mix = class_mix(plan, labels)
    if mix < MIN_CLASS_MIX:
        log.warning("streaming %s: a shuffle window of %d shards holds %.0f%% of the classes a random draw of as "
                    "many videos would (the shards look sorted by class: prep fills them in its list's order): "
                    "raise %s, or prep from a shuffled video list", dataset.gate.url, plan.window, 100 * mix,
                    WINDOW_ENV)


def plan_for(dataset, batch_size: int, training: bool, views: int, rank: int, world_size: int, seed: int,
             repeats: int) -> EpochPlan:
    """The loader's plan: a ShardPlan for training from a streamed s3:// split, else EpochPlan (local stores are
    read exactly as before)."""
    if not (training and getattr(dataset, "gate", None) is not None):
        return EpochPlan(len(dataset), batch_size, training, views, rank, world_size, seed, repeats)
    number = {name: i for i, name in enumerate(sorted({r["shard"] for r in dataset.rows}))}
    plan = ShardPlan(len(dataset), batch_size, True, 1, rank, world_size, seed, repeats,
                     shard_of=tuple(number[r["shard"]] for r in dataset.rows),
                     local_world_size=local_world_size(world_size), window=shuffle_window())
    if rank == 0:
        log.info("streaming %s: %s", dataset.gate.url, layout_line(plan))
        _warn_unmixed(plan, dataset)
    return plan


class ShardFeed:
    """A ShardPlan's windows handed to its dataset's prefetcher (prep/remote_stream.py) as the loader moves on.
    `lookahead`: positions DALI may read ahead of the batch the loader hands out (its queues), whose window must be
    on its way too."""

    def __init__(self, dataset, plan: ShardPlan, lookahead: int):
        self.plan, self.lookahead = plan, lookahead
        self.names = sorted({r["shard"] for r in dataset.rows})
        self.prefetcher = Prefetcher(dataset.gate, ahead=1)
        dataset.gate.prefetcher = self.prefetcher
        self.starts: list[int] = []

    def start(self, epoch: int, position: int = 0) -> None:
        windows = self.plan.windows(epoch)
        self.starts = [w[0] for w in windows]
        self.prefetcher.start([[self.names[s] for s in w[1]] for w in windows], self._window(position),
                              self._window(position + self.lookahead))

    def advance(self, position: int) -> None:
        self.prefetcher.advance(self._window(position), self._window(position + self.lookahead))

    def _window(self, position: int) -> int:
        return max(0, bisect.bisect_right(self.starts, position) - 1)

    def error(self):
        return self.prefetcher.error

    def close(self) -> None:
        self.prefetcher.close()

"""Host resources of one loader: CPU threads and Python workers per rank, and the hardware decoders' settings.

Plain Python (no DALI, no torch), so the decisions are testable on any machine.
"""
from __future__ import annotations

import os

HW_DECODER_LOAD = 0.9  # DALI's default is 0.65; ~0.9 measured better for training (NVIDIA's ResNet-50 example)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a Slurm or container limit shows here, not in
    os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def local_world_size() -> int:
    """Processes sharing this machine: torchrun's LOCAL_WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def host_threads(cores: int | None = None, local_ranks: int | None = None) -> tuple[int, int]:
    """(DALI CPU threads, Python source workers) of one rank: its share of the cores (cores / local ranks).

    The CPU threads decode and augment on the CPU path and feed nvJPEG's host stage on a GPU, so they get the
    whole share; the workers only read stored bytes and draw clip parameters, a quarter is plenty (at most 8).
    The two together may exceed the share by that quarter: the workers mostly wait on the shard files."""
    cores = usable_cores() if cores is None else int(cores)
    local_ranks = local_world_size() if local_ranks is None else int(local_ranks)
    share = max(1, cores // max(1, local_ranks))
    return share, min(8, max(1, share // 4))


def resolve_threads(num_threads: int | None, py_workers: int | None) -> tuple[int, int]:
    """Explicit counts (>= 1) are kept; None or 0 takes `host_threads`' choice for that count."""
    auto_threads, auto_workers = host_threads()
    return (int(num_threads) if num_threads else auto_threads), (int(py_workers) if py_workers else auto_workers)


def largest_frame(rows: list[dict]) -> tuple[int, int]:
    """(width, height) covering every stored frame of the manifest rows (their "size"): the hardware JPEG
    decoder's preallocation hint, so it never reallocates mid-run."""
    sizes = [r["size"] for r in rows if r.get("size")]
    if not sizes:
        return 0, 0
    return max(int(s[0]) for s in sizes), max(int(s[1]) for s in sizes)


def image_decoder_args(device: str, hw_decoder_load: float = HW_DECODER_LOAD,
                       preallocate: tuple[int, int] | None = None) -> dict:
    """Keyword arguments of fn.decoders.image for `device`: the hardware decoder's share of the work and its
    preallocation, on "mixed" only (the CPU decoder has neither)."""
    if not 0.0 <= hw_decoder_load <= 1.0:
        raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load}")
    if device != "mixed":
        return {}
    args = {"hw_decoder_load": float(hw_decoder_load)}
    if preallocate and min(preallocate) > 0:
        args.update(preallocate_width_hint=int(preallocate[0]), preallocate_height_hint=int(preallocate[1]))
    return args

"""Memory of a training step with and without activation checkpointing (models/tuning.py, config key
`grad_checkpointing`): peak bytes of the tensors a forward + backward creates, and the bytes still alive
when the forward ends (what the model keeps for backward), with the time of each step.

CUDA reports them through its allocator (max_memory_allocated above what was allocated before the step).
The CPU allocator keeps no statistics, so there `TensorMemory` counts, under a dispatch mode, the storage of
every tensor an op returns until that storage is freed: activations, saved tensors, gradients. Buffers a
kernel allocates and frees inside itself (convolution workspaces) are not seen, nor are the weights and the
input, which exist before the step. Both runs of a model start from the same weights and see the same clips.

    python -m bench.memory [--models 'i3d_resnet50,x3d_m'] [--batch 2] [--frames 8] [--size 112]
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from models import create_model
from models.tuning import set_grad_checkpointing
from prep.cli import POSITIVE_INT, add_debug_option, run_main

DEFAULT_MODELS = "i3d_resnet50,slowfast_50_4x16,x3d_m,tsm_resnet50,sifar_base_patch4_window7_224"


class TensorMemory(TorchDispatchMode):
    """Bytes of the storages created by ops inside the mode and not yet freed: `current` and `peak`."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self._live: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()  # views and in-place results share an already counted one
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes and key not in self._live:
                self._live.add(key)
                self.current += nbytes
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._freed, key, nbytes)
        return out


def measure_step(model: torch.nn.Module, clips: torch.Tensor) -> dict:
    """One forward + backward of `model` (in train mode) on `clips`: peak and kept bytes, seconds."""
    model.train()
    cuda = clips.device.type == "cuda"
    start = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        logits = model(clips)
        kept = torch.cuda.memory_allocated() - before
        logits.float().logsumexp(1).sum().backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        with TensorMemory() as memory:
            logits = model(clips)
            kept = memory.current
            logits.float().logsumexp(1).sum().backward()
        peak = memory.peak
    return dict(peak=peak, kept=kept, seconds=time.perf_counter() - start)


def compare(name: str, batch: int, frames: int | None, size: int | None, device: torch.device) -> dict:
    torch.manual_seed(0)
    plain = create_model(name, num_frames=frames).to(device)
    contract = plain.input_contract.replace(crop_size=size or plain.input_contract.crop_size)
    clips = contract.example_input(batch, device=device)
    checkpointed = copy.deepcopy(plain)
    set_grad_checkpointing(checkpointed)
    measure_step(copy.deepcopy(plain), clips)  # warm-up: lazy initialisations, kernel selection
    without, with_ = measure_step(plain, clips), measure_step(checkpointed, clips)
    return dict(model=name, input="x".join(map(str, clips.shape[1:])), without=without, with_=with_)


def print_table(rows: list[dict], device: torch.device, batch: int) -> None:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\none training step (forward + backward), batch {batch}, float32, on {where}; MiB")
    print(f"{'model':<34} {'input':<14} {'peak':>9} {'peak ckpt':>10} {'saved':>6} {'kept':>9} {'kept ckpt':>10} "
          f"{'s':>6} {'s ckpt':>7}")
    for r in rows:
        a, b = r["without"], r["with_"]
        print(f"{r['model']:<34} {r['input']:<14} {a['peak'] / 2**20:>9.1f} {b['peak'] / 2**20:>10.1f} "
              f"{1 - b['peak'] / a['peak']:>6.0%} {a['kept'] / 2**20:>9.1f} {b['kept'] / 2**20:>10.1f} "
              f"{a['seconds']:>6.2f} {b['seconds']:>7.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated registered names")
    parser.add_argument("--batch", type=POSITIVE_INT, default=2)
    parser.add_argument("--frames", type=POSITIVE_INT, default=None, help="default: each model's contract")
    parser.add_argument("--size", type=POSITIVE_INT, default=None, help="crop size (default: each model's contract)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for name in args.models.split(","):
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(compare(name.strip(), args.batch, args.frames, args.size, device))
    print_table(rows, device, args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.memory", main))

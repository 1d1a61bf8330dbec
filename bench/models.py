"""Training throughput of the model zoo: clips/s of full training steps on whatever device is present.

A step is forward + backward + SGD update under bf16 autocast, on random clips of the model's input
contract (batch x one view). Convolutional models are put in channels_last(_3d) memory format, which
is what cuDNN / oneDNN are fastest with. Timing starts after warm-up steps (cuDNN autotuning, allocator
growth) and stops after a device synchronisation, so the numbers are those of a steady training loop
without data loading. Defaults: every full-size model on CUDA, the `*_tiny` models on the CPU.

    python -m bench.models [--models 'tsn*,sifar_tiny'] [--batch 8] [--steps 20] [--warmup 3]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from models import create_model, list_models
from models.profile import count_params, describe, has_convs, to_channels_last


def select_models(spec: str | None, device: torch.device) -> list[str]:
    if not spec:
        tiny = list_models("*_tiny")
        return tiny if device.type == "cpu" else [n for n in list_models() if n not in tiny]
    names = []
    for pattern in spec.split(","):
        found = list_models(pattern.strip(), include_aliases=True)
        if not found:
            raise ValueError(f"no model matches {pattern.strip()!r} (`python -m models list` shows all)")
        names += [n for n in found if n not in names]
    return names


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, clips, labels, device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(clips), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bench_one(name: str, device: torch.device, batch: int, steps: int, warmup: int, channels_last: bool) -> dict:
    model = create_model(name, num_classes=400).to(device).train()
    contract = model.input_contract
    clips = contract.example_input(batch, device=device)
    use_cl = channels_last and has_convs(model)
    if use_cl:
        to_channels_last(model)
        if contract.layout == "NCTHW":  # an NTCHW clip is a stack of images: its first conv makes them NHWC
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
    labels = torch.randint(0, 400, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train_step(model, optimizer, clips, labels, device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, clips, labels, device)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return dict(model=name, input="x".join(map(str, contract.input_shape(batch)[1:])), params=count_params(model),
                gflops=describe(name)["gflops"], channels_last=use_cl, clips_per_s=batch * steps / seconds,
                step_ms=1000 * seconds / steps, peak_gib=peak)


def print_table(rows: list[dict], device: torch.device, batch: int) -> None:
    print(f"\ntraining throughput on {device_name(device)}: batch {batch}, bf16 autocast, SGD step included")
    print(f"{'model':<36} {'input':<16} {'params':>8} {'GFLOPs':>8} {'CL':>3} {'clips/s':>9} {'ms/step':>9} "
          f"{'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<36} {r['error']}")
            continue
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] == r["peak_gib"] else "-"  # NaN: not measured on CPU
        print(f"{r['model']:<36} {r['input']:<16} {r['params'] / 1e6:>7.2f}M {r['gflops']:>8.2f} "
              f"{'y' if r['channels_last'] else 'n':>3} {r['clips_per_s']:>9.1f} {r['step_ms']:>9.1f} {peak:>9}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names or fnmatch patterns (default: see above)")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default: 8 on CUDA, 2 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batch = args.batch or (8 if on_cuda else 2)
    steps = args.steps or (20 if on_cuda else 3)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    try:
        names = select_models(args.models, device)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        try:
            rows.append(bench_one(name, device, batch, steps, args.warmup, not args.no_channels_last))
        except torch.OutOfMemoryError:
            rows.append(dict(model=name, error=f"out of memory at batch {batch}"))
        if on_cuda:
            torch.cuda.empty_cache()
    print_table(rows, device, batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

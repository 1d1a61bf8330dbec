"""Training throughput of the model zoo: clips/s of full training steps on whatever device is present.

A step is forward + backward + SGD update under bf16 autocast, on random clips of the model's input
contract (batch x one view). Convolutional models are put in channels_last(_3d) memory format, which
is what cuDNN / oneDNN are fastest with. Timing starts after warm-up steps (cuDNN autotuning, allocator
growth) and stops after a device synchronisation, so the numbers are those of a steady training loop
without data loading. Defaults: every full-size model on CUDA, the `*_tiny` models on the CPU.
Models with a reference implementation of the same architecture in torchvision (`TWINS`: r3d_18, r2plus1d_18,
s3d) are followed by that twin, measured the same way on the same clips, and get its ratio ("vs twin").

    python -m bench.models [--models 'tsn*,sifar_tiny'] [--batch 8] [--steps 20] [--warmup 3] [--twins-only]
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
from prep.cli import COUNT, POSITIVE_INT, add_debug_option, run_main


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


def twinned(names: list[str]) -> list[str]:
    """The models of `names` that have a reference twin (for --twins-only)."""
    kept = [n for n in names if n in TWINS]
    if not kept:
        raise ValueError(f"--twins-only: none of {', '.join(names)} has a twin (models with one: {', '.join(TWINS)})")
    return kept


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, optimizer, clips, labels, device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16):
        loss = F.cross_entropy(model(clips), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _torchvision_video(builder: str):
    def build(num_classes: int) -> nn.Module:
        from torchvision.models import video

        return getattr(video, builder)(weights=None, num_classes=num_classes)
    build.label = f"torchvision {builder}"
    return build


# our models with a reference implementation of the same architecture (same parameter count), benchmarked side by
# side as the baseline: our composable ResNet3d and S3D must not cost speed over the reference
TWINS = {name: _torchvision_video(name) for name in ("r3d_18", "r2plus1d_18", "s3d")}


def bench_one(name: str, device: torch.device, batch: int, steps: int, warmup: int, channels_last: bool) -> dict:
    model = create_model(name, num_classes=400)
    row = measure(model, model.input_contract, device, batch, steps, warmup, channels_last)
    return dict(model=name, gflops=describe(name)["gflops"], **row)


def bench_twin(name: str, device: torch.device, batch: int, steps: int, warmup: int, channels_last: bool) -> dict:
    """The reference twin of `name`, on our model's input contract (same clips, same step)."""
    with torch.device("meta"):
        contract = create_model(name, num_classes=400).input_contract
    build = TWINS[name]
    row = measure(build(400), contract, device, batch, steps, warmup, channels_last)
    return dict(model=getattr(build, "label", f"twin of {name}"), gflops=describe(name)["gflops"], **row)


def measure(model: nn.Module, contract, device: torch.device, batch: int, steps: int, warmup: int,
            channels_last: bool) -> dict:
    model = model.to(device).train()
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
    return dict(input="x".join(map(str, contract.input_shape(batch)[1:])), params=count_params(model),
                channels_last=use_cl, clips_per_s=batch * steps / seconds, step_ms=1000 * seconds / steps,
                peak_gib=peak)


def print_table(rows: list[dict], device: torch.device, batch: int) -> None:
    print(f"\ntraining throughput on {device_name(device)}: batch {batch}, bf16 autocast, SGD step included")
    print(f"{'model':<36} {'input':<16} {'params':>8} {'GFLOPs':>8} {'CL':>3} {'clips/s':>9} {'ms/step':>9} "
          f"{'peak GiB':>9} {'vs twin':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<36} {r['error']}")
            continue
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] == r["peak_gib"] else "-"  # NaN: not measured on CPU
        ratio = f"{r['vs_twin']:.2f}x" if "vs_twin" in r else "-"
        print(f"{r['model']:<36} {r['input']:<16} {r['params'] / 1e6:>7.2f}M {r['gflops']:>8.2f} "
              f"{'y' if r['channels_last'] else 'n':>3} {r['clips_per_s']:>9.1f} {r['step_ms']:>9.1f} {peak:>9} "
              f"{ratio:>8}")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names or fnmatch patterns (default: see above)")
    parser.add_argument("--batch", type=POSITIVE_INT, default=None, help="clips per step (default: 8 on CUDA, 2 on CPU)")
    parser.add_argument("--steps", type=POSITIVE_INT, default=None, help="timed steps (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=COUNT, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--twins-only", action="store_true",
                        help=f"only models with a reference twin ({', '.join(TWINS)}), each beside its twin")
    add_debug_option(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batch = args.batch or (8 if on_cuda else 2)
    steps = args.steps or (20 if on_cuda else 3)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    try:
        names = select_models(args.models, device)
        if args.twins_only:
            names = twinned(names if args.models else list(TWINS))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        rows += bench_with_twin(name, device, batch, steps, args.warmup, not args.no_channels_last)
    print_table(rows, device, batch)
    return 0


def bench_with_twin(name: str, device: torch.device, batch: int, steps: int, warmup: int,
                    channels_last: bool) -> list[dict]:
    """Our row, then its reference twin's (if any) measured right after it; ours gets the ratio "vs_twin"."""
    rows = []
    for bench in (bench_one, bench_twin) if name in TWINS else (bench_one,):
        print(f"benchmarking {name}{' (twin)' if bench is bench_twin else ''} ...", file=sys.stderr, flush=True)
        try:
            rows.append(bench(name, device, batch, steps, warmup, channels_last))
        except torch.OutOfMemoryError:
            rows.append(dict(model=name, error=f"out of memory at batch {batch}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(rows) == 2 and "error" not in rows[0] and "error" not in rows[1]:
        rows[0]["vs_twin"] = rows[0]["clips_per_s"] / rows[1]["clips_per_s"]
    return rows


if __name__ == "__main__":
    sys.exit(run_main("bench.models", main))

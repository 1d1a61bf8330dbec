"""`make gpu-check`: the GPU path's checks and measurements, recorded in docs/benchmarks-gpu.md.

On any machine with an NVIDIA GPU: `make gpu-check` (in the project's .venv), or `python3 -m bench.gpu_check` on a
Python that has the packages of requirements.txt it uses (torch, timm, pyarrow, numpy, nvidia-dali-cuda*, lmdb,
av, simplejpeg, pytest). Steps, in the order they run by default (headline measurements first):
  tests      every gpu-marked test (pytest -m gpu): all must pass, none skipped
  meter      the data-starvation meter (train.meter.StepMeter) over 200 steps each of TSN-R50 and I3D-R50 at 8x224,
             batch 32, bf16, on a synthetic frame store of realistic size (short side 256): clips/s and data-wait %
             (goal < 1 %; the bar is 2 %)
  data       bench.data with its GPU rows: the full training pipeline (nvJPEG) against a bare nvJPEG decode of the
             same frames (goal: ratio >= 0.8)
  meter_vit  the meter on SIFAR-B-14 (a transformer's step time)
  images     bench.images' mixed (nvJPEG) row against its CPU row and torchvision
  nvdec      the --store video path (NVDEC) on the H.264 source bytes and on the --reencode store, clips/s against
             the frame path, and the bytes each store takes
`--step` (repeatable) runs chosen steps; `--time-limit S` starts no step after S seconds (a first contact with a
new machine: `--time-limit 420` leaves the rest for a later run, which the report says). Results go to
CACHE/results/<step>.json (CACHE = data/gpu-check, ignored by git); every run rewrites docs/benchmarks-gpu.md from
all the results there (machine, driver, versions, commands, tables, goals), and `--copy-to DIR` copies the report
and the results there too. Exit status: 0 when every goal of the steps run is met, 1 naming each one missed, 2 at
once with one line when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from prep.cli import NON_NEGATIVE_FLOAT

STEPS = ("tests", "meter", "data", "meter_vit", "images", "nvdec")
REPORT = "docs/benchmarks-gpu.md"
BARE_RATIO_GOAL = 0.8
DATA_WAIT_GOAL, DATA_WAIT_BAR = 1.0, 2.0
METER_MODELS = ("tsn_resnet50", "i3d_resnet50")
METER_VIT_MODELS = ("sifar_base_patch4_window14_224_3x3",)


@dataclass
class Settings:
    """Sizes of every step; the defaults are the GPU check's, tests shrink them to run the same code on a CPU."""

    device_id: int | None = 0
    cache: str = "data/gpu-check"
    workers: int = 0  # 0: every usable core
    batch: int = 32
    frames: int = 8
    meter_models: tuple = METER_MODELS
    meter_vit_models: tuple = METER_VIT_MODELS
    meter_steps: int = 200
    meter_warmup: int = 20
    store_videos: int = 64  # the meter's synthetic store: videos of store_frames frames at store_size (h, w)
    store_frames: int = 64
    store_size: tuple = (256, 340)
    nvdec_codec: str = "h264"  # vp9 stands in on the CPU (DALI's CPU video decoder has no H.264)
    nvdec_videos: int = 16  # Kinetics-like: 10 s of 568x320 at 30 fps
    nvdec_size: tuple = (320, 568)
    nvdec_source_frames: int = 300
    nvdec_batches: int = 30
    nvdec_warmup: int = 5
    classes: int = 4
    bench_args: list = field(default_factory=list)  # extra arguments of bench.data / bench.images

    @property
    def cores(self) -> int:
        from pipelines.resources import usable_cores

        return self.workers or usable_cores()


def goal(name: str, value, target: str, met: bool) -> dict:
    return {"name": name, "value": value, "target": target, "met": bool(met)}


# --------------------------------------------------------------------------------------------- tests


def gpu_test_files(root: str = "tests") -> list[str]:
    """The test modules holding gpu-marked tests (collecting only those keeps unrelated imports out)."""
    return sorted(p for p in glob.glob(os.path.join(root, "test_*.py")) if "mark.gpu" in Path(p).read_text())


def pytest_counts(text: str) -> dict:
    """{"passed": n, "failed": n, ...} from pytest's last summary line."""
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", text)
    return {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found}


def step_tests(s: Settings) -> dict:
    files = gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    if importlib.util.find_spec("pytest") is None:
        note = ("pytest is not installed: pack it with EXTRA=\"lmdb av pytest simplejpeg\" bash "
                "../shared/tools/device-wheels.sh")
        return {"command": " ".join(command), "table": note, "goals": [goal("gpu tests run", 0, "all pass", False)]}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=570)
    counts = pytest_counts(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
    passed, bad = counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0)
    met = proc.returncode == 0 and passed > 0 and not bad and not counts.get("skipped", 0)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
    return {"command": "python3 " + " ".join(command[1:]), "table": tail, "counts": counts,
            "goals": [goal("gpu-marked tests", f"{passed} passed, {bad} failed, {counts.get('skipped', 0)} skipped",
                           "all pass, none skipped", met)]}


# --------------------------------------------------------------------------------------------- bench.data, bench.images


def step_data(s: Settings) -> dict:
    from bench import data as bench_data

    argv = ["--batch-size", str(s.batch), "--workers", str(s.cores), "--cache", os.path.join(s.cache, "bench-data"),
            *s.bench_args]
    args = bench_data.parse_args(argv)
    rows = [row for name in args.datasets.split(",") for row in bench_data.measure(name, args)]
    text, _ = bench_data.table(rows, bench_data.CONTRACT.num_frames)
    ratios = bench_data.bare_ratios(rows)
    goals = [goal(f"bench-data {d}: training pipeline / bare nvJPEG decode", round(r, 3), f">= {BARE_RATIO_GOAL}",
                  r >= BARE_RATIO_GOAL) for d, r in ratios.items()]
    if not ratios:
        goals.append(goal("bench-data GPU rows", "not measured (no CUDA seen)", "measured", False))
    ratio_lines = "".join(f"\n{d}: training pipeline / bare nvJPEG decode of the same frames: {r:.2f}"
                          for d, r in ratios.items())
    return {"command": "python3 -m bench.data " + " ".join(argv), "table": text + ratio_lines, "rows": rows,
            "goals": goals}


def step_images(s: Settings) -> dict:
    from bench import images as bench_images

    argv = ["--threads", str(s.cores), "--root", os.path.join(s.cache, "bench-images"), *s.bench_args]
    args = bench_images.parse_args(argv)
    result = bench_images.summary(args, bench_images.measure(args))
    mixed = next(r for r in result["rows"] if r["role"] == "gpu")
    return {"command": "python3 -m bench.images " + " ".join(argv), "table": bench_images.table(result),
            "rows": result["rows"],
            "goals": [goal("bench-images mixed row", mixed["rate"] and round(mixed["rate"], 1), "measured",
                           bool(mixed["rate"]))]}


# --------------------------------------------------------------------------------------------- synthetic stores


def synthetic_source(s: Settings, name: str, codec: str, size, frames: int, videos: int, fps: int = 30) -> str:
    """Generated once per cache: a folder of synthetic videos with train.txt / classes.txt."""
    from prep.synthetic import generate

    src = os.path.join(s.cache, name, "source")
    if not os.path.exists(os.path.join(src, "train.txt")):
        generate(src, videos=videos, frames=frames, size=tuple(size), fps=fps, codec=codec, classes=s.classes,
                 val_fraction=0, workers=s.cores, progress=False)
    return src


def prepped(s: Settings, src: str, out: str, store: str = "frames", short_side: int = 256, reencode: str = "") -> str:
    """`src` prepped into `out` once (a rerun finds it done)."""
    from prep.decode import DecodeOptions
    from prep.runner import JobOptions, run_prep
    from prep.tasks import number_tasks, parse_video_lists

    if not os.path.exists(os.path.join(out, "manifest.jsonl")):
        tasks, classes = parse_video_lists([f"train={src}/train.txt"], src, os.path.join(src, "classes.txt"))
        run_prep(number_tasks(tasks), classes, out, DecodeOptions(short_side=short_side, store=store,
                                                                  reencode=reencode),
                 JobOptions(workers=s.cores, progress=False))
    return out


def replayed(out: str, clips: int):
    from prep import open_dataset

    ds = open_dataset(out, "train")
    ds.rows = ds.rows * -(-clips // len(ds.rows))
    return ds


def disk_mb(path: str) -> float:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, "**"), recursive=True)
               if os.path.isfile(p)) / 2**20


# --------------------------------------------------------------------------------------------- meter


def _device(s: Settings):
    import torch

    return torch.device("cpu") if s.device_id is None else torch.device("cuda", s.device_id)


def metered_training(model, loader, s: Settings, batch: int) -> dict:
    """Warm-up steps, then `meter_steps` steps timed by StepMeter exactly as the trainer does (train/engine.py)."""
    import torch

    from bench.models import train_step
    from models.profile import has_convs, to_channels_last
    from train.meter import StepMeter

    device = _device(s)
    model = model.to(device).train()
    convs = has_convs(model) and device.type == "cuda"
    if convs:
        to_channels_last(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches, meter = iter(loader), StepMeter(device)
    for i in range(s.meter_warmup + s.meter_steps):
        if i == s.meter_warmup:
            meter.start()
        b = next(batches)
        if i >= s.meter_warmup:
            meter.data_ready()
        clips = b["clips"]
        if convs and clips.dim() == 5 and loader.contract.layout == "NCTHW":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)  # a no-op: the loader's view already is
        train_step(model, optimizer, clips, b["labels"], device)
        if i >= s.meter_warmup:
            meter.step_done(batch)
    return meter.summary()


def meter_one(name: str, store: str, s: Settings) -> dict:
    import torch

    from models import create_model
    from pipelines import build_loader

    batch = s.batch
    while True:
        model = create_model(name, num_classes=s.classes, num_frames=s.frames)
        ds = replayed(store, (s.meter_warmup + s.meter_steps + 1) * batch)
        loader = build_loader(ds, "train", model.input_contract, batch, True, device_id=s.device_id,
                              dtype=torch.bfloat16 if s.device_id is not None else torch.float32)
        try:
            row = metered_training(model, loader, s, batch)
            return {"model": name, "batch": batch, "threads": loader.num_threads, "py_workers": loader.py_workers,
                    **row}
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2  # recorded in the row: the brief's batch did not fit this GPU
        finally:
            loader.close()
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def step_meter(s: Settings, models: tuple | None = None, step: str = "meter") -> dict:
    src = synthetic_source(s, "meter", "h264", s.store_size, s.store_frames, s.store_videos)
    store = prepped(s, src, os.path.join(s.cache, "meter", "frames"), short_side=min(s.store_size))
    rows = [meter_one(name, store, s) for name in (models or s.meter_models)]
    lines = [f"{'model':<38} {'batch':>5} {'clips/s':>8} {'data wait %':>12} {'threads':>8} {'workers':>8}"]
    lines += [f"{r['model']:<38} {r['batch']:>5} {r['clips_per_s']:>8.1f} {r['data_wait_pct']:>12.2f} "
              f"{r['threads']:>8} {r['py_workers']:>8}" for r in rows]
    goals = [goal(f"data wait {r['model']} (bar {DATA_WAIT_BAR} %)", r["data_wait_pct"], f"< {DATA_WAIT_GOAL} %",
                  r["data_wait_pct"] < DATA_WAIT_GOAL) for r in rows]
    goals += [goal(f"batch {s.batch} fits ({r['model']})", r["batch"], f"{s.batch}", r["batch"] == s.batch)
              for r in rows]
    return {"command": f"python3 -m bench.gpu_check --step {step}  ({s.store_videos} videos of {s.store_frames} "
                       f"frames at {s.store_size[1]}x{s.store_size[0]}, {s.frames}x224, batch {s.batch}, bf16, "
                       f"{s.meter_warmup} warm-up + {s.meter_steps} metered steps)",
            "table": "\n".join(lines), "rows": rows, "goals": goals}


def step_meter_vit(s: Settings) -> dict:
    return step_meter(s, s.meter_vit_models, "meter_vit")


# --------------------------------------------------------------------------------------------- nvdec


def loader_rate(store: str, s: Settings, contract) -> float:
    """Training clips/s of our loader on `store` (batches of s.batch, bf16 on the GPU), after warm-up batches."""
    import torch

    from bench.data import time_batches
    from pipelines import build_loader

    ds = replayed(store, (s.nvdec_warmup + s.nvdec_batches + 1) * s.batch)
    on_gpu = s.device_id is not None
    loader = build_loader(ds, "train", contract, s.batch, True, device_id=s.device_id,
                          dtype=torch.bfloat16 if on_gpu else torch.float32)
    try:
        return time_batches(loader, s.nvdec_warmup, s.nvdec_batches, torch.cuda.synchronize if on_gpu else None)
    finally:
        loader.close()


def step_nvdec(s: Settings) -> dict:
    from models.registry import InputContract

    src = synthetic_source(s, f"nvdec-{s.nvdec_codec}", s.nvdec_codec, s.nvdec_size, s.nvdec_source_frames,
                           s.nvdec_videos)
    base = os.path.dirname(src)
    stores = [("frames (JPEG, short side 256)", prepped(s, src, os.path.join(base, "frames"))),
              (f"video, source {s.nvdec_codec} bytes", prepped(s, src, os.path.join(base, "video"), "video")),
              (f"video --reencode {s.nvdec_codec} (short side 256)",
               prepped(s, src, os.path.join(base, "reencoded"), "video", reencode=s.nvdec_codec))]
    contract = InputContract("NCTHW", num_frames=s.frames, crop_size=224)
    rows = [{"store": name, "mb": round(disk_mb(os.path.join(path, "shards")), 1),
             "clips_per_s": round(loader_rate(path, s, contract), 1)} for name, path in stores]
    source_mb = disk_mb(os.path.join(src, "videos"))
    lines = [f"{'store':<44} {'MB':>8} {'vs source':>10} {'clips/s':>8} {'vs frames':>10}"]
    lines += [f"{r['store']:<44} {r['mb']:>8.1f} {r['mb'] / source_mb:>9.2f}x {r['clips_per_s']:>8.1f} "
              f"{r['clips_per_s'] / rows[0]['clips_per_s']:>9.2f}x" for r in rows]
    return {"command": f"python3 -m bench.gpu_check --step nvdec  ({s.nvdec_videos} synthetic {s.nvdec_codec} "
                       f"videos of {s.nvdec_source_frames} frames at {s.nvdec_size[1]}x{s.nvdec_size[0]}, TSN 8x224 "
                       f"clips, batch {s.batch})", "table": "\n".join(lines), "rows": rows,
            "goals": [goal(f"nvdec: {r['store']} decodes", r["clips_per_s"], "> 0", r["clips_per_s"] > 0)
                      for r in rows]}


# --------------------------------------------------------------------------------------------- report


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cores": Settings().cores}
    for module in ("nvidia.dali", "av", "timm"):
        try:
            info[module.split(".")[-1]] = __import__(module, fromlist=["__version__"]).__version__
        except ImportError:
            info[module.split(".")[-1]] = "not installed"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
        info["nvidia-smi"] = out.splitlines()[0] if out else ""
    return info


def render(results: dict[str, dict]) -> str:
    """docs/benchmarks-gpu.md from the step results found (each carries its machine and time)."""
    lines = ["# GPU benchmarks (`make gpu-check`)", "",
             "Written by `bench/gpu_check.py` (`make gpu-check`, or `python3 -m bench.gpu_check [--step ...]` on a GPU",
             "machine; that file's docstring lists the steps and the packages they need). Every number below was",
             "printed by the command above it, on the machine named with it.", ""]
    lines += _how_to_run()
    if not results:
        return "\n".join(lines + ["No step has run on a GPU yet.", ""])
    missing = [step for step in STEPS if step not in results]
    goals = [(step, g) for step in STEPS if step in results for g in results[step]["goals"]]
    lines += ["## Goals", "", "| step | goal | value | target | met |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {step} | {g['name']} | {g['value']} | {g['target']} | {'yes' if g['met'] else '**no**'} |"
              for step, g in goals]
    if missing:
        lines += ["", f"Not run yet: {', '.join(missing)}."]
    for step in (s for s in STEPS if s in results):
        r = results[step]
        where = ", ".join(f"{k} {v}" for k, v in r["machine"].items())
        lines += ["", f"## {step}", "", f"{r['date']}, {r['seconds']:.0f} s; {where}",
                  "", "```", r["command"], "```", "", "```", r["table"], "```"]
    return "\n".join(lines) + "\n"


def _how_to_run() -> list[str]:
    return ["## Running it", "", "```",
            "make gpu-check                                # every step, headline measurements first",
            "make gpu-check ARGS=\"--time-limit 420\"       # a first contact: the steps that fit in 7 minutes",
            "make gpu-check STEP=\"images nvdec\"           # chosen steps; the report keeps earlier results",
            "python3 -m bench.gpu_check --copy-to DIR      # without the .venv; also copies the report to DIR",
            "```", "",
            "Without CUDA it stops at once with one line (exit status 2). Exit status 1 names each goal missed.", ""]


def load_results(cache: str) -> dict[str, dict]:
    found = {}
    for step in STEPS:
        path = os.path.join(cache, "results", f"{step}.json")
        if os.path.exists(path):
            with open(path) as f:
                found[step] = json.load(f)
    return found


def save(cache: str, step: str, result: dict) -> None:
    os.makedirs(os.path.join(cache, "results"), exist_ok=True)
    with open(os.path.join(cache, "results", f"{step}.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)


def publish(cache: str, report: str = REPORT, copy_to: str = "") -> str:
    """Rewrites the report from every saved result; copies it and the results to `copy_to` when given."""
    text = render(load_results(cache))
    os.makedirs(os.path.dirname(report) or ".", exist_ok=True)
    with open(report, "w") as f:
        f.write(text)
    out = copy_to
    if out:
        os.makedirs(out, exist_ok=True)
        shutil.copy(report, os.path.join(out, os.path.basename(report)))
        for path in glob.glob(os.path.join(cache, "results", "*.json")):
            shutil.copy(path, os.path.join(out, os.path.basename(path)))
    return text


# --------------------------------------------------------------------------------------------- main


RUNNERS = {"tests": step_tests, "meter": step_meter, "data": step_data, "meter_vit": step_meter_vit,
           "images": step_images, "nvdec": step_nvdec}


def run_step(step: str, s: Settings) -> dict:
    start = time.time()
    try:
        result = RUNNERS[step](s)
    except Exception as e:  # a step that breaks is a finding to record, not a reason to lose the others
        result = {"command": f"python3 -m bench.gpu_check --step {step}", "table": f"{type(e).__name__}: {e}",
                  "goals": [goal(f"{step} step runs", f"{type(e).__name__}: {str(e)[:200]}", "no error", False)]}
    result.update(step=step, seconds=time.time() - start, date=time.strftime("%Y-%m-%d %H:%M"), machine=machine())
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python3 -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--step", action="append", choices=STEPS, help="repeatable; default: every step in order")
    p.add_argument("--cache", default=Settings.cache, help="generated data and results/*.json")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from saved results, run nothing")
    p.add_argument("--time-limit", type=NON_NEGATIVE_FLOAT, default=0, help="start no step after this many seconds (0: no limit)")
    p.add_argument("--copy-to", default="", help="also copy the report and results/*.json to this folder")
    args = p.parse_args(argv)
    if not (args.time_limit >= 0 and args.time_limit != float("inf")):
        p.error(f"--time-limit must be a finite number of seconds >= 0, got {args.time_limit}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        publish(args.cache, copy_to=args.copy_to)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing run; "
              "run it on a machine with an NVIDIA GPU")
        return 2
    s, start = Settings(cache=args.cache), time.time()
    missed, skipped = [], []
    for step in args.step or STEPS:
        if args.time_limit and time.time() - start > args.time_limit:
            skipped.append(step)
            continue
        print(f"gpu-check: {step} ...", flush=True)
        result = run_step(step, s)
        save(s.cache, step, result)
        publish(s.cache, copy_to=args.copy_to)
        print(result["table"], flush=True)
        missed += [f"{step}: {g['name']}: {g['value']} (goal {g['target']})" for g in result["goals"] if not g["met"]]
    for line in missed:
        print(f"gpu-check: goal missed: {line}")
    if skipped:
        print(f"gpu-check: not started within --time-limit {args.time_limit:g} s: {', '.join(skipped)} "
              f"(run them with --step)")
    print(f"gpu-check: report written to {REPORT}" + (f" and {args.copy_to}" if args.copy_to else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Training against real faults: malicious or damaged checkpoints, divergence, bad values, changed configs on
resume, signals, a full disk, damaged videos. In-process Trainers on tsn_tiny (a second or two each) unless
the behaviour is the process's own (exit codes, signals)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import models
from models.checkpoints import CheckpointError
from helpers import damage_video
from train import checkpoint as ckpt
from train.__main__ import main as train_main
from train.config import ConfigError, TrainConfig, apply, config_changes, load_config
from train.engine import Trainer
from train.guard import RunStopped, training_amp
from train.setup import Dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = Dist(0, 1, 0, torch.device("cpu"))
BASE = dict(model="tsn_tiny", batch_size=4, py_workers=1, threads=1, amp="none", progress=False, optimizer="adamw",
            lr=0.002, epochs=1, eval_every=0, seed=0, name="run")


def _config(data, output, **overrides) -> TrainConfig:
    return apply(TrainConfig(), {**BASE, "data": str(data), "output": str(output), **overrides}, "test")


def _argv(data, output, *extra) -> list[str]:
    argv = ["--no-progress"]
    for key, value in {**BASE, "data": str(data), "output": str(output)}.items():
        if key != "progress":
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv + list(extra)


def _fit(make_trainer, cfg: TrainConfig) -> Trainer:
    t = make_trainer(cfg)
    t.fit()
    return t


def _one_error_line(err: str, prefix: str = "train: error: ") -> str:
    """The line the run ended with; it must be the only line with the prefix and say it all."""
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------ 1. loading runs no code


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious file does: unpickling calls os.system
        return os.system, (f"touch {self.marker}",)


def test_a_run_writes_plain_data_only(data, tmp_path, make_trainer):
    _fit(make_trainer, _config(data, tmp_path, max_steps=2))
    path = tmp_path / "run" / "last.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    state = torch.load(path, map_location="cpu", weights_only=True)  # no allow-listed globals needed
    assert state["step"] == 2 and isinstance(state["config"], dict) and state["checksum"] == ckpt.checksum(state)


def test_malicious_checkpoint_runs_nothing(data, tmp_path, capsys):
    from eval.__main__ import main as eval_main

    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    good = models.create_model("tsn_tiny", num_classes=10).state_dict()
    torch.save({"model": good, "model_name": "tsn_tiny", "num_classes": 10, "payload": _RunsCode(marker)}, evil)
    cases = [(train_main, _argv(data, tmp_path, "--resume", str(evil)), "train: error: "),
             (train_main, _argv(data, tmp_path, "--pretrained", str(evil), "--name", "p"), "train: error: "),
             (eval_main, ["--ckpt", str(evil), "--data", str(data), "--no-progress"], "eval: error: ")]
    for main, argv, prefix in cases:
        assert main(argv) == 2
        line = _one_error_line(capsys.readouterr().err, prefix)
        assert "evil.pt" in line and "refused" in line, line
        assert not marker.exists(), f"loading ran code: {argv}"


# ------------------------------------------------------------------------------------ 2. silent NaN


def test_bf16_on_the_cpu_trains_3d_convs_in_float32(data, tmp_path, make_trainer):
    """oneDNN's bf16 conv3d weight gradients come out NaN now and then on the CPU (i3d_resnet50 on SSv2 went
    NaN from step 2): 3D models train in float32 there; 2D models, fp16 and GPUs keep what was asked."""
    t = make_trainer(_config(data, tmp_path, model="i3d_tiny", amp="bf16", max_steps=1))
    dtypes = []
    t.model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    t.fit()
    assert t.amp == "none" and dtypes == [torch.float32]
    tsn, i3d = models.create_model("tsn_tiny", num_classes=3), models.create_model("i3d_tiny", num_classes=3)
    assert training_amp("bf16", torch.device("cpu"), tsn) == "bf16"
    assert training_amp("fp16", torch.device("cpu"), i3d) == "fp16"
    assert training_amp("bf16", torch.device("cuda", 0), i3d, warn=False) == "bf16"


def test_a_diverging_run_stops_at_that_step(data, tmp_path, capsys):
    """lr 1e30: step 1 leaves huge but finite weights (checkpointed), step 2's loss is not finite."""
    code = train_main(_argv(data, tmp_path, "--lr", "1e30", "--optimizer", "sgd", "--ckpt-every-steps", "1",
                            "--epochs", "2", "--eval-every", "1"))
    line = _one_error_line(capsys.readouterr().err)
    run = tmp_path / "run"
    assert code == 1
    assert "diverged at step 2 (epoch 1): loss " in line and f"{run / 'last.pt'} (step 1)" in line, line
    state = ckpt.load(str(run / "last.pt"))
    assert state["step"] == 1 and ckpt.all_finite(state["model"])
    assert not (run / "best.pt").exists() and not (run / "metrics.jsonl").exists()


def test_a_non_finite_gradient_stops_before_the_update(data, tmp_path, make_trainer):
    """The CPU bf16 case: the loss is finite but one weight's gradient is NaN; the step must not be applied."""
    t = make_trainer(_config(data, tmp_path, max_steps=5))
    weight = next(p for p in t.model.parameters() if p.requires_grad)
    calls = []
    weight.register_hook(lambda g: g * float("nan") if len(calls.append(1) or calls) == 3 else g)
    before = {}
    step = t._optimizer_step

    def spied():
        before.update({k: v.clone() for k, v in t.model.state_dict().items()})
        step()

    t._optimizer_step = spied
    stopped = r"diverged at step 3 \(epoch 1\): loss [0-9.]+, gradient norm nan: stopped before"
    with pytest.raises(RunStopped, match=stopped) as e:
        t.fit()
    assert e.value.code == 1 and "no checkpoint written yet" in str(e.value)
    assert t.step == 2 and not (tmp_path / "run" / "last.pt").exists()
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "nan"], "'lr': expected a finite number"),
    (["--lr", "inf"], "'lr': expected a finite number"),
    (["--clip-grad", "-inf"], "'clip_grad': expected a finite number"),
    (["--augment.eval_scale", ".nan"], "'augment.eval_scale': expected a finite number"),
])
def test_non_finite_numbers_are_refused(argv, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(["--data", "d", *argv])


# ------------------------------------------------------------------------------------ 3. values checked first


@pytest.mark.parametrize("argv,needle", [
    (["--eval-clips", "0"], "'eval_clips' must be >= 1"),
    (["--eval-crops", "2"], r"'eval_crops' must be one of \(1, 3, 5, 10\)"),
    (["--grad-accum", "0"], "'grad_accum' must be >= 1"),
    (["--epochs", "0"], "'epochs' must be >= 1"),
    (["--epochs", "-3"], "'epochs' must be >= 1"),
    (["--batch-size", "0"], "'batch_size' must be >= 1"),
    (["--lr", "0"], "'lr' must be > 0"),
    (["--ema-decay", "1.5"], r"'ema_decay' must be in \[0, 1\)"),
    (["--mixup", "0.8", "--batch-size", "3"], "'batch_size' must be even with mixup"),
    (["--augment.eval_scale", "0.5"], "'augment': eval_scale must be >= 1"),
    (["--augment.no_such", "1"], "'augment'.*no_such"),
    (["--model", "no_such_model"], "'model': unknown model"),
])
def test_bad_values_are_refused_before_anything_runs(argv, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(["--data", "d", *argv])
    assert "\n" not in str(e.value)


def test_values_that_depend_on_the_data_are_checked_at_start(data, tmp_path, make_trainer, caplog):
    with pytest.raises(ConfigError, match="fewer than grad_accum 8"):  # 7 batches of 4: not one step
        make_trainer(_config(data, tmp_path, grad_accum=8))
    with pytest.raises(ConfigError, match="'num_classes' is 3, but train has 10 classes"):
        make_trainer(_config(data, tmp_path, num_classes=3))
    with pytest.raises(ConfigError, match="'model_args'.*tsn_tiny refuses it"):
        make_trainer(_config(data, tmp_path, model_args={"no_such": 1}))
    caplog.set_level("WARNING", logger="train")
    make_trainer(_config(data, tmp_path, num_frames=12))  # the synthetic videos have 8 frames at 32 px
    warnings = [r.getMessage() for r in caplog.records if r.name == "train"]
    assert any("30 of 30 videos have fewer stored frames than a clip of 12 frames" in w for w in warnings), warnings
    assert any("30 of 30 videos are stored smaller than the model's 64 px crop" in w for w in warnings), warnings


# ------------------------------------------------------------------------------------ 4. resume asks first


def test_resume_refuses_another_config(data, tmp_path, make_trainer):
    _fit(make_trainer, _config(data, tmp_path, max_steps=2))
    saved_yaml = (tmp_path / "run" / "config.yaml").read_text()
    for change, key in (({"lr": 0.1}, "lr: 0.002 -> 0.1"), ({"model_args": {"drop_rate": 0.3}}, "model_args"),
                        ({"model": "i3d_tiny"}, "model tsn_tiny with 10 classes -> i3d_tiny")):
        t = make_trainer(_config(data, tmp_path, max_steps=4, **change))
        with pytest.raises(ConfigError, match="belongs to a run with another config") as e:
            t.fit()
        assert key in str(e.value) and "--name NEW" in str(e.value) and "--resume none" in str(e.value)
        assert t.step == 0 and (tmp_path / "run" / "config.yaml").read_text() == saved_yaml
    t = _fit(make_trainer, _config(data, tmp_path, max_steps=4, eval_clips=2, epochs=3))  # safe keys
    assert t.step == 4
    fresh = _fit(make_trainer, _config(data, tmp_path, max_steps=1, lr=0.1, resume="none"))
    assert fresh.step == 1


def test_config_changes_sorts_safe_from_unsafe():
    saved = TrainConfig(data="/a", epochs=2).to_dict()
    safe, unsafe = config_changes(saved, TrainConfig(data="/b", epochs=5, eval_crops=3))
    assert safe == ["epochs: 2 -> 5", "eval_crops: 1 -> 3"] and unsafe == ["data: '/a' -> '/b'"]


def test_an_alias_trains_as_its_model():
    cfg = load_config(["--model", "i3d_resnet", "--dataset", "ssv2", "--data", "d"])
    assert cfg.model == "i3d_resnet50" and cfg.run_dir() == os.path.join("runs", "i3d_resnet50_ssv2")


# ------------------------------------------------------------------------------------ 5. damaged checkpoints


def _flip_tensor_byte(path) -> None:
    """Flip one byte inside the largest tensor record: torch.load reads such a file without complaint."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(Path(path).read_bytes())
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + o:info.header_offset + o + 2], "little")
                           for o in (26, 28))
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x40
    Path(path).write_bytes(raw)


@pytest.mark.parametrize("damage", ["flipped", "truncated", "empty"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous(data, tmp_path, make_trainer, caplog, damage):
    _fit(make_trainer, _config(data, tmp_path, max_steps=2, ckpt_every_steps=1))
    last = tmp_path / "run" / "last.pt"
    if damage == "flipped":
        _flip_tensor_byte(last)
        torch.load(last, weights_only=True)  # still loads: only the checksum tells
    else:
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2] if damage == "truncated" else b"")
    caplog.set_level("WARNING", logger="train")
    t = make_trainer(_config(data, tmp_path, max_steps=3))
    t.resume()
    assert t.step == 1
    warning = [r.getMessage() for r in caplog.records if "resuming from" in r.getMessage()]
    assert len(warning) == 1 and "previous.pt" in warning[0] and str(last) in warning[0]
    t.fit()  # the damaged last.pt is overwritten, not kept as the previous one
    assert ckpt.load(str(last))["step"] == 3 and ckpt.load(str(tmp_path / "run" / "previous.pt"))["step"] == 1


def test_no_good_checkpoint_is_one_line(data, tmp_path, make_trainer):
    _fit(make_trainer, _config(data, tmp_path, max_steps=2, ckpt_every_steps=1))
    for name in ("last.pt", "previous.pt"):
        _flip_tensor_byte(tmp_path / "run" / name)
    t = make_trainer(_config(data, tmp_path, max_steps=3))
    with pytest.raises(CheckpointError, match="damaged.*damaged.*no good checkpoint to resume from") as e:
        t.fit()
    assert "\n" not in str(e.value) and "--resume none" in str(e.value)


# ------------------------------------------------------------------------------------ 6. signals


def test_a_signal_checkpoints_mid_epoch_and_the_resumed_run_matches(data, tmp_path, make_trainer):
    whole = _fit(make_trainer, _config(data, tmp_path / "a", epochs=2))
    cfg = _config(data, tmp_path / "b", epochs=2, ckpt_every_steps=3)
    t = make_trainer(cfg)
    step = t.optimizer.step

    def interrupted(*args, **kwargs):
        if t.step == 8:  # during step 9: epoch 2, batch 2 of 7
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)

    t.optimizer.step = interrupted
    with pytest.raises(RunStopped, match=r"stopped by SIGINT at step 9 \(epoch 2, batch 2 of 7\)") as e:
        t.fit()
    assert e.value.code == 130
    state = ckpt.load(str(tmp_path / "b" / "run" / "last.pt"))
    assert (state["epoch"], state["step"], state["progress"]["batches"]) == (1, 9, 2)
    resumed = _fit(make_trainer, cfg)
    assert resumed.step == whole.step == 14
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    rows = [[json.loads(x) for x in Path(p / "run" / "metrics.jsonl").read_text().splitlines()]
            for p in (tmp_path / "a", tmp_path / "b")]
    assert [r["epoch"] for r in rows[1]] == [1, 2]
    assert [(r["train_loss"], r["clips"]) for r in rows[0]] == [(r["train_loss"], r["clips"]) for r in rows[1]]


def test_sigterm_stops_the_process_with_a_resumable_checkpoint(data, tmp_path):
    argv = [sys.executable, "-m", "train", *_argv(data, tmp_path, "--epochs", "3", "--ckpt-every-steps", "2")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, start = tmp_path / "run" / "last.pt", time.time()
    while not last.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - start < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM
    line = _one_error_line(err, "train: stopped by SIGTERM at step ")
    state = ckpt.load(str(last))
    assert f"(step {state['step']})" in line and "run the same command again to resume" in line
    assert 2 <= state["step"] < 21
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ckpt.load(str(last))["step"] == 21


# ------------------------------------------------------------------------------------ 7. disk full


def test_disk_full_while_checkpointing(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(_argv(data, tmp_path, "--max-steps", "1")) == 0
    os.symlink("/dev/full", run / "last.pt.tmp")  # the next checkpoint is written into a full device
    assert train_main(_argv(data, tmp_path, "--max-steps", "2")) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"train: error: no space left on device writing {run / 'last.pt'} ("), line
    assert not os.path.lexists(run / "last.pt.tmp")
    assert ckpt.load(str(run / "last.pt"))["step"] == 1
    assert train_main(_argv(data, tmp_path, "--max-steps", "2")) == 0
    assert ckpt.load(str(run / "last.pt"))["step"] == 2


# ------------------------------------------------------------------------------------ 8. the front door


def _make(*args) -> subprocess.CompletedProcess:
    """make without its install prerequisite (-o install): the recipes as the user gets them."""
    return subprocess.run(["make", "-s", "-o", "install", *args], cwd=ROOT, capture_output=True, text=True)


def test_make_finds_an_alias_recipe_and_runs_one_process_plainly():
    dry = _make("-n", "train", "MODEL=i3d_resnet", "DATASET=ssv2", "DATA=/x").stdout
    assert dry.startswith(".venv/bin/python -m train --config configs/i3d_resnet50_ssv2.yaml --model i3d_resnet ")
    assert "torchrun" in _make("-n", "train", "MODEL=i3d_resnet", "GPUS=2", "DATASET=ssv2", "DATA=/x").stdout
    assert "--ckpt runs/i3d_resnet50_ssv2/best.pt" in _make("-n", "eval", "MODEL=i3d_resnet", "DATASET=ssv2").stdout
    for target in ("train", "eval"):
        proc = _make(target, "MODEL=tsn_tiny", "DATASET=synthetic", "DATA=/nonexistent", "CKPT=/nonexistent.pt",
                     "ARGS=--epochs 0" if target == "train" else "ARGS=")
        assert proc.returncode != 0
        # make's own closing line ("make: ***", or "make[1]: ***" when the suite itself runs under make)
        lines = [x for x in proc.stderr.splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", x)]
        assert len(lines) == 1 and lines[0].startswith(f"{target}: error: "), proc.stderr


# ------------------------------------------------------------------------------------ 9. damaged videos


def test_damaged_videos_are_counted_in_the_metrics(data, tmp_path, make_trainer):
    import shutil

    damaged = tmp_path / "data"
    shutil.copytree(data, damaged)
    damage_video(str(damaged), 3)
    t = _fit(make_trainer, _config(damaged, tmp_path))
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    stats = t.train_loader.stats
    assert stats["damaged"] == 1 and stats["replaced"] >= 1
    assert (row["damaged_videos"], row["replaced_samples"]) == (1, stats["replaced"])

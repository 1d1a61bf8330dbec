"""bench.gpu_check without a GPU: the one-line refusal, the report, the exit status, and the meter and NVDEC
steps' code run at toy sizes on the CPU (the same functions the GPU check calls)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import Settings, goal, gpu_test_files, pytest_counts, render, step_meter, step_nvdec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_without_cuda_it_stops_at_once_with_one_line():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--step", "meter"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device"), lines
    assert time.time() - start < 60  # nothing generated, nothing built


def test_gpu_test_files_and_pytest_summary():
    files = [os.path.basename(f) for f in gpu_test_files(os.path.join(ROOT, "tests"))]
    assert {"test_pipelines.py", "test_pipelines_frames.py", "test_prep_video_store.py"} <= set(files)
    assert "test_gpu_check.py" not in files
    assert pytest_counts("3 failed, 10 passed, 2 skipped, 1 error in 4.2s") == {
        "failed": 3, "passed": 10, "skipped": 2, "error": 1}


def _result(step, goals, table="t"):
    return {"step": step, "command": f"cmd {step}", "table": table, "goals": goals, "seconds": 12.0,
            "date": "2030-01-01 10:00", "machine": {"gpu": "NVIDIA H100", "dali": "2.4.0"}}


def test_report_lists_goals_machine_and_commands(tmp_path, monkeypatch):
    results = {"meter": _result("meter", [goal("data wait tsn_resnet50 (bar 2.0 %)", 0.4, "< 1.0 %", True),
                                          goal("data wait i3d_resnet50 (bar 2.0 %)", 1.6, "< 1.0 %", False)]),
               "data": _result("data", [goal("bench-data kinetics: ratio", 0.91, ">= 0.8", True)], "a table")}
    text = render(results)
    assert text.index("## meter") < text.index("## data")  # in step order: the headline meter first
    assert "| meter | data wait i3d_resnet50 (bar 2.0 %) | 1.6 | < 1.0 % | **no** |" in text
    assert "gpu NVIDIA H100, dali 2.4.0" in text and "cmd data" in text and "a table" in text
    assert "No step has run" in render({}) and "make gpu-check" in render({})
    assert "Not run yet: tests, meter_vit, images, nvdec." in text
    assert not any(word in render({}) + gpu_check.__doc__ for word in ("$OUT", "/tmp/whl", "carry", "device call"))
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    for step, r in results.items():
        gpu_check.save(str(cache), step, r)
    report = tmp_path / "docs" / "benchmarks-gpu.md"
    assert gpu_check.publish(str(cache), str(report), copy_to=str(out)) == report.read_text() == text
    assert sorted(os.listdir(out)) == ["benchmarks-gpu.md", "data.json", "meter.json"]


def test_exit_status_names_each_missed_goal(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "machine", lambda: {"gpu": "fake"})
    monkeypatch.setattr(gpu_check, "REPORT", str(tmp_path / "report.md"))
    monkeypatch.setattr(gpu_check, "publish", lambda cache, copy_to="": "")
    monkeypatch.setitem(gpu_check.RUNNERS, "data", lambda s: {"command": "c", "table": "t",
                                                              "goals": [goal("ratio", 0.5, ">= 0.8", False)]})
    monkeypatch.setitem(gpu_check.RUNNERS, "images", lambda s: 1 / 0)  # a broken step is recorded, not fatal
    monkeypatch.setitem(gpu_check.RUNNERS, "tests", lambda s: {"command": "c", "table": "t",
                                                               "goals": [goal("tests", 3, "all", True)]})
    cache = str(tmp_path / "cache")
    assert gpu_check.main(["--step", "tests", "--cache", cache]) == 0
    assert gpu_check.main(["--step", "data", "--step", "images", "--cache", cache]) == 1
    out = capsys.readouterr().out
    assert "goal missed: data: ratio: 0.5 (goal >= 0.8)" in out
    assert "goal missed: images: images step runs: ZeroDivisionError" in out
    saved = json.loads(Path(os.path.join(cache, "results", "images.json")).read_text())
    assert saved["machine"] == {"gpu": "fake"} and not saved["goals"][0]["met"]


def _toy(tmp_path, **kw) -> Settings:
    return Settings(device_id=None, cache=str(tmp_path), workers=2, batch=2, frames=4, classes=4, **kw)


@pytest.mark.slow
def test_meter_step_runs_the_training_loop_on_the_cpu(tmp_path):
    s = _toy(tmp_path, meter_models=("tsn_tiny", "i3d_tiny"), meter_steps=3, meter_warmup=1, store_videos=8,
             store_frames=12, store_size=(48, 64))
    result = step_meter(s)
    assert [r["model"] for r in result["rows"]] == ["tsn_tiny", "i3d_tiny"]
    for r in result["rows"]:
        assert r["steps"] == 3 and r["clips"] == 6 and r["clips_per_s"] > 0 and 0 <= r["data_wait_pct"] <= 100
        assert r["batch"] == 2
    assert len(result["goals"]) == 4 and "tsn_tiny" in result["table"]


@pytest.mark.slow
def test_nvdec_step_compares_the_three_stores_on_the_cpu(tmp_path):
    """VP9 stands in for H.264 on the CPU (DALI's CPU video decoder has no H.264)."""
    s = _toy(tmp_path, nvdec_codec="vp9", nvdec_videos=4, nvdec_size=(48, 64), nvdec_source_frames=40,
             nvdec_batches=2, nvdec_warmup=1)
    result = step_nvdec(s)
    frames, video, reencoded = result["rows"]
    assert "frames" in frames["store"] and "source vp9" in video["store"] and "--reencode vp9" in reencoded["store"]
    assert all(r["clips_per_s"] > 0 and r["mb"] > 0 for r in result["rows"]) and all(g["met"] for g in result["goals"])


def test_time_limit_starts_no_step_after_it(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "machine", lambda: {"gpu": "fake"})
    monkeypatch.setattr(gpu_check, "REPORT", str(tmp_path / "report.md"))
    monkeypatch.setattr(gpu_check, "publish", lambda cache, copy_to="": "")
    ran = []

    def slow(step):
        def run(s):
            ran.append(step)
            time.sleep(0.3)
            return {"command": "c", "table": "t", "goals": []}
        return run

    for step in gpu_check.STEPS:
        monkeypatch.setitem(gpu_check.RUNNERS, step, slow(step))
    assert gpu_check.main(["--time-limit", "0.5", "--cache", str(tmp_path / "cache")]) == 0
    assert ran == ["tests", "meter"]  # headline steps first; the third would start after 0.6 s
    assert "not started within --time-limit 0.5 s: data, meter_vit, images, nvdec" in capsys.readouterr().out

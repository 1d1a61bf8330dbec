"""Ctrl-C reaches DALI's Python workers too (the whole process group): the trainer, not the workers, decides."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from models.registry import InputContract
    from pipelines import build_loader

    def main():
        hits = []
        signal.signal(signal.SIGINT, lambda s, f: hits.append(s))  # as train.guard: record, stop later
        loader = build_loader(sys.argv[1], "train", InputContract("NCTHW", num_frames=4, crop_size=32), 2, True,
                              py_workers=1, num_threads=1, py_start_method=sys.argv[2], verify=False)
        it = iter(loader)
        next(it)
        os.killpg(0, signal.SIGINT)  # what Ctrl-C in a terminal does
        time.sleep(1)
        print("batches", sum(1 for _ in it), "signals", len(hits))

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_keep_serving_after_ctrl_c(data, tmp_path, start):
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(data), start], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, start_new_session=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    batches, signals = proc.stdout.split()[1::2]
    assert int(signals) == 1 and int(batches) > 0

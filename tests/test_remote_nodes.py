"""Two nodes on one machine: `torchrun --nnodes 2` as two node ranks on localhost, each with its own cache dir,
training tsn_tiny from the real S3 server (tests/s3fixture.py). Each node fetches only its share of the shards, the
two shares are disjoint and cover the split, and the epoch trains every video once."""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pipelines.shard_plan import ShardPlan
from prep import open_dataset
from prep.__main__ import main as prep_main
from s3fixture import BUCKET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = ["--videos", "20", "--frames", "8", "--size", "32", "--workers", "1", "--no-progress", "--shard-size", "12K"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_shards(cache: str) -> set[str]:
    return {n[:-3] for root, _, names in os.walk(os.path.join(cache, "stores")) if root.endswith("shards")
            for n in names if n.endswith(".ok")}


@pytest.mark.slow
def test_two_nodes_fetch_disjoint_shares_and_train_every_video_once(s3_env, tmp_path, monkeypatch):
    url = f"s3://{BUCKET}/nodes"
    monkeypatch.setenv("VIDKIT_CACHE_DIR", str(tmp_path / "prep-cache"))
    with redirect_stdout(io.StringIO()):
        assert prep_main(["synthetic", "--out", url, *SYNTH]) == 0
    videos = len(open_dataset(url, "train", stream=True))
    batch = -(-videos // 2)  # one batch per rank: nothing dropped
    port = _free_port()
    train = ["-m", "train", "--model", "tsn_tiny", "--data", url, "--output", str(tmp_path / "runs"), "--name", "two",
             "--batch-size", str(batch), "--py-workers", "1", "--threads", "1", "--amp", "none", "--no-progress",
             "--epochs", "1", "--eval-every", "0", "--seed", "3", "--device", "cpu"]
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), *train,
               "--cache-dir", str(tmp_path / f"node{node}")]
        env = {**os.environ, "PYTHONPATH": ROOT, "VIDKIT_SHUFFLE_WINDOW": "2"}
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    ds = open_dataset(url, "train", stream=True)
    names = sorted(ds.gate.wanted)
    fetched = [_node_shards(str(tmp_path / f"node{n}")) for n in (0, 1)]
    assert not fetched[0] & fetched[1] and fetched[0] | fetched[1] == set(names)  # each node only its share
    number = {n: i for i, n in enumerate(names)}
    plans = [ShardPlan(len(ds), batch, True, rank=r, world_size=2, seed=3, local_world_size=1, window=2,
                       shard_of=tuple(number[r_["shard"]] for r_ in ds.rows)) for r in (0, 1)]
    for n in (0, 1):
        assert fetched[n] == {names[s] for s in plans[n].node_shards(0)}
    seen = Counter(int(v) for p in plans for v in p.order(0)[:p.num_batches * batch])
    assert set(seen) == set(range(len(ds))) and sum(seen.values()) - len(ds) == plans[0].repeated <= 1
    metrics = [json.loads(line) for line in Path(tmp_path / "runs" / "two" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["clips"] == batch and metrics[-1]["steps"] == 1  # rank 0 trained its one full batch

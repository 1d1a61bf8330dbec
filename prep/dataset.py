"""The training-time reader: trivial on purpose (the heavy work happened once, in prep)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import zlib

from .remote import is_remote, materialize
from .jsonl import read_jsonl
from .remote_stream import stream as stream_remote
from .store import DamagedEntry, DamagedShard, ShardReader

__all__ = ["PreppedDataset", "open_dataset", "DamagedEntry", "DamagedShard", "UNLABELLED"]
# the label an unlabelled video (manifest label null) carries in a batch, whose labels are int64
UNLABELLED = -1


class PreppedDataset:
    """A prepped OUT folder, optionally restricted to one split. Picklable and fork-safe."""

    def __init__(self, root: str, split: str | None = None):
        manifest = os.path.join(root, "manifest.jsonl")
        if not os.path.exists(manifest):
            raise FileNotFoundError(f"{root} is not a prepped dataset (no manifest.jsonl; unfinished prep or "
                                    f"parts not merged: `python -m prep merge {root}`)")
        rows = read_jsonl(manifest)
        if split is not None:
            splits = sorted({r["split"] for r in rows})
            if split not in splits:
                raise ValueError(f"{root} has no split {split!r} (it has {', '.join(splits)})")
            rows = [r for r in rows if r["split"] == split]
        with open(os.path.join(root, "classes.json")) as f:
            self.classes: list[str] = json.load(f)
        self.root, self.split, self.rows = root, split, rows
        # each shard's identity as prep recorded it: a shard file from another prep run is refused
        identities = {r["shard"]: r["shard_id"] for r in rows if r.get("shard_id")}
        self.reader = ShardReader(os.path.join(root, "shards"), identities)
        self.gate = None  # a streamed s3:// split: every read waits for its shard (prep/remote_stream.py)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"PreppedDataset({self.root!r}, split={self.split!r}, videos={len(self)}, classes={len(self.classes)})"

    @property
    def store(self) -> str:
        return self.rows[0]["store"] if self.rows else "frames"

    @property
    def labels(self) -> list[int | None]:
        """Each video's label; None for an unlabelled (test) video."""
        return [r["label"] for r in self.rows]

    @property
    def labelled(self) -> bool:
        """Whether every video of these rows has a label (an unlabelled test split has none)."""
        return all(r["label"] is not None for r in self.rows)

    def record(self, i: int) -> dict:
        return dict(self.rows[i])

    def where(self, keep) -> "PreppedDataset":
        """The same store restricted to the rows for which `keep(row)` is true (an evaluated set)."""
        subset = copy.copy(self)
        subset.rows = [r for r in self.rows if keep(r)]
        return subset

    def check_shards(self) -> dict[str, str]:
        """{shard: why it cannot be used} for every shard of these rows that is missing, truncated, unreadable or
        from another prep run; cheap (headers and sizes only)."""
        bad = {}
        for shard in sorted({r["shard"] for r in self.rows}):
            try:
                self.reader.open(shard)
            except (DamagedEntry, OSError) as e:
                bad[shard] = str(e)
        return bad

    def frames(self, i: int, indices, verify: bool = False) -> list[bytes]:
        """JPEG bytes of the chosen frames; with `verify`, raises DamagedEntry unless each matches its CRC."""
        row = self.rows[i]
        n = row["num_frames"]
        indices = [int(j) for j in indices]
        bad = [j for j in indices if not 0 <= j < n]
        if bad:
            raise IndexError(f"video {row['id']}: frame indices {bad[:5]} outside 0..{n - 1}")
        if self.gate is not None:
            self.gate.ready(row["shard"])
        data = self.reader.frames(row["shard"], row["key"], indices, row.get("chunk_frames"))
        if verify:
            crcs = self.reader.meta(row["shard"], row["key"]).get("frame_crc")
            if not isinstance(crcs, list) or len(crcs) != n:
                raise DamagedEntry(f"video {row['id']} ({row['shard']}): its stored meta has no checksum per frame")
            for j, blob in zip(indices, data):
                if zlib.crc32(blob) != crcs[j]:
                    raise DamagedEntry(f"video {row['id']} ({row['shard']}): frame {j} fails its checksum")
        return data

    def video(self, i: int, verify: bool = False) -> bytes:
        """The encoded video bytes (datasets prepped with --store video)."""
        row = self.rows[i]
        if row["store"] != "video":
            raise ValueError(f"{self.root} stores JPEG frames, not videos (prep with --store video)")
        if self.gate is not None:
            self.gate.ready(row["shard"])
        data = self.reader.video(row["shard"], row["key"])
        if verify:
            if hashlib.sha1(data).hexdigest() != row["checksum"]:
                raise DamagedEntry(f"video {row['id']} ({row['shard']}): bytes fail their checksum")
        return data


def open_dataset(root: str, split: str | None = None, stream: bool = False) -> PreppedDataset:
    """A prepped folder, or an s3://BUCKET/PREFIX store read through the node's cache (prep/remote.py): the split's
    shards downloaded now, or with `stream` (training) each shard as the loader's plan reaches it
    (prep/remote_stream.py). `stream` changes nothing for a local folder."""
    if is_remote(root) and stream:
        root, gate = stream_remote(root, split)
        data = PreppedDataset(root, split)
        data.gate = gate
        return data
    if is_remote(root):
        root = materialize(root, split)
    return PreppedDataset(root, split)

"""python -m eval views --protocol NAME_OR_ZOO_KEY --video-frames N --frame-size WxH [options] [--json]

The views a test protocol gives one video (frame indices, resize, crop box), or with `--phase train` the training
draws, as pipelines/protocols.py computes them and the loader reads them. `--batch REQUESTS.jsonl` answers one
JSON request per line (the same fields as the options, e.g. {"protocol": "ibm", "phase": "test",
"video_frames": 271, "frame_size": [340, 256], "frames": 8, "clips": 3, "crops": 3}) with one JSON line each, in
order: {"views": [...]}, {"draws": [...]} or {"error": "one line"}; a bad request never stops the batch.

A protocol name alone takes its authors' script defaults; a zoo key (`python -m models zoo`) fills every field from
its released row, and fields given beside it override only themselves.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from models import zoo
from pipelines import protocols
from pipelines.protocols import ClipRule, ProtocolError
from pipelines.sampling import sample_rng
from prep.cli import COUNT, POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, run_main

FIELDS = ("protocol", "phase", "video_frames", "frame_size", "sampling", "frames", "frame_stride", "clips", "crops",
          "twice", "eval_scale", "eval_crop", "draws", "seed")
# what a protocol name alone takes (a zoo key fills these from its row)
DEFAULTS = {"phase": "test", "sampling": "uniform", "frames": 8, "frame_stride": 1, "clips": 1, "crops": 1,
            "twice": False, "draws": 1, "seed": 0}


@dataclass(frozen=True)
class Resolved:
    """A request with every field settled: the protocol, the clip rule and the test geometry."""

    protocol: protocols.Protocol
    phase: str
    video_frames: int
    frame_size: tuple | None
    clip: ClipRule
    crops: int
    short_side: int
    crop: int
    draws: int
    seed: int
    min_frames: int = 0


def resolve(request: dict) -> Resolved:
    """The request's protocol and fields: a zoo key's row first, then the request's own fields, then defaults."""
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(unknown)}: the fields are {', '.join(FIELDS)}")
    name = request.get("protocol")
    if not name:
        raise ProtocolError("a request needs a protocol (ibm, sifar, mmaction, ila, vidkit or a zoo key)")
    row = _zoo_fields(name)
    fields = {**DEFAULTS, **row, **{k: v for k, v in request.items() if v is not None}}
    proto = protocols.get(row.get("protocol", name))
    phase = fields["phase"]
    if phase not in ("test", "train"):
        raise ProtocolError(f"phase must be test or train, got {phase!r}")
    clip = ClipRule(_int(fields, "frames"), fields["sampling"], _int(fields, "frame_stride"), _int(fields, "clips"),
                    bool(fields["twice"]))
    crops = _int(fields, "crops")
    short, crop = _geometry(proto, fields, request, crops)
    n = _int(fields, "video_frames") if "video_frames" in fields else None
    if n is None:
        raise ProtocolError("a request needs video_frames")
    return Resolved(proto, phase, n, _size(fields.get("frame_size")), clip, crops, short, crop,
                    _int(fields, "draws"), _int(fields, "seed"), int(fields.get("min_frames", 0)))


def _zoo_fields(name: str) -> dict:
    if name in protocols.PROTOCOLS:
        return {}
    try:
        return zoo.find(name).protocol.request()
    except KeyError:
        raise ProtocolError(f"unknown protocol {name!r}: one of {', '.join(protocols.PROTOCOLS)} or a zoo key "
                            "(python -m models zoo)") from None


def _geometry(proto: protocols.Protocol, fields: dict, request: dict, crops: int) -> tuple[int, int]:
    """(short side, crop side): the row's or the protocol's defaults, then eval_scale and eval_crop."""
    crop, short = fields.get("crop"), fields.get("short_side")
    scale = request.get("eval_scale")
    if scale is not None:
        if float(scale) < 1:
            raise ProtocolError(f"eval_scale must be >= 1 (the crop must fit), got {scale}")
        short = int(round((crop or 224) * float(scale)))
    short, crop = proto.geometry(crops, crop, short)
    full = request.get("eval_crop")
    if full not in (None, "full"):
        raise ProtocolError(f"eval_crop must be null or \"full\", got {full!r}")
    return short, (short if full == "full" else crop)


def _int(fields: dict, key: str) -> int:
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{key} must be an integer, got {value!r}")
    return value


def _size(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.lower().split("x")
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ProtocolError(f"frame_size must be [width, height] (or WxH), got {value!r}") from None
    if w < 1 or h < 1:
        raise ProtocolError(f"frame_size must be positive, got {w}x{h}")
    return w, h


# --------------------------------------------------------------------------------------------- answers


def test_views(r: Resolved) -> list[dict]:
    """Every (temporal view, crop) of the request: indices, resize, box (and flip for a mirrored crop)."""
    if r.frame_size is None:
        raise ProtocolError("a test request needs frame_size (the video's width and height)")
    clips = r.protocol.test_clips(r.video_frames, r.clip)
    boxes = r.protocol.boxes(*r.frame_size, r.crops, r.crop, r.short_side)
    out = []
    for indices in clips:
        for b in boxes:
            view = {"indices": [int(i) for i in indices], "resize": list(b.resize), "box": list(b.box)}
            if b.flip:
                view["flip"] = True
            out.append(view)
    return out


def train_draws(r: Resolved) -> list[dict]:
    """`draws` training clips from the loader's generator: draw d is video d's in epoch 0 with seed `seed`."""
    if r.draws < 1:
        raise ProtocolError(f"draws must be >= 1, got {r.draws}")
    return [{"indices": [int(i) for i in r.protocol.train_clip(r.video_frames, r.clip, sample_rng(r.seed, 0, d))]}
            for d in range(r.draws)]


def answer(request: dict) -> dict:
    """One request's answer line; a refused request answers {"error": one line}."""
    try:
        if not isinstance(request, dict):
            raise ProtocolError("a request is a JSON object")
        r = resolve(request)
        return {"draws": train_draws(r)} if r.phase == "train" else {"views": test_views(r)}
    except (ProtocolError, ValueError, TypeError) as e:
        return {"error": str(e).splitlines()[0]}


def run_batch(lines, out) -> int:
    """Answer each JSON line of `lines` on `out`; returns how many were refused."""
    refused = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except json.JSONDecodeError as e:
            result = {"error": f"line {number}: not JSON ({e.msg})"}
        else:
            result = answer(request)
        refused += "error" in result
        out.write(json.dumps(result) + "\n")
    return refused


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval views", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--batch", default="", help="a JSON-lines file of requests ('-': standard input)")
    p.add_argument("--protocol", default="", help="ibm, sifar, mmaction, ila, vidkit or a zoo key")
    p.add_argument("--phase", choices=("test", "train"), default=None)
    p.add_argument("--video-frames", type=POSITIVE_INT, default=None, help="the video's length in frames")
    p.add_argument("--frame-size", default=None, help="WxH of the video's frames")
    p.add_argument("--sampling", choices=protocols.SAMPLINGS, default=None)
    p.add_argument("--frames", type=POSITIVE_INT, default=None, help="frames per clip")
    p.add_argument("--frame-stride", type=POSITIVE_INT, default=None,
                   help="dense: the stride; ibm/sifar uniform: frames_per_group")
    p.add_argument("--clips", type=POSITIVE_INT, default=None)
    p.add_argument("--crops", type=POSITIVE_INT, default=None, help="1 (centre), 3 or 10 (where the protocol has it)")
    p.add_argument("--twice", action="store_true", default=None, help="mmaction's twice_sample")
    p.add_argument("--eval-scale", type=POSITIVE_FLOAT, default=None, help="short side = crop x this")
    p.add_argument("--eval-crop", choices=("full",), default=None, help="crops as large as the short side")
    p.add_argument("--draws", type=POSITIVE_INT, default=None, help="training draws to print (--phase train)")
    p.add_argument("--seed", type=COUNT, default=None)
    p.add_argument("--json", action="store_true", help="print the JSON list instead of a table")
    add_debug_option(p)
    return p


def main(argv=None) -> int:
    return run_main("eval views", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.batch:
        lines = sys.stdin if args.batch == "-" else _open_batch(args.batch)
        if lines is None:
            return 2
        run_batch(lines, sys.stdout)
        return 0
    request = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
    result = answer(request)
    if "error" in result:
        print(f"eval views: error: {result['error']}", file=sys.stderr)
        return 2
    items = result.get("views", result.get("draws"))
    print(json.dumps(items) if args.json else _table(items))
    return 0


def _open_batch(path: str):
    try:
        with open(path) as f:
            return f.readlines()
    except OSError as e:
        print(f"eval views: error: cannot read {path}: {e.strerror}", file=sys.stderr)
        return None


def _table(items: list[dict]) -> str:
    rows = [f"{'#':>3}  {'resize':>9}  {'box':>19}  flip  indices"] if "box" in items[0] else [f"{'#':>3}  indices"]
    for k, v in enumerate(items):
        frames = " ".join(map(str, v["indices"]))
        if "box" in v:
            resize, box = "x".join(map(str, v["resize"])), ",".join(map(str, v["box"]))
            rows.append(f"{k:>3}  {resize:>9}  {box:>19}  {'yes' if v.get('flip') else '':>4}  {frames}")
        else:
            rows.append(f"{k:>3}  {frames}")
    return "\n".join(rows)

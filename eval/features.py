"""python -m eval features --ckpt CKPT [--data DIR] [--split val] [--clips N --crops M] [--twice] [--per-view]
[--out DIR]

Pre-logit embeddings of every video: the clip embedding the model's classifier takes (`forward_features`, then
`forward_head(pre_logits=True)`; for ILA's text classifier the normalised video embedding), of the same test
views as `python -m eval`, averaged per video (or every view's with --per-view). Writes features.npy (float32,
videos x D, or videos x views x D) and features_index.json (ids, labels, class names, model, checkpoint, split,
views, twice_sample) next to the checkpoint (or --out). A video with an unreadable view is left out and listed
under "damaged". --twice adds mmaction's twice-sample views (tsn sampling), as it does for `python -m eval`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from prep.cli import run_main

from .cli import EXPECTED, add_view_args, augment_overrides, views_label


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval features", description=__doc__.split("\n\n")[0])
    add_view_args(p)
    p.add_argument("--per-view", action="store_true", help="keep every view's embedding (videos x views x D) "
                   "instead of their mean")
    return p


def main(argv=None) -> int:
    return run_main("eval features", _main, argv, expected=EXPECTED)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from runtime.dist import setup_distributed  # torch: only once the arguments are known to be good

    from .dump import FEATURES
    from .embedding import extract_features
    from .run import MissingData

    d = setup_distributed(args.device)
    try:
        index = extract_features(
            args.ckpt, d, data=args.data, split=args.split, clips=args.clips, crops=args.crops,
            batch_size=args.batch_size, out_dir=args.out, amp=args.amp, py_workers=args.py_workers,
            use_ema=not args.no_ema, progress=not args.no_progress, num_frames=args.frames, sampling=args.sampling,
            frame_stride=args.frame_stride, augment=augment_overrides(args), per_view=args.per_view,
            twice=args.twice, protocol=args.protocol)
    except MissingData as e:
        raise MissingData(f"{e}: pass --data (a prepped store to embed)") from None
    if d.main:
        damaged = f", {len(index['damaged'])} damaged videos left out" if index["damaged"] else ""
        print(f"{index['model']}: {index['dim']}-d embeddings ({views_label(index)} views{damaged}) -> "
              f"{os.path.join(index['out_dir'], FEATURES)}")
        print(json.dumps(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m train --model NAME --data PREPPED [--config configs/X.yaml] [--key value ...]
   python -m train average RUNDIR --top K [--out FILE]   (weights of the K best kept checkpoints, averaged)

torchrun-compatible: `torchrun --nproc-per-node 8 -m train ...` (see `make train`).
Every TrainConfig field is an option (below, by group; also a key of --config's YAML file); an unknown key or a
value not of its key's type (a YAML string for a number or a bool) is a one-line error before anything runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from prep.cli import DEBUG_ENV, DEBUG_FLAG, POSITIVE_INT, add_debug_option, run_main
from prep.remote import add_cache_args
from runtime.printing import printable

from .config import load_config


def main(argv=None) -> int:
    """Expected failures (a bad config, a damaged input, Ctrl-C before the run's own handling) are one line
    (prep.cli.run_main)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "average":
        return run_main("train average", average, argv[1:])
    return run_main("train", _train, argv)


def _train(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in ("-h", "--help"):
        from .config import help_text

        print(__doc__ + help_text())
        print("  --cache-dir, --cache-limit: the node-local cache of an s3:// --data store (README, Data on object "
              "storage)")
        print(f"  {DEBUG_FLAG}: print the traceback of an expected failure too (or set {DEBUG_ENV}=1)")
        return 0
    cfg = load_config(_without_cache_options(argv))
    from .engine import Trainer
    from runtime.dist import setup_distributed

    trainer = Trainer(cfg, setup_distributed(cfg.device))
    from .guard import RunStopped

    try:
        row = trainer.fit()
    except RunStopped as e:  # diverged, interrupted, disk full: the line says what was kept
        if trainer.d.main:
            print(f"train: {'error: ' if e.code == 1 else ''}{e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:  # a second Ctrl-C: abort without the checkpoint
        print("train: aborted by a second SIGINT; the last checkpoint written is kept", file=sys.stderr)
        return 130
    if trainer.d.main:
        _say_damage(trainer)
        print(json.dumps(printable({"run_dir": trainer.run_dir, **row})))
    return 0


def _without_cache_options(argv: list[str]) -> list[str]:
    """--cache-dir and --cache-limit (the node-local cache of an s3:// --data store) belong to the node, not to the
    run's config: parsing them sets them for this process and its ranks' workers."""
    p = argparse.ArgumentParser(prog="python -m train", add_help=False, allow_abbrev=False)
    add_cache_args(p)
    return p.parse_known_args(argv)[1]


def _say_damage(trainer) -> None:
    """Damaged stored videos were replaced as they were met (each logged then, by the rank that met it): the end of
    the run says so again, for every rank's (guard.DamageCounter gathers them each epoch), each video once."""
    damage = trainer.damage
    if damage.damaged:
        names = damage.names()
        print(f"train: {len(names)} damaged stored videos were replaced by readable ones in {damage.replaced} "
              f"samples ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
              f"`python -m prep verify {trainer.cfg.data}` lists them", file=sys.stderr)


def average(argv: list[str]) -> int:
    """python -m train average RUNDIR --top K [--out FILE]: the mean of the weights of the run's K best kept
    checkpoints (train with --keep_best K), written as a checkpoint that `python -m eval --ckpt` reads."""
    p = argparse.ArgumentParser(prog="python -m train average", description=average.__doc__)
    p.add_argument("run_dir")
    p.add_argument("--top", type=POSITIVE_INT, required=True, help="how many of the best kept checkpoints to average")
    p.add_argument("--out", default=None, help="output file (default RUNDIR/averaged_topK.pt)")
    add_debug_option(p)
    args = p.parse_args(argv)
    from .checkpoint import average_checkpoints  # torch: only once the arguments are known to be good

    out = average_checkpoints(args.run_dir, args.top, args.out)  # CheckpointError: a ValueError, one line
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m models list` | `python -m models info NAME [--num-classes C --frames T --size S] [--json]`."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from . import create_model, list_models
from .profile import describe
from .registry import resolve_name


def _contract_line(name: str) -> str:
    with torch.device("meta"):
        contract = create_model(name, num_classes=10).input_contract
    return f"{contract.layout}  {contract.num_frames:>2}x{contract.crop_size:<3}  {contract.sampling}"


def cmd_list(args) -> None:
    names = list_models(args.pattern)
    aliases = [n for n in list_models(args.pattern, include_aliases=True) if n not in names]
    width = max(map(len, names + aliases), default=0)
    for name in names:
        print(f"{name:<{width}}  {_contract_line(name)}")
    for alias in aliases:
        print(f"{alias:<{width}}  {_contract_line(alias)}  (alias of {resolve_name(alias)})")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M ({n:,})"


def cmd_info(args) -> None:
    info = describe(args.name, num_classes=args.num_classes, frames=args.frames, size=args.size)
    if args.json:
        print(json.dumps(info))
        return
    c = info["contract"]
    shape = "x".join(map(str, [1, c["num_frames"], 3, c["crop_size"], c["crop_size"]] if c["layout"] == "NTCHW"
                         else [1, 3, c["num_frames"], c["crop_size"], c["crop_size"]]))
    print(info["name"])
    print(f"  input        {c['layout']} {shape}, {c['sampling']} sampling (stride {c['frame_stride']})")
    print(f"  mean / std   {tuple(round(v, 4) for v in c['mean'])} / {tuple(round(v, 4) for v in c['std'])}")
    print(f"  parameters   {_millions(info['params'])}")
    print(f"  trainable    {_millions(info['trainable_params'])}")
    print(f"  GFLOPs/view  {info['gflops']:.2f} (multiply-accumulates, {args.num_classes} classes)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="registered models and aliases with their input contract")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'sifar*'")
    p_info = sub.add_parser("info", help="parameters and GFLOPs per view of one model")
    p_info.add_argument("name")
    p_info.add_argument("--num-classes", type=int, default=400)
    p_info.add_argument("--frames", type=int, default=None, help="default: the model's")
    p_info.add_argument("--size", type=int, default=None, help="crop size; default: the model's")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        {"list": cmd_list, "info": cmd_info}[args.command](args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m models list [PATTERN] [--contracts]` | `info NAME [--num-classes C --frames T --size S] [--json]` | `info --ckpt FILE`
| `zoo [PATTERN] [--project P] [--dataset D] [--json]` | `export --ckpt CKPT --format onnx|torchscript --out FILE`."""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

from prep.cli import POSITIVE_INT, add_debug_option, run_main
from prep.lists import read_class_list
from prep.outputs import check_writable, refuse_input_as_output

from . import zoo
from .registry import list_models, resolve_name

# The commands that build or read models import torch (models/factory.py, profile.py, export.py) when they run:
# `--help`, an argument error and `list` read only the registry and the zoo's table, in well under a second.


def _contract_line(name: str) -> str:
    import torch

    from .factory import create_model

    with torch.device("meta"):
        contract = create_model(name, num_classes=10).input_contract
    return f"  {contract.layout}  {contract.num_frames:>2}x{contract.crop_size:<3}  {contract.sampling}"


def cmd_list(args) -> None:
    names = list_models(args.pattern)
    aliases = [n for n in list_models(args.pattern, include_aliases=True) if n not in names]
    width = max(map(len, names + aliases), default=0)
    # the contracts are the built models' (every family imported, with torch): only when asked for
    contract = _contract_line if args.contracts else (lambda name: "")
    for name in names:
        print(f"{name:<{width}}{contract(name)}".rstrip())
    for alias in aliases:
        print(f"{alias:<{width}}{contract(alias)}  (alias of {resolve_name(alias)})")


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M ({n:,})"


def cmd_info(args) -> None:
    if bool(args.name) == bool(args.ckpt):
        raise ValueError("info takes a model NAME or --ckpt FILE")
    if args.ckpt:
        return cmd_info_ckpt(args)
    from .profile import describe

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


def _recognise(args) -> tuple:
    """(Recognized, model or None, overrides): the file through models.from_checkpoint's two halves; the model
    is built and loaded unless the origin needs what was not given (e.g. class names)."""
    from .checkpoints import recognize_file
    from .factory import build_recognized

    overrides = {} if args.frames is None else {"num_frames": args.frames}
    if args.classes:
        overrides["class_names"] = read_class_list(args.classes)  # a dataset folder, .json or text
    rec = recognize_file(args.ckpt, **overrides)
    if any(k not in overrides for k in rec.needs):
        return rec, None, overrides
    return rec, build_recognized(rec, args.ckpt, **overrides), overrides


def _ckpt_info(args) -> dict:
    rec, model, overrides = _recognise(args)
    built = {k: v for k, v in dict(rec.model_args, **overrides).items() if k != "class_names"}
    found = {"file": args.ckpt, "origin": rec.origin, "model": rec.model, "arguments": built,
             "notes": list(rec.notes), "needs": [k for k in rec.needs if k not in overrides]}
    if model is None:
        return found
    from .profile import count_params

    found.update(contract=model.input_contract.to_dict(), params=count_params(model))
    name = os.path.basename(args.ckpt)
    found["zoo"] = [e.key for e in zoo.ZOO if e.file_name == name and e.model == rec.model]
    return found


def cmd_info_ckpt(args) -> None:
    found = _ckpt_info(args)
    if args.json:
        print(json.dumps(found))
        return
    print(found["file"])
    print(f"  origin       {found['origin']}")
    print(f"  model        {found['model']}")
    print(f"  arguments    {zoo.args_text(found['arguments'])}")
    if "contract" in found:
        c = found["contract"]
        print(f"  contract     {c['layout']} {c['num_frames']}x{c['crop_size']}, {c['sampling']} sampling "
              f"(stride {c['frame_stride']}), mean {tuple(round(v, 4) for v in c['mean'])}, "
              f"std {tuple(round(v, 4) for v in c['std'])}")
        print(f"  parameters   {_millions(found['params'])}, loaded strictly")
    for need in found["needs"]:
        print(f"  needs        {need}: pass --classes (a prepped dataset or a file of class names) to build it")
    for note in found["notes"]:
        print(f"  note         {note}")
    for key in found.get("zoo", []):
        print(f"  zoo          {key}: {zoo.row(zoo.find(key))['command'] or 'not runnable yet'}")


def _selected(args) -> list:
    return [e for e in zoo.ZOO if fnmatch.fnmatch(e.key, args.pattern)
            and args.project in ("", e.project) and args.dataset in ("", e.dataset)]


def cmd_zoo(args) -> None:
    rows = [zoo.row(e) for e in _selected(args)]
    if not rows:
        raise ValueError(f"no zoo entry matches {args.pattern!r}{' in ' + args.project if args.project else ''}"
                         f"{' on ' + args.dataset if args.dataset else ''}")
    if args.json:
        print(json.dumps(rows))
        return
    table = [("key", "dataset", "top-1", "model (arguments)", "test views: frames, clips x crops, short/crop")]
    for r in rows:
        model = f"{r['model']} ({zoo.args_text(r['args'])})" if r["args"] else r["model"]
        table.append((r["key"], r["dataset"], f"{r['top1']:.2f}", model, r["protocol_text"]))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]) - 1)]
    for t in table:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(t, widths)) + "  " + t[-1])
    print("\nTo reproduce a row, save its file from the link (--json lists them) and prep its dataset:")
    for r in rows:
        print(f"\n# {r['key']}: {zoo.PROJECTS[r['project']].title}, {r['name']} ({r['file']})")
        print(r["command"] or f"# not yet: {r['unsupported'] or 'model ' + r['model'] + ' is not registered'}")
        if r["config"]:
            print(f"# fine-tuning from it: {r['config']}")



def cmd_export(args) -> None:
    from .export import export

    # before the model is built: the file is only written once it is made and checked, so a refusal costs nothing
    refuse_input_as_output([("--out", args.out)], [("--ckpt", args.ckpt), ("--classes", args.classes)])
    check_writable(os.path.dirname(os.path.abspath(args.out)), "--out")
    rec, model, overrides = _recognise(args)
    if model is None:
        raise ValueError(f"{args.ckpt}: {rec.origin} needs {', '.join(rec.needs)} (pass --classes)")
    diff = export(model, args.format, args.out)
    c = model.input_contract
    print(f"{args.out}: {rec.model} as {args.format}, input {c.layout} {c.num_frames}x{c.crop_size} "
          f"(contract stored in the file), max |logits - PyTorch| {diff:.2e}")


def main(argv=None) -> int:
    # RuntimeError: an export that its checker refuses, a checkpoint torch cannot read
    return run_main("models", _main, argv, expected=(RuntimeError,))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="registered models and aliases (--contracts: with their input contracts)")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'sifar*'")
    p_list.add_argument("--contracts", action="store_true", help="also each model's input contract (layout, "
                        "frames x crop, sampling): builds every model on the meta device, which takes seconds")
    p_info = sub.add_parser("info", help="parameters and GFLOPs per view of one model, or what a checkpoint is")
    p_info.add_argument("name", nargs="?", default="")
    p_info.add_argument("--ckpt", default="", help="a checkpoint file: the origin, model, arguments and contract "
                        "models.from_checkpoint finds in it")
    p_info.add_argument("--classes", default="", help="with --ckpt: class names for origins that need them "
                        "(a prepped dataset, its classes.json, or one name per line)")
    p_info.add_argument("--num-classes", type=POSITIVE_INT, default=400)
    p_info.add_argument("--frames", type=POSITIVE_INT, default=None, help="default: the model's")
    p_info.add_argument("--size", type=POSITIVE_INT, default=None, help="crop size; default: the model's")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_zoo = sub.add_parser("zoo", help="the released checkpoints of the source projects and how to evaluate them")
    p_zoo.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on the keys, e.g. 'ila-*'")
    p_zoo.add_argument("--project", default="", choices=("",) + tuple(zoo.PROJECTS))
    p_zoo.add_argument("--dataset", default="", choices=("",) + tuple(zoo.DATASETS))
    p_zoo.add_argument("--json", action="store_true", help="print a JSON list (with links and notes)")
    p_export = sub.add_parser("export", help="a checkpoint's model as ONNX or TorchScript, checked against PyTorch")
    p_export.add_argument("--ckpt", required=True)
    p_export.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p_export.add_argument("--out", required=True)
    p_export.add_argument("--frames", type=POSITIVE_INT, default=None, help="frames per clip (default: the checkpoint's)")
    p_export.add_argument("--classes", default="", help="class names for origins that need them")
    for p in sub.choices.values():
        add_debug_option(p)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    {"list": cmd_list, "info": cmd_info, "zoo": cmd_zoo, "export": cmd_export}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a model with its input contract: ONNX (checked with onnxruntime) or TorchScript.

`python -m models export --ckpt CKPT --format onnx|torchscript --out FILE`: the model is built from the
checkpoint by `models.from_checkpoint`, traced on an example clip of its contract, and the exported file is
run on another clip (batch 2, so a batch size baked into the graph shows) and compared with PyTorch; a
difference above `TOLERANCE` is an error, never a silent bad export. The contract (layout, frames, crop,
mean/std, sampling) travels inside the file: ONNX metadata `input_contract`, TorchScript extra file
`input_contract.json`.
"""
from __future__ import annotations

import json
import warnings

import torch
from torch import nn

from prep.outputs import atomic_path

from .checkpoints import load_torchscript

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
CONTRACT_KEY = "input_contract"
OPSET = 17


class ExportError(RuntimeError):
    pass


def export(model: nn.Module, fmt: str, out: str, check: bool = True) -> float:
    """Write `model` to `out`; returns the max |exported - PyTorch| logit difference on a fresh batch of 2.
    The export is written and checked under a temporary name and only then renamed to `out`: an export that fails
    (a full disk, a model that does not trace, a difference above TOLERANCE) leaves a file already at `out` as it
    was."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    model = model.eval()
    contract = model.input_contract
    example = contract.example_input(1)
    meta = json.dumps(contract.to_dict())
    with atomic_path(out) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values; the check below is the judge
            (_export_onnx if fmt == "onnx" else _export_torchscript)(model, example, tmp, meta)
        diff = check_export(model, fmt, tmp, name=out) if check else float("nan")
    return diff


def _export_onnx(model: nn.Module, example: torch.Tensor, out: str, meta: str) -> None:
    import onnx

    # the TorchScript-based exporter: it handles every family here; the dynamo one needs more per-model care
    torch.onnx.export(model, (example,), out, input_names=["clip"], output_names=["logits"], opset_version=OPSET,
                      dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    proto = onnx.load(out)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, meta
    onnx.save(proto, out)


def _export_torchscript(model: nn.Module, example: torch.Tensor, out: str, meta: str) -> None:
    traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, out, _extra_files={f"{CONTRACT_KEY}.json": meta})


def check_export(model: nn.Module, fmt: str, out: str, name: str = "") -> float:
    """`name`: the file the user asked for, said in the error (`out` may be its temporary name)."""
    x = model.input_contract.example_input(2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        got = run_exported(fmt, out, x)
    diff = (got - expected).abs().max().item()
    if not diff <= TOLERANCE:
        raise ExportError(f"{name or out}: the exported model differs from PyTorch by {diff:.3g} (> {TOLERANCE}); "
                          + ("not written" if name else "do not use it"))
    return diff


def run_exported(fmt: str, path: str, x: torch.Tensor) -> torch.Tensor:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"clip": x.numpy()})[0])
    return load_torchscript(path)(x)


def read_contract(fmt: str, path: str) -> dict:
    """The input contract stored in an exported file."""
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props[CONTRACT_KEY])
    files = {f"{CONTRACT_KEY}.json": ""}
    load_torchscript(path, _extra_files=files)
    return json.loads(files[f"{CONTRACT_KEY}.json"])

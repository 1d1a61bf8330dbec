"""Every model family exports to ONNX and TorchScript, and the exported file computes PyTorch's logits
(batch 2 after tracing with batch 1) and carries the input contract."""
from __future__ import annotations

import pytest
import torch

import models
from models.export import ExportError, check_export, export, read_contract

TINY = models.list_models("*_tiny")  # one tiny variant per family: a new family is covered when it registers one


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", TINY)
def test_every_family_exports(name, fmt, tmp_path):
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=5)
    out = str(tmp_path / f"{name}.{fmt}")
    diff = export(model, fmt, out)
    assert diff <= 1e-4
    stored = read_contract(fmt, out)
    assert models.InputContract(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()}) \
        == model.input_contract


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_sts_variant_exports(fmt, tmp_path):
    model = models.create_model("x3d_tiny", num_classes=5, sts=True)
    assert export(model, fmt, str(tmp_path / f"m.{fmt}")) <= 1e-4


def test_a_wrong_export_is_an_error(tmp_path):
    model = models.create_model("tsn_tiny", num_classes=5).eval()
    out = str(tmp_path / "m.onnx")
    export(model, "onnx", out)
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the file no longer matches the model it claims to be
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_export(model, "onnx", out)


def test_export_command_from_a_checkpoint(tmp_path, capsys):
    from models.__main__ import main

    model = models.create_model("i3d_tiny", num_classes=5, num_frames=4)
    ckpt = tmp_path / "best.pt"
    torch.save({"model_name": "i3d_tiny", "num_classes": 5, "classes": list("abcde"),
                "contract": model.input_contract.to_dict(), "config": {"model_args": {}}, "model": model.state_dict(),
                "ema": None}, ckpt)
    out = tmp_path / "m.onnx"
    assert main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    assert "max |logits - PyTorch|" in capsys.readouterr().out
    assert read_contract("onnx", str(out))["num_frames"] == 4
    assert main(["export", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err

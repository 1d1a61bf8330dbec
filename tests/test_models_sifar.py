"""SIFAR's released files (IBM/sifar-pytorch main.py: `{'model', 'model_ema', 'args', ...}`): the variant
comes from the file's `args` and shapes, the weights from `model`, and other variants are refused."""
import argparse
import re

import pytest
import torch

import models
from models import CheckpointError, create_model
from models.checkpoints import Checkpoint, recognize


def _authors_keys(model) -> dict:
    """Our SuperImageSwin state dict in the repo's layout: patch merging at the end of a stage, `head.`,
    and the index / mask buffers its Swin saves."""
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        out[key.replace("head.fc.", "head.")] = value
    for name, buffer in model.named_buffers():
        if name.endswith(("relative_position_index", "attn_mask")) and buffer is not None:
            out[name] = buffer
    return out


def _args(model: str, duration: int, rows: int, hpe: bool = True, classes: int = 5) -> argparse.Namespace:
    return argparse.Namespace(model=model, duration=duration, super_img_rows=rows, hpe_to_token=hpe,
                              num_classes=classes, dataset="kinetics400", model_ema=True)


def _save_authors_file(path, model, ema, args) -> str:
    torch.save({"model": _authors_keys(model), "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "args": args,
                "scaler": {}, "max_accuracy": 0.0, "model_ema": _authors_keys(ema)}, path)
    return str(path)


def _random_sifar(seed: int, **kwargs):
    torch.manual_seed(seed)
    model = create_model("sifar_tiny", num_classes=5, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("frames, hpe", [(4, True), (3, False)])
def test_sifar_file_builds_its_args_variant_with_the_model_weights(tmp_path, frames, hpe):
    source = _random_sifar(0, num_frames=frames, hpe_to_token=hpe)
    ema = _random_sifar(1, num_frames=frames, hpe_to_token=hpe)
    path = _save_authors_file(tmp_path / "model_best.pth", source, ema,
                              _args("sifar_tiny_patch4_window4_32_2x2", frames, 2, hpe=hpe))
    model = models.from_checkpoint(path).eval()
    assert (model.frame_pos_embed is not None) == hpe and model.num_frames == frames
    clips = source.input_contract.example_input(2)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), source(clips), rtol=0, atol=0)  # `model`, not `model_ema`
    create_model("sifar_tiny", num_classes=5, num_frames=frames, hpe_to_token=hpe, pretrained=path)


def test_sifar_file_of_another_variant_is_refused_in_one_line(tmp_path):
    source = _random_sifar(0)
    path = _save_authors_file(tmp_path / "model_best.pth", source, source,
                              _args("sifar_tiny_patch4_window4_32_2x2", 4, 2))
    for kwargs, message in [({"hpe_to_token": False}, "hpe_to_token=False vs"),
                            ({"window_size": 2}, r"window_size=\(2, 2, 2, 2\), hpe_to_token=True vs")]:
        with pytest.raises(CheckpointError, match=message) as err:
            create_model("sifar_tiny", num_classes=5, pretrained=path, **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="6 frames make a 2x3 super image"):
        models.from_checkpoint(path, num_frames=6)


def test_sifar_file_with_an_unknown_model_name_or_contradicting_args_is_refused(tmp_path):
    source = _random_sifar(0)
    path = _save_authors_file(tmp_path / "a.pth", source, source, _args("sifar_mystery", 4, 2))
    with pytest.raises(CheckpointError, match="'sifar_mystery' is not one of the repo's"):
        models.from_checkpoint(path)
    path = _save_authors_file(tmp_path / "b.pth", source, source,
                              _args("sifar_tiny_patch4_window4_32_2x2", 4, 2, hpe=False))
    with pytest.raises(CheckpointError, match="hpe_to_token=False but whose weights"):
        models.from_checkpoint(path)


@pytest.mark.parametrize("name, frames, rows, size, windows, registered", [
    ("sifar_base_patch4_window14_224_3x3", 8, 3, 224, (14, 14, 14, 21), True),
    ("sifar_base_patch4_window14_224_4x4", 16, 4, 224, (14, 14, 14, 28), True),
    ("sifar_base_patch4_window12_192_3x3", 8, 3, 192, (12, 12, 12, 18), True),
    ("sifar_base_patch4_window7_224", 8, 3, 224, (7, 7, 7, 7), True),
    ("sifar_base_patch4_window24_384_4x4", 16, 4, 384, (24, 24, 24, 48), False),
    ("sifar_base_patch4_window7_224_3x3_big", 8, 3, 224, (7, 7, 7, 21), False),
])
def test_sifar_variant_comes_from_args_and_shapes(name, frames, rows, size, windows, registered):
    with torch.device("meta"):  # the authors' model, as this toolkit builds it
        authors = create_model("sifar_base_patch4_window7_224", num_frames=frames, super_img_rows=rows,
                               img_size=size, window_size=windows, hpe_to_token=True)
    sd = _authors_keys(authors)
    container = {"model": sd, "args": _args(name, frames, rows, classes=400)}
    rec = recognize(Checkpoint("model_best.pth", container, sd))
    assert rec.model == (name if registered else "sifar_base_patch4_window7_224")
    assert (rec.model_args["img_size"], rec.model_args["window_size"]) == (size, windows)
    with torch.device("meta"):
        model = create_model(rec.model, **rec.model_args)
    assert model.extra_repr() == authors.extra_repr()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in rec.state_dict.items()}

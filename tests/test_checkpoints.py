"""models.from_checkpoint: reading never runs code, unknown or damaged files are refused in one line,
toolkit checkpoints round-trip, and a file is never loaded into another variant."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import models
from models.checkpoints import CheckpointError, read_checkpoint


class _Exploit:
    """Unpickling this calls os.system: what a crafted checkpoint does to a plain torch.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused.*posix.system|refused.*os.system") as err:
        models.from_checkpoint(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError):
        models.create_model("tsn_tiny", num_classes=5, pretrained=str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", pickle.dumps([1, 2])[:5]])
def test_empty_truncated_or_garbage_file_is_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_origin_names_its_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.block.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of a supported origin.*encoder.block.weight"):
        models.from_checkpoint(str(path))
    torch.save({"weights": {"encoder.block.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="no tensors found.*weights"):
        models.from_checkpoint(str(path))


def _toolkit_file(tmp_path, model, **extra):
    path = tmp_path / "best.pt"
    state = {"model_name": model.model_name, "num_classes": 5, "classes": list("abcde"),
             "contract": model.input_contract.to_dict(), "config": {"model_args": {}, "data": "/x"},
             "model": model.state_dict(), "ema": None}
    state.update(extra)
    torch.save(state, path)
    return str(path)


def test_toolkit_checkpoint_round_trips_with_contract_and_classes(tmp_path):
    torch.manual_seed(0)
    model = models.create_model("tsn_tiny", num_classes=5, num_frames=4).eval()
    path = _toolkit_file(tmp_path, model)
    loaded = models.from_checkpoint(path).eval()
    x = model.input_contract.example_input(2)
    assert torch.equal(loaded(x), model(x))
    assert loaded.input_contract == model.input_contract and loaded.checkpoint_classes == list("abcde")
    with pytest.raises(CheckpointError, match="5 classes, not the 7 asked for"):
        models.from_checkpoint(path, num_classes=7)
    assert models.from_checkpoint(path, num_classes=7, reset_head=True).fc.out_features == 7


def test_toolkit_checkpoint_prefers_ema_unless_told(tmp_path):
    model = models.create_model("tsn_tiny", num_classes=5, num_frames=4)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = _toolkit_file(tmp_path, model, ema=ema)
    key = "fc.weight"
    assert torch.equal(models.from_checkpoint(path).state_dict()[key], ema[key])
    assert torch.equal(models.from_checkpoint(path, use_ema=False).state_dict()[key], model.state_dict()[key])


def test_safetensors_file_loads_as_pretrained(tmp_path):
    from safetensors.torch import save_file

    model = models.create_model("tsn_tiny", num_classes=5, num_frames=4)
    path = str(tmp_path / "w.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    other = models.create_model("tsn_tiny", num_classes=5, num_frames=4, pretrained=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_file_of_another_variant_is_refused_as_pretrained(tmp_path):
    """A toolkit file of TSM (no parameters of its own) must not load silently into TSN."""
    model = models.create_model("tsm_tiny", num_classes=5, num_frames=4)
    path = _toolkit_file(tmp_path, model)
    with pytest.raises(CheckpointError, match="another variant"):
        models.create_model("tsn_tiny", num_classes=5, num_frames=4, pretrained=path)


def test_an_explicit_argument_may_differ_from_the_file_but_an_unsaid_one_may_not(tmp_path, caplog):
    """STS pre-training fine-tuned with sts=False shares every weight: asked for, it loads (and says so);
    left unsaid, the file's STS variant must not load silently into a plain model."""
    model = models.create_model("x3d_tiny", num_classes=5, num_frames=4, sts=True)
    path = tmp_path / "best.pt"
    torch.save({"model_name": "x3d_tiny", "num_classes": 5, "classes": list("abcde"),
                "contract": model.input_contract.to_dict(), "config": {"model_args": {"sts": True}},
                "model": model.state_dict(), "ema": None}, path)
    with pytest.raises(CheckpointError, match="another variant"):
        models.create_model("x3d_tiny", num_classes=5, num_frames=4, pretrained=str(path))
    with caplog.at_level("INFO"):
        plain = models.create_model("x3d_tiny", num_classes=5, num_frames=4, sts=False, pretrained=str(path))
    assert "given explicitly" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))


def test_each_rank_resumes_its_own_rng_state_and_a_changed_world_is_told():
    from train.checkpoint import rank_rng_state

    ranks = [{"r": 0}, {"r": 1}]
    state = {"rng": ranks[0], "rng_ranks": ranks}
    assert rank_rng_state(state, 1, 2) == ({"r": 1}, None)
    assert rank_rng_state({"rng": {"r": 0}}, 0, 1) == ({"r": 0}, None)  # written before per-rank states
    own, warning = rank_rng_state(state, 3, 4)
    assert own == {"r": 1} and "2 process(es) and this run has 4" in warning
    own, warning = rank_rng_state({"rng": {"r": 0}, "rng_ranks": None}, 1, 2)
    assert own == {"r": 0} and warning

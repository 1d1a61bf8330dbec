"""Checks generated from the registry: every model keeps its input contract, every tiny model trains.

Full-size models are only built and run on the meta device (shapes, no arithmetic); the `*_tiny`
variants run for real on the CPU.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from bench.models import bench_one, select_models
from models.profile import count_params, to_channels_last
from models import create_model, list_models
from models.__main__ import main as models_cli

ALL = list_models()
TINY = list_models("*_tiny")
NUM_CLASSES = 7


def _tiny(name: str, batch: int = 2):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    return model, model.input_contract.example_input(batch)


def test_registry_has_tiny_variants():
    assert {"tsn_tiny", "tsm_tiny", "tam_tiny", "sifar_tiny"} <= set(TINY)


@pytest.mark.parametrize("name", ALL)
def test_meta_forward_matches_contract(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=NUM_CLASSES)
    contract = model.input_contract
    keys = model.state_dict().keys()
    assert model.head_names and all(any(k.startswith(p) for k in keys) for p in model.head_names), model.head_names
    out = model(contract.example_input(2, device="meta"))
    assert out.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", TINY)
def test_tiny_contract_is_small(name):
    with torch.device("meta"):
        contract = create_model(name, num_classes=NUM_CLASSES).input_contract
    assert 32 <= contract.crop_size <= 64 and 4 <= contract.num_frames <= 8, contract


@pytest.mark.parametrize("name", TINY)
def test_tiny_trains(name):
    """Finite loss; every trainable parameter is connected to the loss at once, and gets a non-zero gradient
    within a few updates (zero-initialised layers, e.g. the last BN of a residual branch or an adapter's
    output projection, block the gradient of the layers before them until they have moved)."""
    model, clips = _tiny(name)
    labels = torch.arange(2) % NUM_CLASSES
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    learning = set()
    for _ in range(4):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(clips), labels)
        assert math.isfinite(loss.item())
        loss.backward()
        broken = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not broken, f"no or non-finite gradient for {broken[:5]}"
        learning |= {n for n, p in trainable.items() if p.grad.abs().sum() > 0}
        if len(learning) == len(trainable):
            break
        optimizer.step()
    dead = sorted(set(trainable) - learning)
    assert not dead, f"zero gradient in 4 updates for {dead[:5]}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_bf16_autocast(name, compute_dtypes):
    model, clips = _tiny(name, batch=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.eval()(clips)
        assert compute_dtypes(model, clips) == {torch.bfloat16}  # every conv and linear layer ran in bf16
    assert out.shape == (1, NUM_CLASSES) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", TINY)
def test_tiny_channels_last_gives_same_logits(name):
    model, clips = _tiny(name, batch=1)
    model.eval()
    with torch.no_grad():
        expected = model(clips)
        out = to_channels_last(model)(clips.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # dynamo tracing takes seconds per model, even with the eager backend
@pytest.mark.parametrize("name", TINY)
def test_tiny_compiles_without_graph_break(name):
    model, clips = _tiny(name, batch=1)
    model.eval()
    torch._dynamo.reset()  # a fresh cache per model: shared code objects would count as recompiles
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(clips), model(clips), rtol=1e-4, atol=1e-4)


def test_unknown_model_names_it():
    with pytest.raises(ValueError, match="no_such_net"):
        create_model("no_such_net")


def test_missing_pretrained_file(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_model("tsn_tiny", num_classes=NUM_CLASSES, pretrained=str(missing))


def test_cli_info_json(capsys):
    assert models_cli(["info", "tsn_tiny", "--num-classes", "10", "--frames", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"params", "trainable_params", "gflops"} <= info.keys()
    assert info["params"] == info["trainable_params"] > 0 and info["gflops"] > 0
    assert info["contract"]["num_frames"] == 4


def test_cli_unknown_model_exits_2(capsys):
    assert models_cli(["info", "no_such_net"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_net" in err and "\n" not in err


def test_cli_list_shows_contracts(capsys):
    assert models_cli(["list", "--contracts", "ts?_tiny"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["tsm_tiny", "tsn_tiny"]
    assert all("NTCHW" in line and "8x64" in line for line in lines)


def test_bench_models_times_a_tiny_model():
    assert select_models("ts?_tiny", torch.device("cpu")) == ["tsm_tiny", "tsn_tiny"]
    with pytest.raises(ValueError, match="no_such_net"):
        select_models("tsn_tiny,no_such_net", torch.device("cpu"))
    row = bench_one("tsn_tiny", torch.device("cpu"), batch=2, steps=1, warmup=0, channels_last=True)
    assert row["channels_last"] and row["clips_per_s"] > 0 and row["input"] == "8x3x64x64"


def test_bench_models_puts_a_reference_twin_beside_ours(monkeypatch):
    import bench.models as bench_models
    from torchvision.models.video.resnet import BasicBlock, BasicStem, Conv3DSimple, VideoResNet

    def small_twin(num_classes):
        return VideoResNet(BasicBlock, [Conv3DSimple] * 4, [1, 1, 1, 1], BasicStem, num_classes=num_classes)

    small_twin.label = "torchvision small r3d"
    monkeypatch.setitem(bench_models.TWINS, "r3d_tiny", small_twin)
    ours, twin = bench_models.bench_with_twin("r3d_tiny", torch.device("cpu"), batch=2, steps=1, warmup=0,
                                              channels_last=False)
    assert (ours["model"], twin["model"]) == ("r3d_tiny", "torchvision small r3d")
    assert ours["input"] == twin["input"] == "3x8x64x64"  # the twin runs on our model's clips
    assert ours["vs_twin"] == pytest.approx(ours["clips_per_s"] / twin["clips_per_s"])
    assert "vs_twin" not in twin
    assert bench_models.bench_with_twin("tsn_tiny", torch.device("cpu"), 2, 1, 0, False)[0].keys() >= {"clips_per_s"}
    assert bench_models.twinned(["tsn_tiny", "r3d_tiny"]) == ["r3d_tiny"]  # --twins-only keeps the twinned
    with pytest.raises(ValueError, match="none of tsn_tiny has a twin"):
        bench_models.twinned(["tsn_tiny"])
    # the real twins have our models' parameter counts: they are the same architectures
    for name, build in bench_models.TWINS.items():
        if name == "r3d_tiny":
            continue
        with torch.device("meta"):
            assert count_params(create_model(name, num_classes=400)) == count_params(build(400)), name

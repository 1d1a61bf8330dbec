"""`eval ensemble` weights: normalised without overflow, and fused scores checked finite (never all-zero scores
written with exit 0)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.dump import load_scores, save_scores
from eval.ensemble import main as ensemble_main
from eval.fusion import normalised_weights

CLASSES = ["a", "b", "c"]


def _dump(folder, scores: np.ndarray) -> str:
    folder.mkdir()
    rows = [{"id": f"v{i}", "label": i % len(CLASSES)} for i in range(len(scores))]
    save_scores(str(folder), torch.from_numpy(scores.astype(np.float32)), rows, CLASSES,
                {"model": folder.name, "split": "val"})
    return str(folder)


def _two_dumps(tmp_path, second=None):
    rng = np.random.default_rng(0)
    a = rng.dirichlet(np.ones(len(CLASSES)), size=6)
    b = rng.dirichlet(np.ones(len(CLASSES)), size=6) if second is None else second
    return a, b, _dump(tmp_path / "a", a), _dump(tmp_path / "b", b)


@pytest.mark.parametrize("weights", [["1e308", "1e308"], ["1.7e308", "1e308"], ["1e-320", "1e-320"]])
def test_huge_or_tiny_equal_weights_fuse_as_the_plain_mean(tmp_path, weights):
    a, b, da, db = _two_dumps(tmp_path)
    out = tmp_path / "fused"
    assert ensemble_main([da, db, "--weights", *weights, "--out", str(out)]) == 0
    fused, _ = load_scores(str(out))
    w = np.array([float(x) for x in weights]) / max(float(x) for x in weights)
    expected = (w[0] * a + w[1] * b) / w.sum()
    assert np.isfinite(fused).all() and fused.any()
    np.testing.assert_allclose(fused, expected, atol=1e-6)


@pytest.mark.parametrize("weights", [["inf", "1"], ["nan", "1"], ["0", "0"], ["-1", "2"]])
def test_weights_that_cannot_be_normalised_are_refused_in_one_line(tmp_path, capsys, weights):
    _, _, da, db = _two_dumps(tmp_path)
    out = tmp_path / "fused"
    try:  # inf, nan and negative weights are refused by the option's type at parse time (argparse exits 2)
        code = ensemble_main([da, db, "--weights", *weights, "--out", str(out)])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--weights" in err.splitlines()[-1] and "Traceback" not in err, err
    assert not out.exists()


def test_a_dump_holding_nan_is_refused_and_named(tmp_path, capsys):
    bad = np.full((6, len(CLASSES)), np.nan)
    _, _, da, db = _two_dumps(tmp_path, second=bad)
    out = tmp_path / "fused"
    assert ensemble_main([da, db, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not finite" in err and db in err, err
    assert not out.exists()


def test_shares_sum_to_one_and_keep_ratios():
    assert normalised_weights([3.0, 1.0]) == [0.75, 0.25]
    assert sum(normalised_weights([1e308] * 5)) == pytest.approx(1.0)

"""Warnings: the library notes a user would see on every run are silenced where the product calls the library, with
the same results; and pyproject.toml's filters fail a test on a deprecated call or a leaked file in our packages."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoints import CheckpointError, read_checkpoint
from models.export import read_contract

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- RandAugment (DALI)


def _rand_augment_pixels(suite, images: list[np.ndarray], ops: list[int], signs: list[int]) -> np.ndarray:
    """Each image through operation ops[i] of `suite` at magnitude 9 with sign signs[i], as augment_units runs it."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.auto_aug.core import select, signed_bin

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None, seed=0, enable_conditionals=True)
    def graph():
        image = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        op = fn.external_source(source=lambda: [np.int32(o) for o in ops], batch=True)
        sign = fn.external_source(source=lambda: [np.int32(s) for s in signs], batch=True)
        return select(suite, op, data=image, magnitude_bin=signed_bin(9, random_sign=sign), num_magnitude_bins=31,
                      fill_value=128, interp_type=None)

    pipe = graph()
    pipe.build()
    return np.stack([np.array(t) for t in pipe.run()[0]])


def test_rand_augment_suite_gives_dalis_pixels_without_its_deprecation_note():
    """DALI's own suite calls fn.experimental.filter/equalize, whose deprecation DALI prints on every pipeline
    build; ours calls the same operators by their current names: every operation, both signs, the same pixels."""
    from nvidia.dali.auto_aug.rand_augment import get_rand_augment_suite

    from pipelines.augment_units import RAND_AUGMENT_OPS, rand_augment_suite

    rng = np.random.default_rng(0)
    ops = [op for op in range(RAND_AUGMENT_OPS) for _ in (0, 1)]
    signs = [0, 1] * RAND_AUGMENT_OPS
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in ops]
    with warnings.catch_warnings(record=True) as noted:
        warnings.simplefilter("always")
        ours = _rand_augment_pixels(rand_augment_suite(), images, ops, signs)
    assert not [w for w in noted if issubclass(w.category, DeprecationWarning)], [str(w.message) for w in noted]
    with warnings.catch_warnings(record=True):  # DALI prints its note whatever the filters say; recording keeps it
        theirs = _rand_augment_pixels(get_rand_augment_suite(), images, ops, signs)
    np.testing.assert_array_equal(ours, theirs)
    names = [aug.name for aug in rand_augment_suite()]
    for name in ("sharpness", "equalize"):  # the replaced operations did change the pixels
        i = 2 * names.index(name)
        assert (ours[i] != images[i]).any()


# ------------------------------------------------------------------------------------------- torch loading


def _legacy_protocol_4(path: Path) -> None:
    torch.save({"fc.weight": torch.ones(2, 3)}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)


@pytest.mark.parametrize("write", [lambda path: path.write_bytes(pickle.dumps([1, 2], protocol=4)[:5]),
                                   _legacy_protocol_4], ids=["garbage", "legacy-protocol-4"])
def test_a_file_pickled_with_protocol_4_is_one_error_without_torchs_note(tmp_path, write):
    """torch's weights-only unpickler notes 'Detected pickle protocol 4 ... please file an issue' before it fails
    (it reads no protocol-4 file): the user gets only our line."""
    path = tmp_path / "file.pt"
    write(path)
    with warnings.catch_warnings(record=True) as noted:  # not "error": torch turns any error inside into its own
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError):
            read_checkpoint(str(path))
    assert not noted, [str(w.message) for w in noted]


def test_reading_a_torchscript_export_gives_no_deprecation_note(tmp_path):
    """`models export --format torchscript` checks its file, and CLIP ships TorchScript: torch.jit.load's
    FutureWarning (every load, 'switch to torch.export') is not for the user to act on."""
    path = str(tmp_path / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scripting and saving: only the reading side is the product's here
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), path, _extra_files={"input_contract.json": '{"a": 1}'})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_contract("torchscript", path) == {"a": 1}
        assert set(read_checkpoint(path).state_dict) == {"weight", "bias"}


# ------------------------------------------------------------------------------------------- the suite's filters

INNER_TESTS = '''
import warnings

def _module(name, filename, source):
    namespace = {"__name__": name}
    exec(compile(source, filename, "exec"), namespace)
    return namespace

LEAKY = "def leak(path):\\n    return open(path).read()\\n"
OURS = _module("prep.leaky", "/somewhere/prep/leaky.py", LEAKY)
THEIRS = _module("somelib.leaky", "/venv/site-packages/somelib/models/leaky.py", LEAKY)
OLD = _module("models.old", "/somewhere/models/old.py",
              "import warnings\\ndef old():\\n    warnings.warn('old API', DeprecationWarning)\\n")

def test_our_leak(tmp_path):
    (tmp_path / "f").write_text("x")
    OURS["leak"](tmp_path / "f")

def test_a_librarys_leak(tmp_path):
    (tmp_path / "f").write_text("x")
    THEIRS["leak"](tmp_path / "f")

def test_our_deprecated_call():
    OLD["old"]()

def test_a_librarys_deprecated_call():
    warnings.warn_explicit("old API", DeprecationWarning, "/venv/site-packages/somelib/x.py", 1, module="somelib.x")
'''


def test_the_suites_filters_fail_our_leaks_and_deprecations_only(tmp_path):
    """pyproject.toml's filterwarnings, run by pytest on stand-in modules named as ours and as a library's."""
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                          str(tmp_path), "-q", "-p", "no:randomly", "-rfE", str(tmp_path / "test_inner.py")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    out = run.stdout + run.stderr
    assert "2 failed, 2 passed" in out, out
    assert "FAILED test_inner.py::test_our_leak - pytest.PytestUnraisableExceptionWarning" in out, out
    assert "FAILED test_inner.py::test_our_deprecated_call - DeprecationWarning: old API" in out, out

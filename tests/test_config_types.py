"""Every config value is checked against its declared type before anything runs, strictly: in a YAML file a
string is not a bool or a number ("false", "1e-3"), on the command line text is read as the key's type; the
`augment` sub-keys by pipelines.AugmentConfig's annotations, `model_args` by the builder's signature. And every
key has a one-line description, from one source, that `python -m train --help` prints by group."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from train.__main__ import main as train_main
from train.config import GROUPS, ConfigError, TrainConfig, help_text, load_config

ROOT = __file__.rsplit("/tests/", 1)[0]


def _yaml(tmp_path, text: str) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return ["--config", str(path), "--data", "d", "--model", "tsn_tiny"]


# (YAML line, the key the refusal names, words it must hold)
YAML_CASES = [
    ('ema: "false"', "'ema'", ["expected bool", "'false'", "write false without quotes"]),
    ("lr: 1e-3", "'lr'", ["expected float", "'1e-3'", "0.001"]),
    ('epochs: "3"', "'epochs'", ["expected int", "'3'", "write 3 without quotes"]),
    ("epochs: 3.0", "'epochs'", ["expected int", "3.0"]),
    ("nesterov: 1", "'nesterov'", ["expected bool", "got 1"]),
    ("batch_size: true", "'batch_size'", ["expected int", "True"]),
    ("optimizer: 3", "'optimizer'", ["expected str", "got 3"]),
    ("betas: [0.9, \"0.98\"]", "'betas'", ["expected float", "'0.98'"]),
    ('lr_mult: {"fc.*": "1e1"}', "'lr_mult.fc.*'", ["expected float", "'1e1'"]),
    ("augment: {flip: \"false\"}", "'augment.flip'", ["expected bool", "'false'"]),
    ("augment: {jitter_prob: \"0.5\"}", "'augment.jitter_prob'", ["expected float", "'0.5'"]),
    ("augment: {rand_augment: 2.5}", "'augment.rand_augment'", ["expected int", "2.5"]),
    ("model_args: {arch: 3}", "'model_args.arch'", ["expected str", "got 3"]),
]


@pytest.mark.parametrize("line, key, words", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_a_yaml_value_of_another_type_is_refused_naming_key_value_and_type(tmp_path, line, key, words):
    argv = _yaml(tmp_path, line + "\n")
    if "arch" in line:
        argv[-1] = "ila_tiny"
    with pytest.raises(ConfigError) as e:
        load_config(argv)
    message = str(e.value)
    assert f"config key {key}" in message and all(w in message for w in words), message
    assert "\n" not in message


def test_the_command_line_reads_text_as_the_keys_type(tmp_path):
    cfg = load_config(["--data", "d", "--model", "tsn_tiny", "--lr", "1e-3", "--ema", "false", "--epochs", "3",
                       "--augment.flip", "False", "--augment.jitter_prob", "5e-1", "--betas", "[0.9, 9.8e-1]",
                       "--optimizer", "adamw", "--lr-mult", '{"fc.*": 1e1}'])
    assert cfg.lr == 0.001 and cfg.ema is False and cfg.epochs == 3 and cfg.betas == [0.9, 0.98]
    assert cfg.augment == {"flip": False, "jitter_prob": 0.5} and cfg.lr_mult == [["fc.*", 10.0]]
    recipe = _yaml(tmp_path, "lr: 1.0e-3\nema: false\naugment: {flip: true, jitter_prob: 1}\n")
    cfg = load_config(recipe)
    assert cfg.lr == 0.001 and cfg.ema is False and cfg.augment == {"flip": True, "jitter_prob": 1}


@pytest.mark.parametrize("argv, words", [
    (["--augment.flip", "nope"], ["'augment.flip'", "expected bool", "'nope'"]),
    (["--epochs", "2.5"], ["'epochs'", "expected int", "'2.5'"]),
    (["--ema", "maybe"], ["'ema'", "expected bool", "'maybe'"]),
    (["--augment.rand_augment", "two"], ["'augment.rand_augment'", "expected int", "'two'"]),
])
def test_command_line_text_that_is_not_of_the_type_is_refused(argv, words):
    with pytest.raises(ConfigError) as e:
        load_config(["--data", "d", "--model", "tsn_tiny", *argv])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_model_args_follow_the_builders_annotations():
    """ila_tiny's builder passes its keywords to ILA, whose __init__ annotates them."""
    with pytest.raises(ConfigError, match=r"'model_args.freeze_backbone': expected bool, got 'no'"):
        load_config(["--data", "d", "--model", "ila_tiny", "--model_args.freeze_backbone", "'no'"])
    cfg = load_config(["--data", "d", "--model", "ila_tiny", "--model_args.freeze_backbone", "false",
                       "--model_args.class_names", "dataset"])
    assert cfg.model_args == {"freeze_backbone": False, "class_names": "dataset"}


def test_train_refuses_a_quoted_bool_in_one_line_before_any_work(tmp_path):
    argv = _yaml(tmp_path, 'augment:\n  flip: "false"\n') + ["--output", str(tmp_path / "runs")]
    proc = subprocess.run([sys.executable, "-m", "train", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("train: error: config key 'augment.flip': expected bool, got 'false' (a string: "
                                   "write false without quotes)"), proc.stderr
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- one description per key


def test_every_config_key_has_a_group_and_a_one_line_description():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("group") in GROUPS, f.name
        doc = f.metadata.get("doc", "")
        assert doc and "\n" not in doc and doc == doc.strip(), f.name


def test_help_lists_every_key_under_its_group_with_its_description(capsys):
    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert help_text() in out
    sections = {}
    for group in GROUPS:
        start = out.index(f"\n{group}:\n")
        ends = [out.index(f"\n{g}:\n") for g in GROUPS if out.index(f"\n{g}:\n") > start]
        sections[group] = out[start:min(ends, default=len(out))]
    types = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = f"  --{f.name.replace('_', '-')} {types[f.name].__name__.upper()} (default"
        section = sections[f.metadata["group"]]
        assert flag in section, f.name
        first_words = " ".join(f.metadata["doc"].split()[:4])
        assert first_words in " ".join(section.split()), f.name

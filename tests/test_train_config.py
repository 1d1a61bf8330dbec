"""Training config: YAML then command line; unknown or ill-typed keys are one-line errors naming the key."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from train.config import ConfigError, TrainConfig, from_dict, load_config, save_config


def test_yaml_then_command_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tsn_tiny\nlr: 0.1\nepochs: 3\naugment:\n  flip: false\nema: true\n")
    cfg = load_config(["--config", str(recipe), "--data", "d", "--lr", "0.5", "--augment.flip", "true",
                       "--no-ema", "--batch-size=4"])
    assert (cfg.model, cfg.lr, cfg.epochs, cfg.batch_size, cfg.ema) == ("tsn_tiny", 0.5, 3, 4, False)
    assert cfg.augment == {"flip": True}
    saved = tmp_path / "c.yaml"
    save_config(cfg, str(saved))
    assert from_dict(yaml.safe_load(saved.read_text())) == cfg


@pytest.mark.parametrize("argv,needle", [
    (["--data", "d", "--lrr", "0.1"], "'lrr'"),
    (["--data", "d", "--lr", "fast"], "'lr'"),
    (["--data", "d", "--epochs", "2.5"], "'epochs'"),
    (["--data", "d", "--optimizer", "lion"], "'optimizer'"),
    (["--data", "d", "--ema", "maybe"], "'ema'"),
    (["--lr", "0.1"], "'data'"),
])
def test_bad_keys_name_the_key(argv, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(argv)
    assert "\n" not in str(e.value)


def test_bad_yaml_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tsn_tiny\nwarmup: 3\n")
    with pytest.raises(ConfigError, match="r.yaml: unknown config key 'warmup'"):
        load_config(["--config", str(recipe), "--data", "d"])
    recipe.write_text("batch_size: [1, 2]\n")
    with pytest.raises(ConfigError, match="'batch_size': expected int"):
        load_config(["--config", str(recipe), "--data", "d"])


def test_cli_error_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "--data", str(tmp_path), "--momentm", "0.9"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train: error: command line: unknown config key 'momentm' (did you mean momentum?)"]


def test_defaults_are_valid():
    cfg = TrainConfig()
    assert from_dict(cfg.to_dict()) == cfg


def test_recipe_augment_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("augment:\n  train_crop: random\n  scale_jitter: [256, 320]\n  grayscale: 0.2\n"
                      "  erase: 0.25\n  erase_mode: const\n  flip: true\n  flip_label_map: {86: 87, 87: 86}\n")
    cfg = load_config(["--config", str(recipe), "--data", "d", "--augment.flip_label_map", "ssv2"])
    assert cfg.augment["scale_jitter"] == [256, 320] and cfg.augment["flip_label_map"] == "ssv2"
    for bad, needle in ((["--augment.scale_jitter", "[320, 256]"], "scale_jitter"),
                        (["--augment.grayscale", "1.5"], "grayscale"),
                        (["--augment.erase_mode", "rand"], "erasing"),
                        (["--augment.flip_label_map", "[1, 2]"], "flip_label_map"),
                        (["--augment.flip_label_map", "{a: 1}"], "flip_label_map")):
        with pytest.raises(ConfigError, match=f"'augment.*{needle}"):
            load_config(["--config", str(recipe), "--data", "d", *bad])

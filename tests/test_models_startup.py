"""Naming models costs no torch: the registry reads which module registers which name from the sources, and the
registrations made by importing the families must be exactly those (one source of truth). Start-up *time* is a
benchmark figure (python -m bench.startup, docs/benchmarks.md), not a timed test: these tests check structure."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.startup import slowest_import
from models import registry

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "timm", "nvidia.dali", "models.factory", "models.resnet3d", "models.temporal2d")


def test_source_index_equals_what_importing_the_families_registers():
    index = registry.source_index()
    registry.import_families()
    assert set(registry._entrypoints) == set(index.models)
    assert {name: fn.__module__ for name, fn in registry._entrypoints.items()} == {
        name: f"models.{module}" for name, module in index.models.items()}
    assert registry._aliases == index.aliases
    assert len(index.models) > 50 and "i3d_resnet" in index.aliases


def test_a_registration_the_sources_do_not_show_is_caught(tmp_path, monkeypatch):
    """A family that registers by a call the index cannot read (a loop, a computed name) breaks the equality above:
    shown here with a copy of the package in which one model is registered in a loop."""
    package = tmp_path / "models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "registry.py").write_text((ROOT / "models" / "registry.py").read_text())
    (package / "family.py").write_text(
        "from .registry import register_model\n\n@register_model\ndef seen(**kw):\n    return None\n\n"
        "for _name in ('hidden',):\n    register_model(type(_name, (), {'__name__': _name}))\n")
    found = _run("import models.registry as r; r.import_families(); "
                 "print(json.dumps([sorted(r.source_index().models), sorted(r._entrypoints)]))", cwd=tmp_path)
    from_sources, registered = json.loads(found.stdout)
    assert from_sources == ["seen"] and registered == ["hidden", "seen"]


def test_building_a_model_imports_only_its_family():
    found = _run("import models; models.create_model('tsn_tiny', num_classes=3); "
                 "print(json.dumps(sorted(m for m in sys.modules if m.startswith('models.'))))")
    loaded = set(json.loads(found.stdout))
    assert "models.temporal2d" in loaded
    assert not loaded & {"models.resnet3d", "models.slowfast", "models.x3d", "models.aim", "models.ila"}


COMMANDS = [["list"], ["list", "tsn*"], ["--help"], ["list", "--help"], ["--no-such-option"], ["zoo", "--help"],
            ["info", "--help"], ["export", "--help"]]


def test_models_commands_import_no_torch_nor_family():
    """The commands in turn in one interpreter (what one imports stays for the next, so each is checked after it)."""
    found = _run("import runpy\nloaded = {}\n"
                 "for argv in ARGV:\n    sys.argv = ['models', *argv]\n"
                 "    try:\n        runpy.run_module('models', run_name='__main__', alter_sys=True)\n"
                 "    except SystemExit:\n        pass\n"
                 f"    loaded[' '.join(argv)] = [m for m in {HEAVY!r} if m in sys.modules]\n"
                 "print(json.dumps(loaded), file=sys.stderr)", argv=COMMANDS)
    assert json.loads(found.stderr.strip().splitlines()[-1]) == {" ".join(argv): [] for argv in COMMANDS}


# every entry point's --help and an argument error, before any work: `python -m MODULE ARGV...`
ENTRY_POINTS = [(module, [*sub, last]) for module, subs in {
    "eval": [[], ["features"], ["ensemble"], ["predict"], ["views"]], "prep": [[], ["videos"]],
    "train": [[], ["average"]], "train.demo": [[]], "bench.startup": [[]]}.items()
    for sub in subs for last in ("--help", "--no-such-option")]


def test_entry_points_answer_help_and_argument_errors_without_torch():
    """Each command in a fresh interpreter (one imports what the next would otherwise be charged for)."""
    for module, argv in ENTRY_POINTS:
        found = _run("import runpy\nsys.argv = [MODULE, *ARGV]\ntry:\n"
                     "    runpy.run_module(MODULE, run_name='__main__', alter_sys=True)\nexcept SystemExit:\n    pass\n"
                     f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)",
                     argv=argv, module=module)
        assert json.loads(found.stderr.strip().splitlines()[-1]) == [], (module, argv, found.stderr[-2000:])


def test_models_list_prints_every_registered_name_and_alias():
    names = _cli(["list"]).stdout.split("\n")
    plain = [line for line in names if line and "alias of" not in line]
    aliases = [line.split()[0] for line in names if "alias of" in line]
    registry.import_families()
    assert [line.strip() for line in plain] == sorted(registry._entrypoints)
    assert aliases == sorted(registry._aliases)


def test_slowest_import_reads_importtime_lines():
    log = ("import time: self [us] | cumulative | imported package\n"
           "import time:       100 |        100 |   numpy.core\n"
           "import time:       200 |     900000 | torch\n"
           "import time:        50 |      60000 | models\n")
    assert slowest_import(log) == ("torch", 0.9, True)


def _cli(argv: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "models", *argv], cwd=ROOT, env=_env(ROOT), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _run(code: str, argv: list[str] = (), cwd: Path = ROOT, module: str = "") -> subprocess.CompletedProcess:
    script = f"import json, sys\nARGV = {list(argv)!r}\nMODULE = {module!r}\n{code}"
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=_env(cwd), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _env(first: Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(first), str(ROOT)]))

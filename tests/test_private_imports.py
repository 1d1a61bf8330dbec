"""No module of ours reaches into another module's private (`_`-prefixed) names.

A name shared between modules is public in its home module; a library's private module or name is used only where
the library exports nothing that does the job, listed in ALLOWED with the reason. Read with `ast`, nothing imported:
- `from X import _name`, `from X._module import name`, `import X._module`;
- `X._name` where `_name` is not defined in the module itself (as a function, class, variable, argument or an
  attribute it assigns) and X is not `self`, `cls` or `super()` (a subclass using its base's members is the class's
  own business);
- dunder names (`__version__`, `obj.__class__`) are public.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prep", "pipelines", "models", "runtime", "eval", "train", "bench")

# (file, the use as the check words it): why it stays.
# the standard library's documented names that begin with an underscore: public wherever they are used
DOCUMENTED = {"os._exit"}  # the exit for a forked child (no cleanup handlers)
ALLOWED = {
    ("models/tuning.py", "from timm.models._manipulate import group_with_matcher"):
        "timm exports only its wrappers group_parameters/group_modules, which group parameters or the modules "
        "holding them; stage_names also places parameter-free modules (dropout, drop-path) in their stage, with the "
        "same function, so layer_decay (timm) and frozen_stages group alike. tests/test_stages.py pins the result",
    ("models/tuning.py", "from torch.nn.modules.batchnorm import _BatchNorm"):
        "torch has no public base class of BatchNorm1d/2d/3d and SyncBatchNorm (mmcv and mmengine test the same one)",
    ("models/tuning.py", "module._forward_pre_hooks"):
        "torch has no public way to list a module's hooks; reading them keeps keep_eval from registering twice",
    ("bench/memory.py", "from torch.utils._python_dispatch import TorchDispatchMode"):
        "torch's documented extension point for dispatch modes, with no public alias (torch 2.14)",
    ("bench/memory.py", "from torch.utils._pytree import tree_leaves"):
        "the pytree helper torch's own dispatch modes use on their outputs; torch 2.14 has no public pytree module",
}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_private_names(tree: ast.Module) -> set[str]:
    """The private names the module defines itself: functions, classes, variables, arguments, import aliases and
    attributes it assigns (`self._x = ...`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias) and node.asname:
            names.add(node.asname)
    return {n for n in names if is_private(n)}


def _is_own_object(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, use) for each use of another module's private name in `source`."""
    tree = ast.parse(source)
    own = own_private_names(tree)
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            uses += [(node.lineno, f"from {'.' * node.level}{module} import {alias.name}") for alias in node.names
                     if is_private(alias.name) or any(map(is_private, module.split(".")))]
        elif isinstance(node, ast.Import):
            uses += [(node.lineno, f"import {alias.name}") for alias in node.names
                     if any(map(is_private, alias.name.split(".")))]
        elif (isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own
              and not _is_own_object(node.value)):
            uses.append((node.lineno, ast.unparse(node)))
    return sorted(uses)


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_module_uses_another_modules_private_names():
    found = [(p.relative_to(ROOT).as_posix(), line, use) for p in sources()
             for line, use in private_uses(p.read_text())]
    bad = [f"{path}:{line}: {use}" for path, line, use in found if (path, use) not in ALLOWED and use not in DOCUMENTED]
    assert not bad, ("private names used across modules (make the name public in its home module and update its "
                     "callers, or use the library's public API; a deliberate exception goes in ALLOWED with its "
                     "reason):\n" + "\n".join(bad))


def test_every_exception_is_still_needed():
    found = {(p.relative_to(ROOT).as_posix(), use) for p in sources() for _, use in private_uses(p.read_text())}
    assert not set(ALLOWED) - found, f"ALLOWED lists uses that are gone: {sorted(set(ALLOWED) - found)}"


BAD_EXAMPLE = """
import timm.models._manipulate
from timm.models._manipulate import group_with_matcher
from .tasks import _read_json, kinetics_tasks
from . import synthetic

synthetic._check_size(8)
loader._feed.close()
torch.utils._pytree.tree_leaves(out)
"""

GOOD_EXAMPLE = """
from . import __version__
from .tasks import read_json as _read_json


def _own_helper(_arg):
    return _read_json(_arg)


class Trainer(Base):
    _registry = {}

    def step(self, other):
        self._count = 1
        other._count += 1  # an attribute this module's objects have
        Trainer._registry.clear()
        return super()._step() + self._inherited() + type(self).__name__ + _own_helper(cls._registry)
"""


def test_the_check_catches_private_imports_and_accesses():
    assert [use for _, use in private_uses(BAD_EXAMPLE)] == [
        "import timm.models._manipulate", "from timm.models._manipulate import group_with_matcher",
        "from .tasks import _read_json", "synthetic._check_size", "loader._feed", "torch.utils._pytree"]


def test_the_check_leaves_a_modules_own_privates_and_dunders_alone():
    assert private_uses(GOOD_EXAMPLE) == []


def test_our_copy_of_timms_match_prev_group_agrees_with_timm():
    """models.tuning keeps the group_matcher suffix timm leaves in a private module: a timm that changed it
    would silently split SlowFast's laterals from their stages."""
    from timm.models._manipulate import MATCH_PREV_GROUP

    from models.tuning import MATCH_PREV_GROUP as ours

    assert ours == MATCH_PREV_GROUP

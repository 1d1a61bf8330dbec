"""Rules of the test suite itself: a test module imports nothing from another test module, fixtures shared by
several modules come from conftest.py (not imported into each module, which also makes a session fixture run once
per importing module), and no fixture is written twice. Read from the sources, imports inside functions included."""
from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST_MODULES = sorted(HERE.glob("test_*.py"))
LOCAL_MODULES = {p.stem for p in HERE.glob("*.py")}  # helpers.py, procs.py, s3fixture.py, conftest.py, test_*.py


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _local_imports(tree: ast.Module):
    """(line, module, names) of every import of a module of this folder, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = alias.name.removeprefix("tests.")
                if module.split(".")[0] in LOCAL_MODULES:
                    yield node.lineno, module, []
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = node.module.removeprefix("tests.")
            if module in LOCAL_MODULES:
                yield node.lineno, module, [alias.name for alias in node.names]


def _is_fixture(node: ast.AST) -> bool:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "fixture":
            return True
    return False


def _fixtures(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree.body if _is_fixture(node)}


def _body_without_docstring(node: ast.FunctionDef) -> str:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False)


def test_no_test_module_imports_from_another_test_module():
    found = [f"{path.name}:{line} imports {module}" for path in TEST_MODULES
             for line, module, _ in _local_imports(_tree(path))
             if module.startswith("test_") or module == "conftest"]
    assert not found, "shared helpers go to tests/helpers.py, shared fixtures to tests/conftest.py:\n" + "\n".join(found)


def test_fixtures_are_not_imported_into_test_modules():
    fixtures_of = {name: set(_fixtures(_tree(HERE / f"{name}.py"))) for name in LOCAL_MODULES if name != "conftest"}
    found = [f"{path.name}:{line} imports the fixture {name} from {module}" for path in TEST_MODULES
             for line, module, names in _local_imports(_tree(path))
             for name in names if name in fixtures_of.get(module, ())]
    assert not found, "tests/conftest.py provides shared fixtures to every module:\n" + "\n".join(found)


def test_no_fixture_is_written_twice():
    seen: dict[str, list[str]] = {}
    for path in [*TEST_MODULES, HERE / "conftest.py"]:
        for name, node in _fixtures(_tree(path)).items():
            seen.setdefault(_body_without_docstring(node), []).append(f"{path.name}::{name}")
    twice = [" and ".join(places) for places in seen.values() if len(places) > 1]
    assert not twice, "one fixture in tests/conftest.py instead of:\n" + "\n".join(twice)


def test_the_rules_see_what_they_forbid(tmp_path):
    """The checks above read nested imports and decorated fixtures: shown on a module that breaks each rule."""
    source = ("import pytest\n\n@pytest.fixture(scope='module')\ndef ckpt():\n    '''doc'''\n    return 1\n\n"
              "def test_x():\n    from test_eval import CPU\n    import tests.test_pipelines\n"
              "    from s3fixture import s3, BUCKET\n")
    tree = ast.parse(source)
    assert [(module, names) for _, module, names in _local_imports(tree)] == \
        [("test_eval", ["CPU"]), ("test_pipelines", []), ("s3fixture", ["s3", "BUCKET"])]
    assert list(_fixtures(tree)) == ["ckpt"]
    assert "s3" in _fixtures(_tree(HERE / "s3fixture.py")) and "BUCKET" not in _fixtures(_tree(HERE / "s3fixture.py"))
    other = ast.parse("import pytest\n\n@pytest.fixture\ndef other():\n    return 1\n")
    assert _body_without_docstring(_fixtures(tree)["ckpt"]) == _body_without_docstring(_fixtures(other)["other"])

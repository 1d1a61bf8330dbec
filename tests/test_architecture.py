"""The architecture contract: one-way layers and no import cycle, counting imports inside functions.

Layer order (pyproject.toml [tool.importlinter]): prep (lowest) <- pipelines <- models <- runtime <- eval <- train
<- bench; a package imports only those below it. import-linter checks the layers and the cycles between a package's
sibling modules; grimp's graph, read directly, checks that no module takes part in a cycle at all (a package's
__init__ and its submodules included, which the sibling contract does not see). Also here: what a light module may
load, for the readers and entry points that must start fast."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import grimp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _contract() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["importlinter"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_import_linter_contracts_are_kept():
    lint = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    done = _run([lint, "--no-cache"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_contract_lists_every_package_and_ignores_nothing():
    contract = _contract()
    packages = sorted(d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py"))
                      and d != "tests")
    assert sorted(contract["root_packages"]) == packages
    layers = next(c for c in contract["contracts"] if c["type"] == "layers")
    assert layers["layers"] == ["bench", "train", "eval", "runtime", "models", "pipelines", "prep"]
    assert not any("ignore_imports" in c for c in contract["contracts"])


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycles_finds_a_cycle_through_a_package_init():
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg", imported="pkg.a")
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg")  # e.g. `import pkg` inside a function of pkg.b
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert cycles(graph) == [["pkg", "pkg.a", "pkg.b"]]


def test_no_module_takes_part_in_an_import_cycle():
    graph = grimp.build_graph(*_contract()["root_packages"], cache_dir=None)
    found = cycles(graph)
    lines = []
    for component in found:
        first = component[0]
        back = min((graph.find_shortest_chain(importer=m, imported=first) or () for m in
                    graph.find_modules_directly_imported_by(first) if m in component), key=len, default=())
        lines.append(f"{len(component)} modules, e.g. {first} -> {' -> '.join(back)}: {', '.join(component)}")
    assert not found, "import cycles:\n" + "\n".join(lines)


def _loaded_after(imports: str, watched: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{imports}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    done = _run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_reading_a_prepped_store_does_not_import_the_writer():
    """Every DALI worker opens the store: the decoder, PyAV and simplejpeg are the writer's."""
    assert _loaded_after("import prep\nimport prep.dataset", ("av", "simplejpeg", "prep.runner", "prep.decode")) == []


def test_light_modules_load_no_torch_or_dali():
    """What `eval views --help` and the entry points' argument parsing import before any work."""
    imports = "import pipelines\nimport pipelines.protocols\nimport pipelines.sampling\nimport eval.cli\n" \
              "import runtime.printing\nimport eval.run_config"
    assert _loaded_after(imports, ("torch", "nvidia.dali", "av", "train")) == []


def test_the_pipelines_package_still_offers_its_names():
    done = _run([sys.executable, "-c", "from pipelines import AugmentConfig, build_loader, sampling, ImageLoader\n"
                 "import pipelines.loader, pipelines.augment\n"
                 "assert build_loader is pipelines.loader.build_loader\n"
                 "assert AugmentConfig is pipelines.augment.AugmentConfig"])
    assert done.returncode == 0, done.stderr

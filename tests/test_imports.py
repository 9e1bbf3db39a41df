"""The package's imports point down the pipeline and never form a cycle.

Every module of ``metaimprove/`` has a rank, its place in the pipeline: the foundations (``errors``, ``storage``,
``seeds``, ``loggers``) < ``sim`` and the package's ``__init__`` (which registers the families' gymnasium ids) <
``interop`` < ``teachers`` < ``data`` < ``operator`` < ``training`` < ``evaluation`` < ``config`` < ``cli``,
``pipeline``, ``api``.
The package re-exports ``api``'s names lazily, by name (PEP 562 ``__getattr__``), which is no import statement:
tests/test_api.py checks that ``import metaimprove`` loads none of it. A module imports only from its own rank or
lower ones, and no chain of imports leads back to where it started. Every import counts, the ones inside functions
(deferred to break a cycle at import time, which still is one) and under ``TYPE_CHECKING`` included.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "metaimprove"

RANKS = {
    "errors": 0, "storage": 0, "seeds": 0, "loggers": 0,
    "__init__": 1, "sim": 1,
    "interop": 2,
    "teachers": 3,
    "data": 4,
    "operator": 5,
    "training": 6,
    "evaluation": 7,
    "config": 8,
    "cli": 9, "pipeline": 9, "__main__": 9, "api": 9,
}
"""rank of each subpackage or top-level module (``__init__``: the package itself)"""


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    """The dotted name of the module at ``path`` in the package at ``root`` (a package is its ``__init__``)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """Module → the package's modules it imports, read with ``ast`` from every ``.py`` file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's own package, up level - 1 more
                    base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                # ``from package import module`` imports that module; ``from module import name``, the module.
                targets.update(f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module
                               for alias in node.names)
        known = {_known(t, files) for t in targets if t.split(".")[0] == root.name}
        graph[name] = {t for t in known if t is not None and t != name}
    return graph


def _known(target: str, modules: dict[str, pathlib.Path]) -> str | None:
    """The longest prefix of ``target`` that is a module of the package (``import a.b.c`` imports a.b.c)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def rank(module: str) -> int:
    """The pipeline rank of a module (KeyError: a top-level module or subpackage nobody ranked yet)."""
    parts = module.split(".")
    return RANKS[parts[1] if len(parts) > 1 else "__init__"]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module of a higher rank than the importer's, as 'importer -> imported (ranks)'."""
    return [f"{a} -> {b} (rank {rank(a)} imports rank {rank(b)})"
            for a in sorted(graph) for b in sorted(graph[a]) if rank(b) > rank(a)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [m0, m1, ..., m0], or None if the graph has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


# ------------------------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_the_graph_reads_the_package(graph: dict[str, set[str]]) -> None:
    assert {"metaimprove", "metaimprove.sim.tasks", "metaimprove.evaluation.apply", "metaimprove.cli"} <= set(graph)
    assert "metaimprove.sim.tasks" in graph["metaimprove.sim.envs"]
    assert "metaimprove.teachers.base" in graph["metaimprove.teachers.ppo"]


def test_every_module_has_a_rank(graph: dict[str, set[str]]) -> None:
    unranked = sorted(m for m in graph if [*m.split("."), "__init__"][1] not in RANKS)
    assert unranked == [], f"give these a place in the pipeline (RANKS in {__name__}): {unranked}"


def test_imports_point_down_the_pipeline(graph: dict[str, set[str]]) -> None:
    assert upward_imports(graph) == []


def test_there_is_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert find_cycle(graph) is None


# ------------------------------------------------------------------------------------------- the checker


FAKE = {
    "__init__.py": '"""A stand-in for metaimprove."""\n',
    "errors.py": "class UserError(Exception):\n    pass\n",
    "seeds.py": "def evaluation(seed):\n    return seed\n",
    "sim/__init__.py": "",
    "sim/tasks.py": "from metaimprove.errors import UserError\nfrom metaimprove import seeds\n",
    "operator/__init__.py": "",
    "operator/features.py": "import metaimprove.sim.tasks\n\n\ndef encode():\n"
                            "    from metaimprove.evaluation.apply import apply  # deferred, and still upward\n",
    "evaluation/__init__.py": "",
    "evaluation/apply.py": "from metaimprove.operator import features\nfrom . import guard\n\n\n"
                           "def apply():\n    pass\n",
    "evaluation/guard.py": "from .apply import apply\n",
}


def _fake_package(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    package = root / "metaimprove"
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


def test_the_checker_finds_an_upward_import_and_a_cycle(tmp_path: pathlib.Path) -> None:
    graph = import_graph(_fake_package(tmp_path, FAKE))
    assert graph["metaimprove.sim.tasks"] == {"metaimprove.errors", "metaimprove.seeds"}
    assert graph["metaimprove.evaluation.apply"] == {"metaimprove.operator.features",
                                                     "metaimprove.evaluation.guard"}
    # operator/ importing evaluation/ points up the pipeline; evaluation/ importing operator/ points down.
    assert upward_imports(graph) == [
        "metaimprove.operator.features -> metaimprove.evaluation.apply (rank 5 imports rank 7)"]
    apply, guard = "metaimprove.evaluation.apply", "metaimprove.evaluation.guard"
    features = "metaimprove.operator.features"
    assert find_cycle(graph) == [apply, guard, apply]
    # Without that one, the upward import closes another: apply -> features -> apply.
    graph[guard].clear()
    assert find_cycle(graph) == [apply, features, apply]


def test_the_checker_passes_a_package_that_points_down(tmp_path: pathlib.Path) -> None:
    clean = {**FAKE, "operator/features.py": "import metaimprove.sim.tasks\n", "evaluation/guard.py": ""}
    graph = import_graph(_fake_package(tmp_path, clean))
    assert upward_imports(graph) == [] and find_cycle(graph) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert upward_imports({"metaimprove.operator.features": {"metaimprove.evaluation.apply"},
                           "metaimprove.evaluation.apply": {"metaimprove.operator.features"}}) == [
        "metaimprove.operator.features -> metaimprove.evaluation.apply (rank 5 imports rank 7)"]

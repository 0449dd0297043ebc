"""The package's import rules, checked on the source of every module: the rules that the
README's layout table and the package docstrings state, each enforced here.

- Layers, lowest first (``LAYERS``): a module imports only modules of its own layer or of
  the layers below it, anywhere in the module (inside functions too), and rnnsweep's
  modules import one another in no circle. Imports under ``if TYPE_CHECKING:`` name types
  only and run nothing; they are left out of both rules.
- The base layer imports nothing heavy at module level (``HEAVY``).
- ``rnnsweep/config`` is pure configuration: it imports neither torch nor Ray nor MLflow,
  anywhere in a module.
- ``rnnsweep/trial`` and ``rnnsweep/deploy`` hold the trial logic: torch only. They never
  import Ray, MLflow, Hydra's launcher machinery or the sweep side, anywhere in a module,
  so they can be tested and reused without any of them. They meet in one direction:
  ``rnnsweep/deploy`` imports nothing of ``rnnsweep/trial``, not even a type (it says what
  it needs of a model in ``deploy/model.py``).
- Everything else is the driver side: it never imports torch at module level, because a
  driver that imports torch pays seconds of start-up for nothing (and a refused command
  should not pay them either).
- Hydra's and Ray's private APIs (an underscored module, name, attribute or keyword of
  Hydra, Ray, OmegaConf or a Hydra plugin) are reached only from ``rnnsweep/adapters``,
  where ``tests/test_adapters.py`` checks each against the installed version.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rnnsweep"
TRIAL_SIDE = ("trial", "deploy")
EDGES = ("ray", "mlflow", "hydra.core", "hydra.plugins", "hydra._internal", "hydra.experimental",
         "hydra_plugins", "rnnsweep.adapters", "rnnsweep.sweep", "rnnsweep.report",
         "rnnsweep.tracking", "rnnsweep.cli", "rnnsweep.compare", "rnnsweep.preflight",
         "rnnsweep.store", "rnnsweep.journal", "rnnsweep.lease")
CONFIG_NEVER = ("torch", "ray", "mlflow")
HEAVY = ("torch", "ray", "mlflow", "hydra", "omegaconf", "matplotlib", "numpy", "pandas", "rich")
# Lowest first. A name stands for the module or package and everything under it.
LAYERS = (
    ("base", ("rnnsweep.contract", "rnnsweep.text", "rnnsweep.heap", "rnnsweep.logs",
              "rnnsweep.version", "rnnsweep.record", "rnnsweep.errors")),
    # Hydra's and Ray's private APIs, behind one door: they import nothing of rnnsweep.
    ("the libraries' internals", ("rnnsweep.adapters",)),
    ("configuration", ("rnnsweep.config",)),
    ("the store's edge", ("rnnsweep.redaction", "rnnsweep.privacy", "rnnsweep.store",
                          "rnnsweep.lease", "rnnsweep.tracking", "rnnsweep.journal")),
    ("serving", ("rnnsweep.deploy",)),
    ("one trial", ("rnnsweep.trial",)),
    ("the report", ("rnnsweep.report",)),
    ("running a sweep", ("rnnsweep.sweep",)),
    ("searching", ("rnnsweep.search",)),
    ("Hydra's plugins", ("hydra_plugins",)),
    ("checks before a sweep", ("rnnsweep.preflight",)),
    ("commands", ("rnnsweep.compare", "rnnsweep.cli")),
    ("entry points", ("rnnsweep.api", "rnnsweep.entry", "rnnsweep.__main__")),
    # The package itself: its face hands the API's names on (lazily), so it is the top.
    ("the package's face", ("rnnsweep",)),
)


def modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *(REPO / "hydra_plugins").rglob("*.py")])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST, package: str = "") -> list[str]:
    """The names an import statement names: ``from a import b`` names ``a`` and ``a.b``
    (``b`` may be a module). Relative imports are resolved against ``package``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parent = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, *([base] if base else [])])
        if base:
            return [base, *(f"{base}.{a.name}" for a in node.names)]
    return []


def module_level_imports(tree: ast.Module) -> list[str]:
    """Imports that run when the module is imported: the body, and blocks at top level
    (``if``/``try``/``with``), but not function or class bodies, nor ``TYPE_CHECKING``."""
    found: list[str] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if _type_checking(node):
            pending.extend(node.orelse)
            continue
        found += imported(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            pending.extend(getattr(node, field, []))
    return found


def run_time_imports(tree: ast.Module, package: str = "") -> list[tuple[int, list[str]]]:
    """Every import that can run, with its line: at module level and inside functions,
    less the blocks under ``if TYPE_CHECKING:``."""
    found: list[tuple[int, list[str]]] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if _type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = imported(node, package)
            # ``from a import b``: the module ``a.b`` where there is one, else ``a``.
            found.append((node.lineno, names[1:] if isinstance(node, ast.ImportFrom)
                          else names))
        pending.extend(ast.iter_child_nodes(node))
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def side(path: Path) -> str:
    return "trial" if path.relative_to(PACKAGE).parts[0] in TRIAL_SIDE else "driver"


def layer(module: str, layers=LAYERS) -> int | None:
    """The index of the layer ``module`` belongs to (the longest name that holds it)."""
    best = max(((len(name), i) for i, (_, names) in enumerate(layers) for name in names
                if is_under(module, name)), default=None)
    return None if best is None else best[1]


def import_graph(sources: dict[str, str]) -> dict[str, dict[str, int]]:
    """Module -> the modules among ``sources`` it imports at run time, each with a line."""
    graph: dict[str, dict[str, int]] = {}
    for name, text in sources.items():
        is_package = any(other.startswith(name + ".") for other in sources)
        package = name if is_package else name.rpartition(".")[0]
        out: dict[str, int] = {}
        for line, names in run_time_imports(ast.parse(text), package):
            for target in {_resolve(n, sources) for n in names} - {None, name}:
                out.setdefault(target, line)
        graph[name] = out
    return graph


def _resolve(name: str, sources) -> str | None:
    while name:
        if name in sources:
            return name
        name = name.rpartition(".")[0]
    return None


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Each import circle once, as a path that starts and ends at the same module."""
    found, done = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, {})):
                if nxt == start:
                    circle = path + [start]
                    if frozenset(circle) not in done:
                        done.add(frozenset(circle))
                        found.append(circle)
                elif nxt not in path and nxt > start:  # each circle from its least module
                    stack.append((nxt, path + [nxt]))
    return found


def upward(graph: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    bad = []
    for name, out in sorted(graph.items()):
        mine = layer(name, layers)
        for target, line in sorted(out.items()):
            theirs = layer(target, layers)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{name}:{line} imports {target} ({layers[theirs][0]}, above "
                           f"{layers[mine][0]})")
    return bad


# Libraries whose private API only rnnsweep/adapters may reach into.
LIBRARIES = ("hydra", "ray", "omegaconf", "hydra_plugins")
ADAPTERS = PACKAGE / "adapters"


def private(name: str) -> bool:
    """``_name``, but neither a dunder nor a config key such as Hydra's ``_target_``."""
    return name.startswith("_") and not name.endswith("_")


def _root(node: ast.AST) -> str | None:
    """The name an expression such as ``a.b().c[0].d`` starts from (``a``)."""
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def defined_private_names(trees: list[ast.Module]) -> set[str]:
    """The underscored names rnnsweep defines itself (functions, classes, variables,
    parameters, attributes it sets on ``self`` or ``cls``): an underscored attribute not
    among them (nor in ``OURS_ELSEWHERE``) is someone else's."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    _root(node) in ("self", "cls"):
                names.add(node.attr)
    return {name for name in names if private(name)} | set(OURS_ELSEWHERE)


# rnnsweep's own underscored attributes that it sets on an object other than ``self``.
OURS_ELSEWHERE = {
    "_sweep_stopper": "the sweep's stopper, kept on rnnsweep's launcher (sweep/launcher.py)",
}


# Underscored attributes of other libraries than Hydra's and Ray's, with where they are read.
OTHER_LIBRARIES = {
    "_storage": "Optuna's study storage (rnnsweep/search)",
    "_trial_id": "Optuna's trial id (rnnsweep/search)",
}


def private_accesses(tree: ast.Module, ours: set[str]) -> list[tuple[int, str]]:
    """Each place ``tree`` reaches into a library's private API: an underscored module or
    name imported from Hydra, Ray, OmegaConf or ``hydra_plugins``; an underscored
    attribute or keyword reached through a name imported from them (``ray._raylet``,
    ``ray.init(_temp_dir=...)``); any other underscored attribute that rnnsweep does not
    define itself (``job_return._return_value``), but those of ``OTHER_LIBRARIES``."""
    bound: set[str] = set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if any(is_under(alias.name, lib) for lib in LIBRARIES):
                    bound.add(alias.asname or alias.name.split(".")[0])
                    if any(private(p) for p in alias.name.split(".")):
                        found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level \
                and any(is_under(node.module, lib) for lib in LIBRARIES):
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if any(private(p) for p in [*node.module.split("."), alias.name]):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and \
                (_root(node) in bound or node.attr not in ours) and \
                node.attr not in OTHER_LIBRARIES:
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Call) and _root(node.func) in bound:
            found += [(node.lineno, f"{ast.unparse(node.func)}({kw.arg}=...)")
                      for kw in node.keywords if kw.arg and private(kw.arg)]
    return sorted(set(found))


def sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in modules()}


def test_every_module_is_in_a_layer():
    assert [name for name in sources() if layer(name) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    assert upward(import_graph(sources())) == []


def test_no_import_circles():
    found = circles(import_graph(sources()))
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_import_rules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    if path.is_relative_to(REPO / "hydra_plugins"):
        bad = sorted({n for n in module_level_imports(tree) if is_under(n, "torch")})
        assert not bad, f"a Hydra plugin imports torch at module level: {bad}"
        return
    every = [name for node in ast.walk(tree) for name in imported(node)]
    if side(path) == "trial":
        bad = sorted({n for n in every if any(is_under(n, e) for e in EDGES)})
        assert not bad, f"trial-side module imports an edge: {bad}"
        if path.relative_to(PACKAGE).parts[0] == "deploy":
            bad = sorted({n for n in every if is_under(n, "rnnsweep.trial")})
            assert not bad, f"deploy imports the trial side (trial imports deploy): {bad}"
    else:
        bad = sorted({n for n in module_level_imports(tree) if is_under(n, "torch")})
        assert not bad, f"driver-side module imports torch at module level: {bad}"
    if layer(module_name(path)) == 0:
        bad = sorted({n for n in module_level_imports(tree) if any(is_under(n, h) for h in HEAVY)})
        assert not bad, f"a base module imports something heavy at module level: {bad}"
    if path.relative_to(PACKAGE).parts[0] == "config":
        bad = sorted({n for n in every if any(is_under(n, e) for e in CONFIG_NEVER)})
        assert not bad, f"config imports torch, Ray or MLflow: {bad}"


def test_the_checks_can_fail():
    """The checker itself sees the imports it is meant to catch."""
    driver = ast.parse("import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
                       "def f():\n    import torch.nn\n")
    assert "torch" in module_level_imports(driver)
    assert "torch.nn" not in module_level_imports(driver)
    trial = ast.parse("def f():\n    from ray import remote\n")
    assert any(is_under(n, "ray") for node in ast.walk(trial) for n in imported(node))
    assert not is_under("rayleigh", "ray")
    # A circle through a function-level import, named as its path; a type-only import is none.
    pkg = {"pkg": "", "pkg.low": "def f():\n    from pkg import high\n",
           "pkg.high": "from pkg.low import f\n",
           "pkg.typed": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    from pkg.high import f\n"}
    graph = import_graph(pkg)
    assert circles(graph) == [["pkg.high", "pkg.low", "pkg.high"]]
    assert "pkg.high" not in graph["pkg.typed"]
    layers = (("low", ("pkg.low", "pkg.typed")), ("high", ("pkg.high",)))
    assert upward(graph, layers) == ["pkg.low:2 imports pkg.high (high, above low)"]
    assert layer("pkg.low.inner", layers) == 0 and layer("other", layers) is None


def test_private_apis_only_through_the_adapters():
    """Hydra's and Ray's internals behind one door: ``rnnsweep/adapters``."""
    paths = modules()
    trees = {path: ast.parse(path.read_text(), filename=str(path)) for path in paths}
    ours = defined_private_names([t for p, t in trees.items() if not p.is_relative_to(ADAPTERS)])
    bad = [f"{path.relative_to(REPO)}:{line}: {what}"
           for path, tree in trees.items() if not path.is_relative_to(ADAPTERS)
           for line, what in private_accesses(tree, ours)]
    assert not bad, ("a library's private API outside rnnsweep/adapters (move it there, "
                     "with a test in tests/test_adapters.py): " + "; ".join(bad))


def test_the_private_api_check_can_fail():
    source = ("import ray\nfrom hydra._internal.utils import _locate\n"
              "from hydra.core.utils import JobReturn\nimport hydra_plugins.x._impl\n"
              "def f(self, ret):\n"
              "    ray._raylet.setproctitle('x')\n"
              "    ray.init(_temp_dir='/t', num_cpus=1)\n"
              "    JobReturn(_return_value=1)\n"
              "    self._mine = ret._return_value\n"
              "    return self._mine, ret.cfg._target_, ret.__class__, ret._sweep_stopper\n")
    tree = ast.parse(source)
    assert private_accesses(tree, defined_private_names([tree])) == [
        (2, "from hydra._internal.utils import _locate"),
        (4, "import hydra_plugins.x._impl"),
        (6, "ray._raylet"),
        (7, "ray.init(_temp_dir=...)"),
        (8, "JobReturn(_return_value=...)"),
        (9, "ret._return_value"),
    ]

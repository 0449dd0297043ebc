"""The package's import rules, checked on the source of every module.

- ``rnnsweep/trial`` and ``rnnsweep/deploy`` hold the trial logic: torch only. They never
  import Ray, MLflow, Hydra's launcher machinery or the sweep side, anywhere in a module,
  so they can be tested and reused without any of them.
- Everything else is the driver side: it never imports torch at module level, because a
  driver that imports torch pays seconds of start-up for nothing (and a refused command
  should not pay them either).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rnnsweep"
TRIAL_SIDE = ("trial", "deploy")
EDGES = ("ray", "mlflow", "hydra.core", "hydra.plugins", "hydra._internal", "hydra.experimental",
         "hydra_plugins", "rnnsweep.sweep", "rnnsweep.report", "rnnsweep.tracking",
         "rnnsweep.cli", "rnnsweep.compare")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
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
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        found += imported(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            pending.extend(getattr(node, field, []))
    return found


def is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def side(path: Path) -> str:
    return "trial" if path.relative_to(PACKAGE).parts[0] in TRIAL_SIDE else "driver"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_rules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    if side(path) == "trial":
        every = [name for node in ast.walk(tree) for name in imported(node)]
        bad = sorted({n for n in every if any(is_under(n, e) for e in EDGES)})
        assert not bad, f"trial-side module imports an edge: {bad}"
    else:
        bad = sorted({n for n in module_level_imports(tree) if is_under(n, "torch")})
        assert not bad, f"driver-side module imports torch at module level: {bad}"


def test_the_checks_can_fail():
    """The checker itself sees the imports it is meant to catch."""
    driver = ast.parse("import os\ntry:\n    import torch\nexcept ImportError:\n    pass\n"
                       "def f():\n    import torch.nn\n")
    assert "torch" in module_level_imports(driver)
    assert "torch.nn" not in module_level_imports(driver)
    trial = ast.parse("def f():\n    from ray import remote\n")
    assert any(is_under(n, "ray") for node in ast.walk(trial) for n in imported(node))
    assert not is_under("rayleigh", "ray")

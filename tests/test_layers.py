"""Imports flow one way: from the trainers and CLIs down to erl.core (docs/architecture.md).

Every module's imports (function-level ones included) are read from the source, so a lazy
import cannot hide an upward dependency. A package may import only packages on lower floors;
two packages on the same floor may not import each other, so no cycle can form.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "erl"

FLOORS = {
    "erl.core": 0,                      # math, data model, the shared protocols
    "erl.fileio": 1, "erl.trainers.heap": 1,
    "erl.models": 2, "erl.memory": 2, "erl.tracking": 2, "erl.progress": 2,
    "erl.envs": 3, "erl.rollout": 3,
    "erl.workflow": 4,
    "erl.agents": 5, "erl.trainers.paths": 5,
    "erl.trainers": 6, "erl.trainers.local": 6, "erl.trainers.verl": 6, "erl.trainers.driver": 5,
    "erl.early": 7, "erl.report": 7,
    "erl.cli": 8,
}


def package_of(module: str) -> str:
    parts = module.split(".")
    name = ".".join(parts[:3] if len(parts) >= 3 and parts[1] == "trainers" else parts[:2])
    if name not in FLOORS and name != "erl":
        raise KeyError(f"{module}: package {name} has no floor in tests/test_layers.py FLOORS; give it one "
                       "(and a line in docs/architecture.md)")
    return name


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str, root: Path) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def erl_imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of an erl module in the file; `from erl.x import y`
    counts as erl.x.y when y is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "erl":
            mods = [f"{node.module}.{a.name}" if is_module(f"{node.module}.{a.name}", root) else node.module
                    for a in node.names]
            found += [(node.lineno, m) for m in mods]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "erl"]
    return found


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = package_of(module_name(path, root))
        for line, mod in erl_imports(path, root):
            dst = package_of(mod)
            if dst in (src, "erl"):
                continue
            if src == "erl" or FLOORS[dst] >= FLOORS[src]:
                bad.append(f"{path.relative_to(root.parent)}:{line}: {src} (floor {FLOORS.get(src)}) "
                           f"imports {mod} (floor {FLOORS[dst]})")
    return bad


def test_imports_flow_down_only():
    assert violations() == []


def test_the_check_sees_an_upward_and_a_lazy_import(tmp_path):
    # a copy of two packages where core imports the workflow inside a function: must be caught
    (tmp_path / "erl" / "core").mkdir(parents=True)
    (tmp_path / "erl" / "workflow").mkdir()
    (tmp_path / "erl" / "core" / "x.py").write_text("def f():\n    from erl.workflow.attempt import run\n")
    (tmp_path / "erl" / "workflow" / "y.py").write_text("from erl.core import types\nimport erl.envs.base\n")
    assert violations(tmp_path / "erl") == [
        "erl/core/x.py:2: erl.core (floor 0) imports erl.workflow.attempt (floor 4)"]


def test_every_package_has_a_floor():
    for path in ROOT.rglob("*.py"):
        package_of(module_name(path))  # raises for a package missing from FLOORS
    with pytest.raises(KeyError, match="no floor"):
        package_of("erl.newthing.mod")

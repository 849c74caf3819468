"""The layers of the code base (docs/ARCHITECTURE.md, "Code layout"): each package imports only
the packages below it. Read from the source with ``ast`` (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"schemas", "pricing", "billing", "operators", "sinks", "jobs", "cli"}
# package -> the project packages it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "pricing": set(),
    "billing": {"pricing", "schemas"},
    "operators": {"schemas"},
    "sinks": {"pricing", "schemas", "billing"},
    "jobs": {"schemas", "pricing", "billing", "operators", "sinks"},
    "cli": {"schemas", "pricing", "billing", "operators", "sinks", "jobs"},
}
NO_PRINTING = ("schemas", "pricing", "billing", "operators", "sinks", "jobs")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & PROJECT


def _files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) - ALLOWED[package] - {package})
           for f in _files(package)}
    assert {f: v for f, v in bad.items() if v} == {}


@pytest.mark.parametrize("package", NO_PRINTING)
def test_only_the_cli_prints_or_draws_progress_bars(package: str) -> None:
    offenders = []
    for f in _files(package):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} print()")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rich"):
                offenders.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {node.module}")
    # sinks/db.py bootstrap_main is scripts/stack.sh's entry point (a console script, not a service)
    assert [o for o in offenders if not o.startswith("sinks/db.py")] == []

"""The dependency direction, checked on the source: contracts below, domain packages in the middle,
orchestration on top. Nothing imports a layer above its own (read from the import statements, so a
lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT

CONTRACTS = {"pipeline"}
DOMAIN = {"ingestion", "features", "training", "serving", "monitoring"}
ORCHESTRATION = {"orchestration"}
OURS = CONTRACTS | DOMAIN | ORCHESTRATION
ALLOWED = {
    "pipeline": CONTRACTS,
    **dict.fromkeys(DOMAIN, CONTRACTS | DOMAIN),
    "orchestration": OURS,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_a_layer_above_it(package: str) -> None:
    offending = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_packages(path) - ALLOWED[package])
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    assert {k: v for k, v in offending.items() if v} == {}
